"""Upscale…: the progressive ×2 passes of ``engine.api.upscale`` run one after another through the
app's own run path (the worker thread, live previews, History), each pass's picture written to
its file on the job pool before the next pass starts — the next pass reads it as its init image.

:class:`UpscaleMode` is Upscale…'s half of the window: the action, the dialog, the checks
before a chain starts and what the window says when it ends. The chain only sequences. The mode
gives it ``start_run`` (the window's run path) and the window tells it what happened:
:meth:`UpscaleChain.finished` with each pass's result, :meth:`kept` once that result is in
History, :meth:`stopped` when a pass is cancelled or fails. The next pass starts when the picture
is both written and kept, so History lists the passes in order.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QStandardPaths, Qt, Signal

from ..engine.api.upscale import SCALES, UpscalePass
from ..engine.core import events as ev
from ..engine.core import request as rq
from ..engine.core.modelinfo import ModelInfo
from .dialogs import message_for
from .jobs import Jobs
from .widgets.inspector import Result
from .widgets.upscale import UpscaleDialog

log = logging.getLogger(__name__)

StartRun = Callable[[rq.GenerationRequest, ModelInfo], bool]  # False: it could not start (said why)


def default_output(result: Result, scale: int) -> Path:
    """Where an upscale of ``result`` by ``scale`` goes unless the person says otherwise: beside
    its file, or in the Pictures folder for a picture never written."""
    if result.path:
        p = Path(result.path)
        return p.with_name(f"{p.stem}-x{scale}.png")
    folder = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation) or str(Path.home())
    stem = f"paradiff-{result.request.seed}" if result.request is not None else Path(result.title).stem
    return Path(folder) / f"{stem}-x{scale}.png"


def source_copy(output: Path, scale: int) -> Path:
    """The file an unsaved picture is written to before its upscale: ``NAME-x1.png`` beside the
    passes (``NAME-x2.png``, ``NAME-x4.png``…), so the chain's first file is the picture itself."""
    stem = output.stem[: -len(f"-x{scale}")] if output.stem.endswith(f"-x{scale}") else output.stem
    return output.with_name(f"{stem}-x1{output.suffix}")


def _prepare(result: Result, scale: int, strength: float | None, output: Path,
             base: rq.GenerationRequest | None) -> tuple[list[UpscalePass], ModelInfo]:
    """The passes and the model they run on (a worker thread: reads and maybe writes files)."""
    from ..engine.api.upscale import upscale_passes
    from ..engine.io.export import save_image
    from ..engine.models.info import describe_model

    source = Path(result.path) if result.path and Path(result.path).is_file() else None
    if source is None:
        if result.image is None or result.request is None:
            raise rq.RequestError("source", "the picture is no longer in memory and was never written: open it "
                                            "from its file to upscale it")
        plan = result.plan if result.plan is not None else describe_model(result.request.model).plan(result.request)
        source = source_copy(output, scale)
        save_image(source, result.image, result.request, plan, result.info)
    passes = upscale_passes(source, scale, strength=strength, base=base, output=output)
    return passes, describe_model(passes[0].request.model)


class UpscaleChain(QObject):
    """One upscale at a time: prepare (worker) → for each pass: run, write (worker), keep → next."""

    pass_started = Signal(int, int, int)  # pass number (from 1), passes, total factor after it
    pass_written = Signal(int, str)  # pass number, path
    ended = Signal(str, str)  # "finished" | "cancelled" | "failed", what to tell the person

    def __init__(self, jobs: Jobs, start_run: StartRun, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.jobs = jobs
        self.start_run = start_run
        self.passes: list[UpscalePass] = []
        self.index = -1  # the pass running or last run
        self.active = False  # from start() until ended
        self._info: ModelInfo | None = None
        self._cancelled = False
        self._result: Result | None = None
        self._written = self._kept = False
        self._token = 0  # a chain's late callbacks do not reach the next chain

    # -- what the window asks ------------------------------------------------------------------

    @property
    def running_pass(self) -> UpscalePass | None:
        """The pass whose run is under way or whose picture is being written."""
        return self.passes[self.index] if self.active and 0 <= self.index < len(self.passes) else None

    def label(self) -> str:
        """"pass 2 of 3, ×4" while a pass runs; "" otherwise."""
        p = self.running_pass
        return f"pass {self.index + 1} of {len(self.passes)}, ×{p.factor}" if p is not None else ""

    def start(self, result: Result, scale: int, strength: float | None, output: Path,
              base: rq.GenerationRequest | None) -> None:
        """Upscale ``result`` by ``scale`` into ``output`` (the last pass's file). The passes are
        laid out on the job pool (the source is read, or written first if it never was)."""
        if self.active:
            raise RuntimeError("an upscale is already running")
        self._token += 1
        token = self._token
        self.active, self._cancelled = True, False
        self.passes, self.index, self._info = [], -1, None
        self.jobs.submit(lambda: _prepare(result, scale, strength, output, base),
                         lambda out: token == self._token and self._prepared(*out),
                         lambda exc: token == self._token and self._end("failed", message_for(exc)))

    def cancel(self) -> None:
        """Stop after what is under way (the window cancels a running pass itself); a picture
        being written is still written."""
        self._cancelled = True

    def finished(self, event: ev.Finished, result: Result) -> None:
        """The running pass finished: write its picture to the pass's file."""
        p = self.running_pass
        if p is None:
            return
        self._result, self._written, self._kept = result, False, False
        token = self._token
        image, request, plan, info, path = event.image, event.request, event.plan, dict(event.info), p.output

        def write() -> str:
            from ..engine.io.export import save_image

            return str(save_image(path, image, request, plan, info))

        self.jobs.submit(write, lambda written: token == self._token and self._wrote(written),
                         lambda exc: token == self._token and self._end(
                             "failed", f"Could not write pass {self.index + 1} ({message_for(exc)}); its picture "
                                       "is in History: export it from there."))

    def kept(self, result: Result) -> None:
        """``result`` is in History (and displayed when still current)."""
        if self.active and result is self._result:
            self._kept = True
            self._advance()

    def stopped(self, outcome: str, message: str = "") -> None:
        """The running pass was cancelled or failed: the chain ends there."""
        if self.running_pass is not None:
            self._end(outcome, message)

    # -- the sequence -------------------------------------------------------------------------

    def _prepared(self, passes: list[UpscalePass], info: ModelInfo) -> None:
        self.passes, self._info = passes, info
        if self._cancelled:
            self._end("cancelled", "Upscale cancelled before its first pass")
            return
        self._run(0)

    def _run(self, index: int) -> None:
        self.index = index
        p = self.passes[index]
        self.pass_started.emit(index + 1, len(self.passes), p.factor)
        if not self.start_run(p.request, self._info):
            self._end("failed", "")  # start_run has said why

    def _wrote(self, path: str) -> None:
        if self._result is not None:
            self._result.path = path  # export and a further upscale start from this file
        self._written = True
        self.pass_written.emit(self.index + 1, path)
        self._advance()

    def _advance(self) -> None:
        if not (self._written and self._kept):
            return
        self._result = None
        if self.index + 1 >= len(self.passes):
            self._end("finished", f"Upscaled ×{self.passes[-1].factor}: {self.passes[-1].output}")
        elif self._cancelled:
            self._end("cancelled", f"Upscale cancelled after pass {self.index + 1} of {len(self.passes)}; "
                                   f"{self.passes[self.index].output.name} is written")
        else:
            self._run(self.index + 1)

    def _end(self, outcome: str, message: str) -> None:
        if not self.active:
            return
        log.info("upscale %s: %s", outcome, message)
        self.active = False
        self._token += 1
        self._result = None
        self.ended.emit(outcome, message)


class UpscaleMode(QObject):
    """Upscale…'s half of the window: ``w`` is the MainWindow (the current picture, its run path,
    status and errors); ``chain`` runs the passes."""

    def __init__(self, w: Any) -> None:
        super().__init__(w)
        self.w = w
        self.chain = UpscaleChain(w.jobs, self._start_pass, self)
        self.box: UpscaleDialog | None = None
        self.chain.pass_started.connect(lambda i, n, k: w.progress.setFormat(f"pass {i}/{n} · %p%"))
        self.chain.pass_written.connect(lambda i, path: log.info("upscale pass %d written to %s", i, path))
        self.chain.ended.connect(self._ended)

    def update_action(self) -> None:
        r, w = self.w.current, self.w
        w.act_upscale.setEnabled(not w.busy and r is not None and (r.image is not None or bool(r.path)))

    def dialog(self) -> UpscaleDialog | None:
        """Ask for the scale, strength and output of an upscale of the current picture (not blocking)."""
        r = self.w.current
        if r is None or r.layer is None:
            return None
        box = UpscaleDialog(self.w, r.title, (r.layer.width, r.layer.height), lambda k: default_output(r, k))
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.chosen.connect(lambda scale, strength, output: self.w.upscale(scale, strength, output))
        box.open()
        self.box = box
        return box

    def upscale(self, scale: int, strength: float | None = None, output: str | None = None) -> bool:
        """See :meth:`MainWindow.upscale`."""
        w, r = self.w, self.w.current
        if w.busy:
            return False
        if r is None or (r.image is None and not r.path):
            w.show_error("Nothing to upscale", "generate or open a picture first")
            return False
        if isinstance(scale, bool) or scale not in SCALES:
            w.show_error("Cannot upscale", f"scale: must be 2, 4 or 8; got {scale!r}")
            return False
        # The picture's own recipe; a picture without one takes the panel's model and prompt.
        base = r.request
        if base is None:
            with contextlib.suppress(rq.RequestError):
                base = w.panel.request()
        self.chain.start(r, scale, strength, Path(output) if output else default_output(r, scale), base)
        w.last_error = None
        w.status_text.setText(f"Preparing the ×{scale} upscale…")
        w.run_state_changed(w.runner.state)
        return True

    def _start_pass(self, request: rq.GenerationRequest, info: ModelInfo) -> bool:
        self.w.start_run(request, info, request.device.split(":")[0].replace("auto", "cpu"), check=True)
        return True

    def _ended(self, outcome: str, message: str) -> None:
        w = self.w
        w.progress.setFormat("%p%")
        w.run_state_changed(w.runner.state)
        if outcome == "failed" and message:
            w.show_error("The upscale failed", message)
        elif message:
            w.status_text.setText(message)
            w.statusBar().showMessage(message, 15000)  # the last pass's own status follows it
        w.upscale_ended.emit(outcome)
