"""Refine selection…: re-draw a selected part of the current picture through the app's run path.

:class:`RefineMode` is the refine's half of the window: the selection (``widgets/selection.py``:
Rectangle, Brush, Mask from file…, Clear), its actions and toolbar, the dialog, and the run:

1. prepare (job pool): the picture's file (an unsaved picture is written first, as Upscale…
   does), a painted mask written at image size beside the output (the recipe names it, so a
   replay has it), ``engine.api.refine.refine_request`` — which names a bad field — and a
   backdrop of the picture for the live previews;
2. run: the sub-canvas request on the worker thread with its ``known`` picture (the engine keeps
   the part outside the selection at every step); its previews and tiles land at the sub-canvas's
   place on the whole picture (``RunController.start(place=…)``);
3. finished: composite and write (``write_refinement``, job pool), then the whole picture is
   shown and kept in History with its recipe (``info["refine"]``).

Cancel, a failure or a refused input write nothing: what step 1 wrote is removed.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QStandardPaths, Qt, Signal
from PySide6.QtGui import QActionGroup, QImage
from PySide6.QtWidgets import QFileDialog, QLabel, QSpinBox, QToolBar

from ..engine.core import events as ev
from ..engine.core import request as rq
from ..engine.core.regions import MAX_FEATHER
from .dialogs import message_for
from .menus import add_action
from .widgets.inspector import Result
from .widgets.refine import RefineDialog
from .widgets.selection import EMPTY, Selection, SelectionTool, tint_of, write_mask

log = logging.getLogger(__name__)

BACKDROP_MAX_SIDE = 2048  # px: as the canvas's preview buffer (widgets/canvas.py PREVIEW_MAX_SIDE)


def default_output(result: Result) -> Path:
    """``NAME-refined.png`` beside the picture's file, or in the Pictures folder for one never written."""
    if result.path:
        p = Path(result.path)
        return p.with_name(f"{p.stem}-refined.png")
    folder = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation) or str(Path.home())
    stem = f"paradiff-{result.request.seed}" if result.request is not None else Path(result.title).stem
    return Path(folder) / f"{stem}-refined.png"


def _backdrop(source: np.ndarray, relief: bool) -> np.ndarray:
    """The picture at most BACKDROP_MAX_SIDE px a side as uint8 RGB: what the previews are drawn on."""
    from PIL import Image

    from .imaging import to_display

    h, w = source.shape[:2]
    step = max(1, -(-max(w, h) // BACKDROP_MAX_SIDE))
    small = np.ascontiguousarray(source[::step, ::step])  # a stride is enough under moving previews
    rgb = to_display(small, relief)[..., 2::-1]  # (QImage's RGB32 is B, G, R, 255 in memory)
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).convert("RGB"))


def _prepare(result: Result, selection: dict[str, Any], fields: dict[str, Any], output: Path,
             base: rq.GenerationRequest | None, relief: bool) -> tuple[Any, Any, np.ndarray, list[Path]]:
    """The refine job, its model's info, the backdrop and the files it wrote (a worker: reads and
    writes files). What it wrote is removed when it fails."""
    from ..engine.api.refine import refine_request
    from ..engine.io.export import save_image
    from ..engine.models.info import describe_model

    written: list[Path] = []
    try:
        source = Path(result.path) if result.path and Path(result.path).is_file() else None
        if source is None:
            if result.image is None or result.request is None:
                raise rq.RequestError("image", "the picture is no longer in memory and was never written: open "
                                               "it from its file to refine it")
            plan = result.plan if result.plan is not None else describe_model(result.request.model).plan(
                result.request)
            source = output.with_name(f"{output.stem.removesuffix('-refined')}.png")
            if source.resolve() == output.resolve():
                raise rq.RequestError("output", f"{output} would be the unsaved picture's own file")
            written.append(save_image(source, result.image, result.request, plan, result.info))
        sel = dict(selection)
        if sel.pop("kind") == "brush":
            mask = sel.pop("image")
            path = output.with_name(f"{output.stem}-mask.png")
            if path.resolve() == source.resolve():
                raise rq.RequestError("output", f"{output}'s mask file would be the source")
            written.append(write_mask(mask, sel.pop("width"), sel.pop("height"), path))
            sel = {"mask": str(path)}
        job = refine_request(source, **sel, output=output, base=base, **fields)
        info = describe_model(job.request.model)
        return job, info, _backdrop(job.source, relief and info.output == "height"), written
    except BaseException:
        for p in written:
            with contextlib.suppress(OSError):
                p.unlink()
        raise


def _mask_preview(path: str, width: int, height: int, size: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """A mask file read as the engine reads it (its messages), at the painted mask's size."""
    from PIL import Image

    from ..engine.api.refine import read_mask

    notes: list[str] = []
    full = read_mask(path, width, height, notes)
    small = Image.fromarray(np.rint(full * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    return np.asarray(small), notes


class RefineMode(QObject):
    """Refine's half of the window (``w``: the MainWindow: its current picture, run path, status)."""

    ended = Signal(str, str)  # "finished" | "cancelled" | "failed", the output or what went wrong

    def __init__(self, w: Any) -> None:
        super().__init__(w)
        self.w = w
        self.selection = Selection(parent=self)
        self.tool = SelectionTool(w.canvas, self.selection)
        self.tool.tool = ""  # no tool: the mouse pans; Escape still clears the selection
        w.canvas.tool = self.tool
        self.active = False  # from refine() until its picture is written or it stops
        self.running = False  # its run is on the worker thread
        self.job: Any = None
        self.source: Result | None = None  # the picture refined: shown again when its refine stops
        self._written: list[Path] = []  # what a cancel or failure removes
        self.box: RefineDialog | None = None
        self._token = 0  # a refine's late callbacks do not reach the next one
        self._build_actions()
        w.session.current_changed.connect(self._current_changed)
        w.runner.state_changed.connect(lambda _s: self.update_action())
        w.runner.cancelled.connect(lambda e: self._stopped("cancelled", f"Refine cancelled at step {e.step + 1}; "
                                                                       "nothing was written"))
        w.runner.failed.connect(lambda e: self._stopped("failed", ""))  # the window says why

    # -- actions --------------------------------------------------------------------------------

    def _build_actions(self) -> None:
        w = self.w
        w.act_refine = add_action(w, "&Refine selection…", self.dialog, "Ctrl+Shift+F",
                                  tip="Re-draw the selected part of the picture; the rest stays bit for bit "
                                      "(Ctrl+Shift+F)")
        self.act_rect = add_action(w, "&Rectangle", lambda on: self.set_tool("rect" if on else ""), checkable=True,
                                   tip="Select a rectangle to refine: drag on the picture")
        self.act_brush = add_action(w, "&Brush", lambda on: self.set_tool("brush" if on else ""), checkable=True,
                                    tip="Paint the part to refine; Shift or the right button erases")
        group = QActionGroup(self)
        group.setExclusionPolicy(QActionGroup.ExclusionPolicy.ExclusiveOptional)
        for a in (self.act_rect, self.act_brush):
            group.addAction(a)
        self.act_erase = add_action(w, "&Erase", lambda on: setattr(self.tool, "erase", on), checkable=True,
                                    tip="The brush erases (also: Shift or the right button)")
        self.act_mask = add_action(w, "&Mask from file…", self.mask_dialog,
                                   tip="Select with a grayscale PNG of the picture's size (white = refine)")
        self.act_clear = add_action(w, "&Clear selection", self.selection.clear, "Ctrl+Shift+A",
                                    tip="Select nothing (Esc on the canvas)")
        self.actions = (self.act_rect, self.act_brush, self.act_erase, self.act_mask, self.act_clear, None,
                        w.act_refine)
        self.brush_size = QSpinBox()
        self.brush_size.setObjectName("brush_size")
        self.brush_size.setRange(1, 4096)
        self.brush_size.setSuffix(" px")
        self.brush_size.setValue(self.tool.brush)
        self.brush_size.setToolTip("The brush's width in image px")
        self.brush_size.valueChanged.connect(lambda v: setattr(self.tool, "brush", v))
        tb = self.toolbar = QToolBar("Selection")
        tb.setObjectName("selection_toolbar")
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        for a in (self.act_rect, self.act_brush, self.act_erase):
            tb.addAction(a)
        tb.addWidget(QLabel(" Size "))
        tb.addWidget(self.brush_size)
        for a in (self.act_mask, self.act_clear, None, w.act_refine):
            tb.addSeparator() if a is None else tb.addAction(a)
        self.update_action()

    def set_tool(self, tool: str) -> None:
        """"rect", "brush" or "" (none: the mouse pans the view)."""
        self.tool.tool = tool
        if not tool:
            self.w.canvas.unsetCursor()
        else:
            self.w.canvas.setCursor(Qt.CursorShape.CrossCursor)
        self.w.canvas.update()

    def update_action(self) -> None:
        w, r = self.w, self.w.current
        picture = r is not None and (r.image is not None or bool(r.path))
        idle = not w.busy and not self.active
        w.act_refine.setEnabled(idle and picture)
        for a in (self.act_rect, self.act_brush, self.act_erase, self.act_mask, self.act_clear):
            a.setEnabled(picture and not self.running)
        self.tool.editable = not self.running

    def _current_changed(self, result: Result | None) -> None:
        if result is not None:
            size = (result.layer.width, result.layer.height) if result.layer is not None else \
                (result.image.shape[1], result.image.shape[0]) if result.image is not None else (0, 0)
            if size != (self.selection.width, self.selection.height):
                self.selection.reset(*size)  # a selection belongs to a picture of its size
        self.update_action()

    # -- the selection --------------------------------------------------------------------------

    def mask_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.w, "Mask (grayscale, white = refine)", "",
                                              "Images (*.png *.tif *.tiff *.webp)")
        if path:
            self.load_mask(path)

    def load_mask(self, path: str) -> None:
        """Select with the mask image ``path``: read on the job pool as the engine reads it (a
        mode it cannot use is refused by name, another size is resized with a note)."""
        sel = self.selection
        w, h, size = sel.width, sel.height, sel.mask_size()

        def loaded(out: tuple[np.ndarray, list[str]]) -> None:
            values, notes = out
            if (sel.width, sel.height) == (w, h):
                sel.set_file(path, tint_of(values))
                for n in notes:
                    self.w.statusBar().showMessage(n, 15000)

        self.w.jobs.submit(lambda: _mask_preview(path, w, h, size), loaded,
                           lambda exc: self.w.show_error("Cannot use this mask", message_for(exc)))

    def _snapshot(self) -> dict[str, Any]:
        sel = self.selection
        if sel.kind == "rect":
            return {"kind": "rect", "rect": sel.rect}
        if sel.kind == "file":
            return {"kind": "file", "mask": sel.path}
        # A shallow copy: Qt's implicit sharing copies the pixels only if the brush paints on
        # while the worker reads them (a 4096² copy here is 50 ms on the GUI thread).
        return {"kind": "brush", "image": QImage(sel.mask), "width": sel.width, "height": sel.height}

    # -- the refine -----------------------------------------------------------------------------

    def dialog(self) -> RefineDialog | None:
        """Ask for the prompt, strength, feather and output of the refine (not blocking)."""
        r = self.w.current
        if r is None:
            return None
        sel = self.selection
        what = {"rect": lambda: "Selection: rectangle {},{} – {},{}".format(*sel.rect) if sel.rect else "",
                "brush": lambda: "Selection: painted with the brush", "file": lambda: f"Selection: mask {sel.path}"
                }.get(sel.kind, lambda: "")() or "Nothing selected yet: drag a rectangle or paint with the brush"
        base, whose = self._base()
        if base is not None:
            what += f"<br>Settings: {whose} ({base.model}, {base.steps} steps, seed {base.seed})"
        takes_prompt = self.w.panel.info.text if whose == "the panel's" else bool(base and base.prompt)
        box = RefineDialog(self.w, r.title, what, base.prompt if base is not None and takes_prompt else None,
                           default_output(r))
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.chosen.connect(lambda prompt, strength, feather, output: self.refine(prompt, strength, feather, output))
        box.open()
        self.box = box
        return box

    def _base(self) -> tuple[rq.GenerationRequest | None, str]:
        """The settings a refine runs with: the panel's — what the person sees and edits (model, its
        options, steps, seed) —, or the picture's own recipe while the panel's cannot be built."""
        try:
            return self.w.panel.request(), "the panel's"
        except rq.RequestError:
            r = self.w.current
            return (r.request, "the picture's recipe") if r is not None and r.request is not None else (None, "")

    def refine(self, prompt: str | None = None, strength: float | None = None, feather: int | None = None,
               output: str | None = None) -> bool:
        """Refine the selection of the current picture into ``output`` (default NAME-refined.png);
        False, with the field named, if it cannot start. ``ended`` says how it ended."""
        w, r = self.w, self.w.current
        if w.busy or self.active:
            return False
        if r is None or (r.image is None and not r.path):
            w.show_error("Nothing to refine", "generate or open a picture first")
            return False
        problem = self._problem(strength, feather)
        if problem is not None:
            w.show_error("Cannot refine", problem)
            return False
        base, _ = self._base()
        fields: dict[str, Any] = {"strength": strength, "feather": feather}
        if prompt is not None:
            fields["prompt"] = prompt
        self._token += 1
        token, relief = self._token, w.relief
        selection, out = self._snapshot(), Path(output) if output else default_output(r)
        self.active, self.source = True, r
        self.update_action()
        w.jobs.submit(lambda: _prepare(r, selection, fields, out, base, relief),
                      lambda got: token == self._token and self._prepared(*got),
                      lambda exc: token == self._token and self._end("failed", message_for(exc), "Cannot refine"))
        w.last_error = None
        w.status_text.setText("Preparing the refine…")
        return True

    def _problem(self, strength: Any, feather: Any) -> str | None:
        """A bad value, named with what is allowed (as the engine says it); None if all are good."""
        sel = self.selection
        if not sel.kind or sel.empty:
            return f"selection: {EMPTY}"
        if strength is not None and (isinstance(strength, bool) or not isinstance(strength, numbers.Real)
                                     or not 0.0 < float(strength) <= 1.0):
            return f"strength: must be a number above 0 and at most 1; got {strength!r}"
        if feather is not None and (isinstance(feather, bool) or not isinstance(feather, int)
                                    or not 0 <= feather <= MAX_FEATHER):
            return f"feather: must be a whole number from 0 to {MAX_FEATHER}; got {feather!r}"
        return None

    def _prepared(self, job: Any, info: Any, backdrop: np.ndarray, written: list[Path]) -> None:
        w = self.w
        self.job, self._written = job, written  # (a painted mask; an unsaved picture's file)
        if w.runner.active:
            self._end("failed", "a generation started meanwhile: refine again once it has ended", "Cannot refine")
            return
        (x0, y0, x1, y1), (pw, ph) = job.box, job.record["source_size"]
        self.running = True
        w.start_run(job.request, info, job.request.device.split(":")[0].replace("auto", "cpu"), True,
                    place=(x0, y0, pw, ph), known=job.known())
        w.canvas.add_previews([ev.TilePreview(0, -1, backdrop, (0, 0, pw, ph))])  # the picture under the previews
        for note in job.notes:
            w.runner.notice.emit(note)
        w.progress.setFormat(f"refine {x1 - x0}×{y1 - y0} · %p%")

    def finished(self, e: ev.Finished) -> bool:
        """The window's run finished: True when it was the refine's (then composited and written
        here, on the job pool, and shown once written)."""
        if not self.running:
            return False
        self.running = False
        w, job, token = self.w, self.job, self._token
        shown_token = w.session.token

        def write() -> tuple[np.ndarray, dict[str, Any]]:
            from ..engine.api.refine import write_refinement

            return write_refinement(job, e.image, e.request, e.plan, e.info)

        w.jobs.submit(write, lambda out: token == self._token and self._wrote(e, shown_token, *out),
                      lambda exc: token == self._token and self._end(
                          "failed", message_for(exc), "Could not write the refined picture"))
        w.status_text.setText(f"Done in {e.seconds:.1f} s, writing {job.output.name}…")
        w.progress.setFormat("%p%")
        w.run_ended.emit("finished")
        w._close_if_waiting()
        return True

    def _wrote(self, e: ev.Finished, shown_token: int, picture: np.ndarray, info: dict[str, Any]) -> None:
        w, job = self.w, self.job
        x0, y0, x1, y1 = job.box
        tiles = [(a + x0, b + y0, c + x0, d + y0) for a, b, c, d in map(e.plan.image_rect, e.plan.tiles)]
        title = f"refine {x1 - x0}×{y1 - y0} at {x0},{y0} · {picture.shape[1]}×{picture.shape[0]}"
        result = Result(picture, e.request, tiles, title, e.seconds, info, e.plan, consensus=w.runner.consensus)
        result.path = str(job.output)  # a further refine or upscale starts from this file
        self._written = []
        self.active = False
        self.update_action()

        def shown(res: Result, relief: bool) -> None:
            w._displayed(res, relief)
            w.statusBar().showMessage(f"Refined: {job.output}", 15000)

        def kept(res: Result) -> None:  # in History: the refine has ended (shown next, if still wanted)
            if res is result:
                w.results.kept.disconnect(kept)
                self.ended.emit("finished", str(job.output))

        w.results.kept.connect(kept)
        w.results.present(result, lambda: w.session.is_current(shown_token), shown)
        log.info("refine written to %s", job.output)

    def _stopped(self, outcome: str, message: str) -> None:
        if self.running:
            self.running = False
            self.w.progress.setFormat("%p%")
            r = self.source
            if r is not None and r.layer is not None and self.w.current is None:
                self.w.show_result(r)  # back to the picture (and its selection), not the partial previews
            self._end(outcome, message)

    def _end(self, outcome: str, message: str, title: str = "") -> None:
        w = self.w
        self._token += 1
        self.active = self.running = False
        written, self._written = self._written, []
        if written:  # the painted mask written for this refine: nothing stays of it
            w.jobs.submit(lambda: [p.unlink(missing_ok=True) for p in written], lambda _out: None)
        if title:
            w.show_error(title, message)
        elif message:
            w.status_text.setText(message)
        self.update_action()
        log.info("refine %s: %s", outcome, message)
        self.ended.emit(outcome, message)


__all__ = ["RefineMode", "default_output"]
