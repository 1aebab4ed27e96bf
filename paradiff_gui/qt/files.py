"""File actions: open an image or a request, save a request, export, drag and drop.

Dialog filters come from ``engine.io.export.FORMATS`` (the one list of formats), pixels are
read and written on the job pool, and an opened picture keeps the tile plan of its own recipe
(``engine.api.inspect``), which is also the plan its export records.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFileDialog, QWidget

from ..engine.core import request as rq
from ..engine.core.plan import TilePlan
from ..engine.io.export import FORMATS
from .dialogs import message_for
from .jobs import Jobs
from .widgets.inspector import Result

IMAGE_EXTENSIONS = tuple(e for f in FORMATS.values() for e in f.extensions)
IMAGE_FILTER = "Images (" + " ".join(f"*{e}" for e in IMAGE_EXTENSIONS) + ")"
EXPORT_FILTERS = tuple(f.file_filter for f in FORMATS.values())
REQUEST_FILTER = "Requests and Paradiff images (*.json " + " ".join(f"*{e}" for e in IMAGE_EXTENSIONS) + ")"
DROPPABLE = (".json", *IMAGE_EXTENSIONS)

PlanFallback = Callable[[int, int], TilePlan | None]  # (width, height) → the tile editor's plan


def read_request(path: str) -> rq.GenerationRequest:
    """The request of a .json file or a Paradiff image, its model options (the regions' too)
    checked against the model: one out of range is refused by name, never shown clamped."""
    from ..engine.api.requests import check_options
    from ..engine.io.metadata import load_request
    from ..engine.models.info import describe_model

    request = load_request(path)
    info = describe_model(request.model)
    return check_options(request, info)  # the regions' options too


class FileActions(QObject):
    """The File menu's work. ``opened`` carries a loaded picture (not yet displayed); the other
    signals report outcomes for the status bar and dialogs."""

    opened = Signal(object, str)  # Result (no layer yet), where its plan came from
    request_loaded = Signal(object)  # GenerationRequest
    exported = Signal(object, str)  # Result, path
    export_failed = Signal(str)  # message
    export_progress = Signal(int)  # bytes written
    status = Signal(str)
    error = Signal(str, str)  # title, message
    note = Signal(str)  # a passing remark (status bar, 10 s)

    def __init__(self, jobs: Jobs, parent_widget: QWidget, fallback_plan: PlanFallback) -> None:
        super().__init__(parent_widget)
        self.jobs = jobs
        self.parent_widget = parent_widget
        self.fallback_plan = fallback_plan

    # -- opening ---------------------------------------------------------------------------------

    def open_image_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.parent_widget, "Open an image", "", IMAGE_FILTER)
        if path:
            self.open_image(path)

    def open_image(self, path: str, autosave: str | None = None) -> None:
        """Load ``path`` off the GUI thread (plan from its recipe, or from the tile editor when
        it has none)."""
        from ..engine.api.inspect import open_picture

        self.status.emit(f"Opening {Path(path).name}…")

        def loaded(picture: Any) -> None:
            plan, source = picture.plan, "its Paradiff metadata"
            if plan is None:
                plan = self.fallback_plan(*picture.size)
                source = "the tile editor (the image has no Paradiff metadata)"
            tiles = [plan.image_rect(t) for t in plan.tiles] if plan is not None else []
            result = Result(picture.image, picture.request, tiles, Path(path).name, info=dict(picture.info),
                            plan=plan if picture.request is not None else None, path=path, autosave=autosave)
            self.opened.emit(result, source)

        self.jobs.submit(lambda: open_picture(path), loaded,
                         lambda exc: self.error.emit("Cannot open the image", message_for(exc)))

    def open_request_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.parent_widget, "Open a request", "", REQUEST_FILTER)
        if path:
            self.load_request(path)

    def load_request(self, path: str) -> bool:
        try:
            request = read_request(path)
        except rq.RequestError as exc:
            self.error.emit("Cannot load the request", str(exc))
            return False
        self.request_loaded.emit(request)
        self.status.emit(f"Settings loaded from {Path(path).name}")
        return True

    def save_request_dialog(self, request_of: Callable[[], rq.GenerationRequest]) -> None:
        path, _ = QFileDialog.getSaveFileName(self.parent_widget, "Save the request", "paradiff-request.json",
                                              "Request (*.json)")
        if path:
            self.save_request(path, request_of)

    def save_request(self, path: str, request_of: Callable[[], rq.GenerationRequest]) -> bool:
        from ..engine.io.metadata import save_request

        try:
            save_request(path, request_of())
        except rq.RequestError as exc:
            self.error.emit("This request cannot be saved", str(exc))
            return False
        except OSError as exc:
            self.error.emit("Cannot save the request", f"{path}: {exc.strerror or exc}")
            return False
        self.status.emit(f"Request saved to {path}")
        return True

    # -- export ----------------------------------------------------------------------------------

    def export_dialog(self, result: Result | None) -> None:
        if result is None or result.image is None:
            return
        stem = f"paradiff-{result.request.seed}" if result.request is not None else Path(result.title).stem
        path, _ = QFileDialog.getSaveFileName(self.parent_widget, "Export", f"{stem}.png", ";;".join(EXPORT_FILTERS))
        if path:
            self.export(result, path)

    def export(self, result: Result | None, path: str, quality: int = 95) -> bool:
        """Write ``result`` to ``path`` (format from the extension) off the GUI thread; False if
        it cannot even start."""
        from ..engine.io.export import format_for, save_image, save_plain

        if result is None or result.image is None:
            self.error.emit("Nothing to export", "generate or open a picture first")
            return False
        try:
            fmt = format_for(path)
        except rq.RequestError as exc:
            self.error.emit("Cannot export", str(exc))
            return False
        if result.image.ndim == 2 and result.image.dtype == np.uint16 and not FORMATS[fmt].deep:
            self.note.emit(f"{fmt.upper()} holds 8 bits: the heightmap is stretched to 256 levels. "
                           "Use PNG or TIFF to keep 16 bits.")
        image, request, plan, info = result.image, result.request, result.plan, result.info
        self.status.emit(f"Exporting {Path(path).name}…")
        report = self.export_progress.emit  # a queued signal: safe from the writing thread

        def write() -> str:
            if request is None:
                return str(save_plain(path, image, fmt=fmt, quality=quality, on_progress=report))
            p = plan
            if p is None:  # a recipe without its tiles (older files): the model's plan, built here
                from ..engine.models.info import describe_model

                p = describe_model(request.model).plan(request)
            return str(save_image(path, image, request, p, info, fmt=fmt, quality=quality, on_progress=report))

        def done(written: str) -> None:
            result.path = written
            self.status.emit(f"Exported {written}")
            self.exported.emit(result, written)

        def failed(exc: BaseException) -> None:
            self.status.emit("Export failed; the picture is still here")
            self.error.emit("Export failed", message_for(exc) + "\nThe picture is kept: export it elsewhere.")
            self.export_failed.emit(message_for(exc))

        self.jobs.submit(write, done, failed)
        return True

    # -- drag and drop ---------------------------------------------------------------------------

    @staticmethod
    def droppable(path: str) -> bool:
        return Path(path).suffix.lower() in DROPPABLE

    def drop_file(self, path: str) -> None:
        """A dropped request or Paradiff image restores its settings; an image is also opened."""
        try:
            request = read_request(path)
        except rq.RequestError as exc:
            request = None
            if Path(path).suffix.lower() == ".json":
                self.error.emit("Cannot load the request", str(exc))
                return
        if request is not None:
            self.request_loaded.emit(request)
        if Path(path).suffix.lower() != ".json":
            self.open_image(path)
