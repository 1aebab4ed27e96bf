"""File → Restyle…: an opened picture as the starting canvas of an image-to-image run, and
View → Compare with source.

:class:`RestyleMode` is Restyle…'s half of the window (as ``upscale.UpscaleMode`` is Upscale…'s): its
actions, the dialog, the checks before a run and the file written after it. The picture is read and
checked on the job pool by the engine's own rules (``open_image``'s limits, a colour picture refused
by a heightmap model, the request's strength and anchor, the plan, the host's memory), so a picture
the engine would refuse is refused before any model loads, with the engine's message. The run
itself is the panel's request with ``init_image`` set, started on the window's run path, so Generate
re-runs it and the panel's "Starting picture" row (``forms/start.py``) remembers it.

The starting picture is drawn under the tile plan (``widgets/underlay.py``): read and shrunk for the
screen on the job pool whenever the panel's starting picture changes, which also finds out whether
the file is still there. The A/B view reads the current result's ``init_image`` the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Qt, Signal

from ..engine.core import events as ev
from ..engine.core import request as rq
from ..engine.core.modelinfo import ModelInfo
from ..engine.io.export import open_image
from .dialogs import message_for
from .forms.mapping import to_request
from .imaging import qimage, to_display
from .menus import add_action
from .widgets.restyle import DEFAULT_ANCHORS, SIZES, RestyleChoice, RestyleDialog, restyle_size
from .widgets.underlay import set_underlay

log = logging.getLogger(__name__)

DISPLAY_PX = 4096  # the starting picture is shown at most this long a side (a 16K source: a quarter)


def default_output(source: str, scale: int) -> Path:
    """Where a restyle of ``source`` goes unless the person says otherwise: beside it, never over it."""
    p = Path(source).expanduser()
    return p.with_name(f"{p.stem}-restyled{'' if scale == 1 else f'-x{scale}'}.png")


def _half(a: np.ndarray) -> np.ndarray:
    """Half size by 2×2 box averaging, in the picture's own depth (16-bit heightmaps stay 16-bit)."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return np.rint(a[:h, :w].reshape(h // 2, 2, w // 2, 2, *a.shape[2:]).mean(axis=(1, 3))).astype(a.dtype)


def display_pixels(pixels: np.ndarray, relief: bool) -> np.ndarray:
    """``open_image``'s pixels for the screen (RGB32 bytes), at most DISPLAY_PX a side (a worker)."""
    while max(pixels.shape[:2]) > DISPLAY_PX:
        pixels = _half(pixels)
    return np.ascontiguousarray(to_display(pixels, relief))


def look(path: str, relief: bool) -> tuple[bool, np.ndarray | None]:
    """Whether ``path`` is there, and its pixels for the screen (None: not there or unreadable)."""
    if not Path(path).is_file():
        return False, None
    try:
        return True, display_pixels(open_image(path), relief)
    except rq.RequestError:
        return True, None  # the run's own read says why


@dataclass(frozen=True)
class Prepared:
    request: rq.GenerationRequest
    info: ModelInfo
    display: np.ndarray  # the source for the screen (display_pixels)
    output: Path


def _check_host(request: rq.GenerationRequest, info: ModelInfo) -> None:
    """The engine's own memory check (sampling/sampler.py ``_check_host``): a canvas the host
    cannot hold, or over the person's budget, is refused with the engine's message."""
    from ..engine.runtime import memory
    from ..engine.runtime.devices import dtype_name, resolve_device, resolve_dtype

    device = resolve_device(request.device)
    limit = memory.host_limit(request)
    hf, smallest, _ = memory.host_plan(request, info, device.type, dtype_name(resolve_dtype(request.dtype, device)),
                                       limit)
    memory.check_host_fits(hf, memory.host_available(), limit, smallest)


def prepare(choice: RestyleChoice, base: rq.GenerationRequest, relief: bool) -> Prepared:
    """The restyle's request, checked as the engine will check it, and the source for the screen
    (a worker thread: reads the picture). Raises RequestError naming the field."""
    from ..engine.io.export import format_for
    from ..engine.io.init_image import check_init_pixels
    from ..engine.models.info import describe_model

    if isinstance(choice.scale, bool) or choice.scale not in SIZES:
        raise rq.RequestError("scale", f"must be 1 (keep the size), 2 or 4; got {choice.scale!r}")
    src = Path(choice.source).expanduser()
    try:
        pixels = open_image(src)  # refuses a missing, unreadable or oversized file from its header
    except rq.RequestError as exc:
        raise rq.RequestError("init_image", exc.message) from None
    info = describe_model(base.model)
    check_init_pixels(pixels, src.name, info.output)  # a colour picture on a heightmap model
    width, height = restyle_size(pixels.shape[1], pixels.shape[0], choice.scale)
    fields: dict[str, Any] = dict(width=width, height=height, init_image=str(src), strength=choice.strength,
                                  anchor=choice.anchor, global_context=0.0, regions=(), grid=None,
                                  tile=base.tile if base.grid is None else None)
    if choice.prompt is not None:
        fields["prompt"] = choice.prompt
    request = base.replace(**fields)  # the request's own checks: strength, anchor, size
    info.plan(request)  # the plan's: tile, overlap
    _check_host(request, info)
    out = Path(choice.output).expanduser()
    format_for(out)
    if not out.parent.is_dir():
        raise rq.RequestError("output", f"the folder {out.parent} does not exist")
    if out.exists() and out.resolve() == src.resolve():
        raise rq.RequestError("output", f"{out} is the picture being restyled, which is never written over: "
                                        "choose another file")
    return Prepared(request, info, display_pixels(pixels, relief), out)


class RestyleMode(QObject):
    """Restyle…'s half of the window: ``w`` is the MainWindow (panel, canvas, run path, errors)."""

    restyled = Signal(str, str)  # "finished" (the written path) | "refused" | "failed" (the message)
    compare_shown = Signal(bool)  # the A/B view now shows the source (True) or the picture (False)

    def __init__(self, w: Any) -> None:
        super().__init__(w)
        self.w = w
        self.box: RestyleDialog | None = None
        self.preparing = False
        self.comparing = False
        self._pending: tuple[rq.GenerationRequest, Path] | None = None  # the run under way and its file
        self._written: tuple[rq.GenerationRequest, str] | None = None
        self._kept: Any = None  # the restyle's Result in History, until its file is written
        self._claim: rq.GenerationRequest | None = None  # the finished restyle whose Result is not kept yet
        self._panel: tuple[str | None, np.ndarray | None] = (None, None)  # the panel's starting picture
        self._source: np.ndarray | None = None  # the A/B view's source pixels
        w.act_restyle = add_action(w, "&Restyle…", self.dialog, "Ctrl+Shift+R",
                                   tip="Start from a picture: re-draw it to a prompt at a strength, keep its size or "
                                       "make it ×2 or ×4 (Ctrl+Shift+R)")
        w.menus["File"].insertAction(w.act_export, w.act_restyle)
        w.act_compare = add_action(w, "Compare with &source", self.set_compare, "Ctrl+B", checkable=True,
                                   tip="Flip between a restyled picture and the picture it started from (Ctrl+B)")
        w.act_compare.setEnabled(False)
        w.menus["View"].addAction(w.act_compare)
        w.panel.changed.connect(self.follow)
        w.session.current_changed.connect(self._current_changed)
        w.runner.state_changed.connect(self._state_changed)
        w.runner.finished.connect(self._finished)
        w.runner.failed.connect(lambda e: self._stopped("failed", e.message))
        w.runner.cancelled.connect(lambda _e: self._stopped("cancelled", "the restyle was cancelled"))
        w.results.kept.connect(self._result_kept)
        w.act_relief.toggled.connect(self._relief_changed)
        self.follow()

    # -- the dialog and the start --------------------------------------------------------------

    def dialog(self) -> RestyleDialog | None:
        """Ask for the picture, prompt, strength, size, anchor and output (not blocking)."""
        w = self.w
        if w.busy or self.preparing:
            return None
        r = w.current
        current = r.path if r is not None and r.path else None
        prompt = w.panel.prompt_form.prompt.toPlainText() if w.panel.info.text else None
        box = RestyleDialog(w, current, prompt, default_output)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.source_changed.connect(lambda path: self._read_size(box, path))
        box.chosen.connect(lambda c: self.restyle(c.source, c.prompt, c.strength, c.scale, c.anchor, c.output))
        if current is not None:
            self._read_size(box, current)
        box.open()
        self.box = box
        return box

    def _read_size(self, box: RestyleDialog, path: str) -> None:
        from ..engine.io.init_image import image_size

        self.w.jobs.submit(lambda: image_size(Path(path).expanduser()), lambda size: box.set_source_size(path, size),
                           lambda _exc: box.set_source_size(path, None))

    def _base(self) -> rq.GenerationRequest:
        """The panel's request, the fields a restyle sets aside: a starting picture that is gone
        does not stop choosing another one."""
        try:
            return self.w.panel.request()
        except rq.RequestError as exc:
            if exc.field != "init_image":
                raise
            return to_request(self.w.panel.info, dc_replace(self.w.panel.values(), init_image=None))

    def restyle(self, source: str, prompt: str | None = None, strength: float | None = None, scale: int = 1,
                anchor: int | None = None, output: str | None = None) -> bool:
        """Restyle ``source`` (a file) with the panel's settings: ``prompt`` (None: the panel's),
        ``strength`` (None: the engine's default), ``scale`` 1, 2 or 4, ``anchor`` (None: 0 at 1×,
        else the scale) into ``output`` (None: beside the source). The picture is read and checked on
        the job pool, then run like Generate; False, with the reason shown, if it cannot start.
        ``restyled`` says how it ended."""
        w = self.w
        if w.busy or self.preparing:
            return False
        try:
            base = self._base()
        except rq.RequestError as exc:
            return self._refuse(str(exc))
        choice = RestyleChoice(str(source), prompt, rq.DEFAULT_STRENGTH if strength is None else strength, scale,
                               DEFAULT_ANCHORS.get(scale, 0) if anchor is None else anchor,
                               output or str(default_output(str(source), scale if scale in SIZES else 1)))
        self.preparing = True
        self._update_actions()
        w.status_text.setText(f"Reading {Path(choice.source).name}…")
        relief = w.relief
        w.jobs.submit(lambda: prepare(choice, base, relief), self._prepared,
                      lambda exc: self._refuse(message_for(exc)))
        return True

    def _refuse(self, message: str) -> bool:
        self.preparing = False
        self._update_actions()
        self.w.show_error("Cannot restyle this picture", message)
        self.restyled.emit("refused", message)
        return False

    def _prepared(self, p: Prepared) -> None:
        self.preparing = False
        w = self.w
        if w.busy:
            self._refuse("another run started meanwhile: restyle once it ends")
            return
        self._panel = (p.request.init_image, p.display)  # read already: the panel's change reads nothing
        self._show()
        w.panel.set_request(p.request)  # the panel remembers it: Generate re-runs the restyle
        self._pending, self._written, self._kept = (p.request, p.output), None, None
        w.start_run(p.request, p.info, p.request.device.split(":")[0].replace("auto", "cpu"), check=True)

    # -- after the run ------------------------------------------------------------------------------

    def _finished(self, e: ev.Finished) -> None:
        if self._pending is None or e.request != self._pending[0]:
            return
        request, path = self._pending
        self._pending, self._claim = None, request  # the next Result kept for this very request is ours
        image, plan, info = e.image, e.plan, dict(e.info)

        def write() -> str:
            from ..engine.io.export import save_image

            return str(save_image(path, image, request, plan, info))

        self.w.jobs.submit(write, lambda written: self._wrote(request, written),
                           lambda exc: self._failed_write(message_for(exc)))

    def _wrote(self, request: rq.GenerationRequest, path: str) -> None:
        self._written = (request, path)
        if self._kept is not None and self._kept.request is request:
            self._kept.path = path  # export, upscale and a further restyle start from this file
        self.w.statusBar().showMessage(f"Restyled: {path}", 15000)
        log.info("restyle written to %s", path)
        self.restyled.emit("finished", path)

    def _failed_write(self, message: str) -> None:
        self.w.show_error("Could not write the restyled picture", f"{message}; it is in History: export it from there")
        self.restyled.emit("failed", message)

    def _result_kept(self, result: Any) -> None:
        # The same object, not an equal one: Generate re-runs an equal request (the seed locked),
        # and its picture is not the restyle's file.
        if self._claim is None or result.request is not self._claim:
            return
        self._kept, self._claim = result, None
        if self._written is not None and self._written[0] is result.request:
            result.path = self._written[1]

    def _stopped(self, outcome: str, message: str) -> None:
        if self._pending is not None:
            self._pending = None
            self.restyled.emit(outcome, message)

    # -- the starting picture under the plan ------------------------------------------------------

    def follow(self) -> None:
        """The panel changed: read its starting picture if it is another one, or find out again
        whether it is still there (a request shown anew) — on the job pool."""
        form = self.w.panel.start_form
        path = form.path
        if path is None:
            if self._panel[0] is not None:
                self._panel = (None, None)
                self._show()
            return
        if path == self._panel[0] and form.found is not None:
            return
        reread = path != self._panel[0]
        if reread:
            self._panel = (path, None)
        relief = self.w.relief

        def seen(out: tuple[bool, np.ndarray | None]) -> None:
            found, pixels = out
            form.set_found(path, found)
            if self._panel[0] == path and (reread or not found):
                self._panel = (path, pixels)
                self._show()

        self.w.jobs.submit((lambda: look(path, relief)) if reread else (lambda: (Path(path).is_file(), None)), seen)

    def _relief_changed(self, _on: bool) -> None:
        """Heightmaps are shown another way now: the starting picture is read again to match."""
        self.w.act_compare.setChecked(False)
        if self._panel[0] is not None:
            self._panel = (None, None)
            self.follow()

    def _show(self) -> None:
        pixels = self._source if self.comparing else self._panel[1]
        set_underlay(self.w.canvas, None if pixels is None else qimage(pixels), self.comparing)

    # -- the A/B view -----------------------------------------------------------------------------

    def set_compare(self, on: bool) -> None:
        """View → Compare with source: the current picture's starting picture in its place."""
        w = self.w
        if not on:
            was, self.comparing, self._source = self.comparing, False, None
            self._show()
            if was:
                w.statusBar().clearMessage()
                self.compare_shown.emit(False)
            return
        r = w.current
        src = r.request.init_image if r is not None and r.request is not None else None
        if src is None:
            w.act_compare.setChecked(False)
            w.statusBar().showMessage("This picture did not start from another one", 10000)
            return
        token, relief = w.session.token, w.relief

        def read(out: tuple[bool, np.ndarray | None]) -> None:
            found, pixels = out
            if not w.act_compare.isChecked() or not w.session.is_current(token):
                return  # toggled off, or another picture shown meanwhile
            if pixels is None:
                w.act_compare.setChecked(False)
                w.show_error("Cannot compare with the source", f"init_image: the starting picture {src} is " +
                             ("not found" if not found else "not a readable image"))
                return
            self.comparing, self._source = True, pixels
            self._show()
            w.statusBar().showMessage(f"Showing the starting picture {Path(src).name}, stretched to this picture's "
                                      "size (Ctrl+B: back to the picture)")
            self.compare_shown.emit(True)

        w.jobs.submit(lambda: look(src, relief), read)

    def _current_changed(self, result: Any) -> None:
        self.w.act_compare.setChecked(False)  # the A/B view is about one picture
        self._update_actions()

    def _state_changed(self, state: Any) -> None:
        if state.active:
            self.w.act_compare.setChecked(False)
        self._update_actions()

    def _update_actions(self) -> None:
        w, r = self.w, self.w.current
        w.act_restyle.setEnabled(not w.busy and not self.preparing)
        w.act_compare.setEnabled(not w.busy and r is not None and r.request is not None
                                 and r.request.init_image is not None)


__all__ = ["RestyleMode", "default_output", "prepare"]
