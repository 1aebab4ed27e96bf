"""The result display: a finished picture shown, scored and layered, whatever mode made it.

Generate, Upscale… and Open hand a :class:`Result` to :meth:`ResultView.present`; from there its
display pyramid is built on the job pool, the result is kept (History, the session's memory
budget), and — if it is still wanted when the pyramid arrives — shown on the canvas with its tile
plan; its seams are then scored on the job pool (and, for a seamless picture, how it repeats).
View → Shaded relief rebuilds a heightmap's layer the same way. Every job captures the session's
token, so work for a picture no longer shown lands on the picture (kept for later) but never on
the screen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QPointF, Signal

from ..engine.analysis.seams import Seam, analyse, heatmap, tiled_score
from .imaging import Layer, heat_rgba, pyramid, to_display
from .jobs import Jobs
from .session import Session
from .settings import AppSettings
from .widgets.canvas import CanvasWidget, SeamMark
from .widgets.inspector import HistoryPanel, Result, SeamPanel

OnError = Callable[[BaseException], None]


def _prepare_display(image: np.ndarray, relief: bool) -> tuple[list[np.ndarray], np.ndarray]:
    levels = pyramid(to_display(image, relief))
    return levels, levels[-1]


def _score(image: np.ndarray, tiles: list[tuple[int, int, int, int]]) -> tuple[Any, list[np.ndarray], np.ndarray]:
    report = analyse(image, tiles)
    heat = heatmap(image, tiles)
    return report, pyramid(heat_rgba(heat)), heat


class ResultView(QObject):
    """Shows results on the canvas, their seams in the inspector and keeps them in History."""

    kept = Signal(object)  # Result, now in History (its display layer built)
    scored = Signal(object)  # Result, once its seams are scored

    def __init__(self, jobs: Jobs, session: Session, prefs: AppSettings, canvas: CanvasWidget, seams: SeamPanel,
                 history: HistoryPanel, on_error: OnError, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.jobs = jobs
        self.session = session
        self.prefs = prefs
        self.canvas = canvas
        self.seams = seams
        self.history = history
        self.on_error = on_error
        self.relief = True  # heightmaps in shaded relief (the window restores the person's choice)

    def present(self, result: Result, wanted: Callable[[], bool], shown: Callable[[Result, bool], None]) -> None:
        """Build ``result``'s display on the job pool, keep it, then show it if ``wanted()`` still
        holds; ``shown(result, relief)`` follows, with the relief the layer was built in."""
        relief, image = self.relief, result.image
        self.jobs.submit(lambda: _prepare_display(image, relief),
                         lambda out: self._built(result, relief, wanted, shown, *out), self.on_error)

    def _built(self, result: Result, relief: bool, wanted: Callable[[], bool], shown: Callable[[Result, bool], None],
               levels: list[np.ndarray], thumb: np.ndarray) -> None:
        result.layer = Layer.from_levels(levels)
        self.keep(result, thumb)
        if not wanted():
            return  # the person moved on (another picture, a new run): it waits in History
        self.show(result)
        shown(result, relief)

    def keep(self, result: Result, thumb: np.ndarray) -> None:
        self.history.add(result, thumb)
        for dropped in self.session.add(result):
            self.history.refresh(dropped)
        self.kept.emit(result)

    def show(self, result: Result) -> None:
        """Make ``result`` the current picture: canvas, plan, seams (scored now if never before)."""
        token = self.session.set_current(result)
        self.canvas.set_image(result.layer)
        self.canvas.set_plan(result.tiles)
        if result.report is not None:
            self.seams.set_report(result.report, result.consensus)
            self.canvas.set_heatmap(result.heat)
            self._score_tiling(token, result)
        elif result.image is not None and result.tiles:
            self.seams.show_busy()
            image, tiles = result.image, result.tiles
            self.jobs.submit(lambda: _score(image, tiles), lambda out: self._scored(token, result, *out),
                             self.on_error)
        else:
            self.seams.clear("No tile plan for this picture.")

    def _scored(self, token: int, result: Result, report: Any, heat_levels: list[np.ndarray],
                heat: np.ndarray) -> None:
        # The scores are the picture's own whatever is on screen: kept on it, so viewing it
        # again is instant; shown only if it is still the picture the view is about.
        result.report = report
        result.heat = Layer.from_levels(heat_levels, alpha=True)
        result.heat_map = heat
        if self.session.is_current(token):
            self.seams.set_report(report, result.consensus)
            self.canvas.set_heatmap(result.heat)
            self._score_tiling(token, result)
        self.scored.emit(result)

    def _score_tiling(self, token: int, result: Result) -> None:
        """A seamless picture: how it repeats, scored on a worker (the picture laid 2×2)."""
        wrap = result.request.wrap if result.request is not None else "none"
        if wrap == "none":
            return
        if result.tiling is not None:
            self.seams.set_tiling(result.tiling, wrap)
        elif result.image is not None:
            image = result.image

            def scored(ratio: float) -> None:
                result.tiling = ratio
                if self.session.is_current(token):
                    self.seams.set_tiling(ratio, wrap)

            self.jobs.submit(lambda: tiled_score(image, wrap).seam_ratio, scored, self.on_error)

    def show_seam(self, seam: Seam) -> None:
        """Centre the worst point of ``seam`` at 100 %."""
        r = self.session.current
        w, h = self.canvas.image_w, self.canvas.image_h
        along = (h if seam.orientation == "vertical" else w) / 2
        heat = getattr(r, "heat_map", None) if r is not None else None
        if heat is not None:
            line = heat[:, min(seam.position, w - 1)] if seam.orientation == "vertical" else \
                heat[min(seam.position, h - 1), :]
            along = float(np.argmax(line))
        point = QPointF(seam.position, along) if seam.orientation == "vertical" else QPointF(along, seam.position)
        self.canvas.seam = SeamMark(seam.orientation, seam.position)
        self.canvas.zoom_to(point, 1.0)

    def set_relief(self, on: bool) -> None:
        """Heightmaps in shaded relief (``on``) or grey levels; remembered, the current one rebuilt."""
        self.relief = on
        self.prefs.set_flag("view/relief", on)
        r = self.session.current
        if r is not None and r.image is not None and r.image.ndim == 2:
            token, image = self.session.token, r.image
            self.jobs.submit(lambda: _prepare_display(image, on), lambda out: self._relayer(token, on, r, out[0]),
                             self.on_error)

    def set_tiled(self, on: bool) -> None:
        """View → Show 2×2 (remembered)."""
        self.canvas.set_tiled(on)
        self.prefs.set_flag("view/tiled", on)

    def follow_relief(self, built_in: bool) -> None:
        """A layer built in ``built_in`` relief is shown: rebuild it if relief was toggled meanwhile."""
        if built_in != self.relief:
            self.set_relief(self.relief)

    def _relayer(self, token: int, on: bool, result: Result, levels: list[np.ndarray]) -> None:
        if not self.session.is_current(token) or on != self.relief:
            return  # another picture is shown, or relief was toggled again: a newer job follows
        result.layer = Layer.from_levels(levels)
        self.canvas.set_image(result.layer)
        self.canvas.set_plan(result.tiles)
        self.canvas.set_heatmap(result.heat)


__all__ = ["ResultView"]
