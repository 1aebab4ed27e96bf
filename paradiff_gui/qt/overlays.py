"""Pictures drawn with the canvas that are not results: View → Control image, the first
ControlNet's image half-transparent over the plan, where each tile will take its crop.

The file is read and shrunk on the job pool, and again only when its path changes (the panel
changes on every keystroke); a read overtaken by another path is dropped.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject

from .imaging import qimage
from .jobs import Jobs
from .widgets.canvas import CanvasWidget
from .widgets.panel import GenerationPanel

CONTROL_VIEW_PX = 2048  # the control image is shown at most this long a side (it only guides the eye)


def _read_control(path: str) -> np.ndarray:
    """A control image as RGB bytes for the canvas, shrunk to CONTROL_VIEW_PX (on a worker)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((CONTROL_VIEW_PX, CONTROL_VIEW_PX))
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


class ControlOverlay(QObject):
    """Keeps the canvas's control image in step with the panel's first ControlNet while shown."""

    def __init__(self, jobs: Jobs, canvas: CanvasWidget, panel: GenerationPanel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.jobs = jobs
        self.canvas = canvas
        self.panel = panel
        self.shown = False
        self.path: str | None = None  # the control image the canvas has

    def set_shown(self, on: bool) -> None:
        self.shown = on
        self.canvas.set_show_control(on)
        self.follow()

    def follow(self) -> None:
        """The panel changed: read the first ControlNet's image if its path did."""
        if not self.shown:
            return
        path = next((c.image for c in self.panel.values().controlnets if c.image), None)
        if path == self.path:
            return
        self.path = path
        if path is None:
            self.canvas.set_control(None)
            return

        def shown(rgb: np.ndarray | None) -> None:
            if path == self.path:  # not overtaken by another path meanwhile
                self.canvas.set_control(None if rgb is None else qimage(rgb).copy())

        self.jobs.submit(lambda: _read_control(path), shown, lambda _exc: shown(None))


__all__ = ["ControlOverlay"]
