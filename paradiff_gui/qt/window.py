"""The main window: the composition root. It builds the app's parts and connects them; the work
lives in them, and a new mode is a part of its own, not more of this file.

- ``docks`` and ``menus``: the docks, status bar, actions, menus and toolbar (``setupUi``-style);
- ``results.ResultView``: a finished picture shown, kept in History, scored, layered in relief;
- ``run.RunController``: a generation's life (worker thread, state, figures, live previews);
- ``session.Session``: this session's results, their memory budget, the current picture, and
  the token that drops background work arriving for a picture no longer shown;
- ``plan_summary.PlanSummary``: the plan, estimate and memory check, once per edit, off-thread;
- ``upscale.UpscaleChain``: Upscale…'s ×2 passes, each run like Generate and written before the next;
- ``overlays.ControlOverlay``: View → Control image;
- ``files.FileActions`` (open, save, export, drop), ``autosave.Autosaver`` (autosave and
  recovery), ``settings.AppSettings`` (QSettings), ``dialogs`` (error boxes);
- widgets: the generation panel, the canvas, the seam inspector and the history.

The GUI thread only paints and dispatches: pixels, files, plans and device queries all go to the
job pool (``jobs.Jobs``) and come back as callbacks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, QSize, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QMainWindow, QMessageBox

from ..engine.analysis.seams import Seam
from ..engine.core import events as ev
from ..engine.core import request as rq
from ..engine.core.modelinfo import ModelInfo
from ..engine.runtime.devices import set_cpu_threads
from .autosave import Autosaver
from .bridge import Engine
from .dialogs import FAILURE_TITLES, error_box, message_for
from .docks import build_docks, build_status, follow_run
from .files import FileActions
from .generate import GenerateMode
from .jobs import Jobs, StallMonitor
from .menus import build_menus
from .overlays import ControlOverlay
from .plan_summary import PlanSummary, fmt_bytes, fmt_seconds
from .refine import RefineMode
from .restyle import RestyleMode
from .results import ResultView
from .run import RunController, RunState
from .session import Session
from .settings import AppSettings
from .upscale import UpscaleMode
from .widgets.canvas import CanvasWidget
from .widgets.inspector import HistoryPanel, Result, SeamPanel
from .widgets.panel import GenerationPanel
from .widgets.upscale import UpscaleDialog

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_MS = 5000  # a run that ignores its cancel this long does not keep the window open
MIN_CANVAS = QSize(360, 480)  # px: the canvas's share of a restored window's minimum size


class MainWindow(QMainWindow):
    """The Paradiff desktop app. ``engine`` is for tests (a scriptable fake); ``settings`` lets
    tests keep their own QSettings file, ``autosave_dir`` their own autosave folder."""

    run_ended = Signal(str)  # "finished" | "cancelled" | "failed"; the worker thread has ended
    result_ready = Signal(object)  # Result, once shown (pyramid built)
    scored = Signal(object)  # Result, once its seams are scored
    exported = Signal(str)  # path
    autosaved = Signal(str)  # path
    export_failed = Signal(str)  # message
    upscale_ended = Signal(str)  # "finished" | "cancelled" | "failed"; every pass's run has ended

    def __init__(self, engine: Engine | None = None, settings: QSettings | None = None,
                 interactive: bool = True, autosave_dir: Path | None = None) -> None:
        super().__init__()
        self.setWindowTitle("Paradiff")
        self.setAcceptDrops(True)
        self.prefs = AppSettings(settings)
        self.settings = self.prefs.q
        self.interactive = interactive  # False in scripted mode: errors go to stderr, not dialogs
        self.jobs = Jobs(self)
        self.stall = StallMonitor(parent=self)
        self.canvas = CanvasWidget()
        self.setCentralWidget(self.canvas)
        self.panel = GenerationPanel()
        self.seams = SeamPanel()
        self.history = HistoryPanel()
        self.session = Session(parent=self)
        self.results = ResultView(self.jobs, self.session, self.prefs, self.canvas, self.seams, self.history,
                                  self._job_failed, self)
        self.overlay = ControlOverlay(self.jobs, self.canvas, self.panel, self)
        self.runner = RunController(engine, self.prefs, self.canvas, self.stall, self)
        self.bridge = self.runner.bridge
        self.plan_summary = PlanSummary(self.jobs, self)
        self.files = FileActions(self.jobs, self, self.panel.editor_plan)
        self.autosaver = Autosaver(self.jobs, autosave_dir, self)
        self.generating = GenerateMode(self)  # the modes: each connects what it follows
        self.upscaling = UpscaleMode(self)
        self.upscaler = self.upscaling.chain
        self.refining = RefineMode(self)  # Refine selection… (qt/refine.py)
        self.last_error: str | None = None
        self.error_box: QMessageBox | None = None
        self.close_timeout_ms = CLOSE_TIMEOUT_MS
        self._closing = False  # a close waits for the run to stop
        self._close_forced = False
        build_docks(self)
        build_menus(self)
        build_status(self)
        self._connect()
        self.restyling = RestyleMode(self)  # File → Restyle…, View → Compare with source: adds its own actions
        self.prefs.restore_app(self, self._minimum_restored_size())
        self.generating.update_plan(now=True)
        if self.autosaver.recoverable and interactive:
            self.autosaver.offer(self)

    # -- state kept by the parts, under the names tests and scripts use -----------------------------

    @property
    def current(self) -> Result | None:
        return self.session.current

    @property
    def relief(self) -> bool:
        return self.results.relief

    @property
    def busy(self) -> bool:
        """A run is active, or an upscale chain (between two passes no run is active, yet the chain is)."""
        return self.runner.active or self.upscaler.active

    @property
    def upscale_box(self) -> UpscaleDialog | None:
        return self.upscaling.box

    @property
    def stats(self) -> dict[str, Any]:
        return self.runner.stats

    @property
    def autosave_dir(self) -> Path:
        return self.autosaver.folder

    @property
    def recoverable(self) -> list[Path]:
        return self.autosaver.recoverable

    @property
    def recover_box(self) -> QMessageBox | None:
        return self.autosaver.box

    def recover(self, choice: str) -> None:
        self.autosaver.recover(choice)

    def seconds_per_view(self, model: str, device: str) -> float | None:
        return self.prefs.seconds_per_view(model, device)

    def _connect(self) -> None:
        r = self.runner
        r.state_changed.connect(self.run_state_changed)
        follow_run(self)  # the status bar: status text, step, memory, progress, notices
        r.finished.connect(self._on_finished)
        r.cancelled.connect(self._on_cancelled)
        r.failed.connect(self._on_failed)
        self.generate_button.clicked.connect(self.generate)
        self.cancel_button.clicked.connect(self.cancel)
        self.panel.changed.connect(self.overlay.follow)
        self.seams.overlays_changed.connect(
            lambda b_, o, h: self.canvas.set_overlays(borders=b_, overlaps=o, heatmap=h))
        self.seams.seam_chosen.connect(self.results.show_seam)
        self.history.chosen.connect(self.show_result)
        self.results.kept.connect(self.upscaler.kept)  # an upscale pass's result: the next pass may start
        self.results.scored.connect(self.scored)
        self.history.reuse.connect(lambda res: self.panel.set_request(res.request))
        self.canvas.regions.link(self.panel.regions_form)  # the form holds them, the canvas draws them
        self.session.current_changed.connect(self._current_changed)
        f = self.files
        f.opened.connect(self._display_opened)
        f.request_loaded.connect(self.panel.set_request)
        f.exported.connect(self._exported)
        f.export_failed.connect(self._export_failed)
        f.export_progress.connect(lambda n: self.status_text.setText(f"Exporting… {fmt_bytes(n)} written"))
        f.status.connect(self.status_text.setText)
        f.error.connect(self.show_error)
        f.note.connect(lambda text: self.statusBar().showMessage(text, 10000))
        a = self.autosaver
        a.saved.connect(self.autosaved)
        a.failed.connect(lambda m: self.statusBar().showMessage(
            f"Could not autosave ({m}); export the picture to keep it", 15000))
        a.open_requested.connect(lambda path: self.open_image(path, autosave=path))

    # -- settings -----------------------------------------------------------------------------------

    def _minimum_restored_size(self) -> QSize:
        """What the docks need side by side (the panel unsqueezed) plus a usable canvas."""
        left = self.panel.sizeHint().width() + 24
        right = self.tabs.minimumSizeHint().width()
        return QSize(left + right + MIN_CANVAS.width(), MIN_CANVAS.height()).expandedTo(self.minimumSizeHint())

    def save_settings(self) -> None:
        self.prefs.save_app(self)

    # -- a run ------------------------------------------------------------------------------------------

    def generate(self) -> bool:
        """Start a run from the panel; False (with the reason shown) if it cannot start."""
        return self.generating.generate()

    def start_run(self, request: rq.GenerationRequest, info: ModelInfo, device: str, check: bool, **extra: Any) -> None:
        spare = self.panel.spare_core.isChecked() and (os.cpu_count() or 1) > 1
        set_cpu_threads((os.cpu_count() or 2) - 1 if spare else None)
        self.last_error = None
        self.session.set_current(None)  # late pictures of earlier work are not shown over the run
        self.seams.clear("Generating…")
        self.runner.start(request, info, device, self.relief, check=check, **extra)

    def cancel(self) -> None:
        if self.upscaler.active:
            self.upscaler.cancel()  # no further pass; a picture being written is still written
            self.status_text.setText("Cancelling the upscale…")
        self.runner.cancel()

    def run_state_changed(self, state: RunState) -> None:
        chain = self.upscaler.active  # between two passes no run is active, yet the chain is
        running = state.active or chain
        self.act_generate.setEnabled(not running)
        self.generate_button.setEnabled(not running)
        can_cancel = state is RunState.running or (chain and not state.active)
        self.act_cancel.setEnabled(can_cancel)
        self.cancel_button.setEnabled(can_cancel)
        self.panel.setEnabled(not running)
        self.canvas.regions.set_editable(not running)  # shown over the previews, not editable
        self.upscaling.update_action()
        if not running:
            self.progress.setVisible(False)

    def _on_finished(self, e: ev.Finished) -> None:
        if self.refining.finished(e):  # composited, written and shown by the refine (qt/refine.py)
            return
        step = self.upscaler.running_pass
        title = f"{e.request.width}×{e.request.height} · seed {e.request.seed}" if step is None else \
            f"×{step.factor} upscale · {e.request.width}×{e.request.height}"
        result = Result(e.image, e.request, [e.plan.image_rect(t) for t in e.plan.tiles], title,
                        e.seconds, dict(e.info), e.plan, consensus=self.runner.consensus)
        if step is None:
            self.autosaver.save(result)
        else:
            self.upscaler.finished(e, result)  # written to the pass's own file instead
        self.status_text.setText(f"Done in {fmt_seconds(e.seconds)}, preparing the view…")
        token = self.session.token
        self.results.present(result, lambda: self.session.is_current(token), self._displayed)
        self.run_ended.emit("finished")
        self._close_if_waiting()

    def _displayed(self, result: Result, relief: bool) -> None:
        self.results.follow_relief(relief)  # relief toggled while the view was built
        self.runner.finish_display()
        self.status_text.setText(f"{result.title} · {fmt_seconds(result.seconds or 0)}")
        self.result_ready.emit(result)

    def _on_cancelled(self, e: ev.Cancelled) -> None:
        # The Inspect panel said "Generating…": say what happened there too.
        self.seams.clear(f"Cancelled at step {e.step + 1}; nothing was written.")
        self.upscaler.stopped("cancelled", f"Upscale cancelled in {self.upscaler.label()}")
        self.run_ended.emit("cancelled")
        self._close_if_waiting()

    def _on_failed(self, e: ev.Failed) -> None:
        title = FAILURE_TITLES.get(e.kind, "The generation failed")
        self.seams.clear(f"{title}.")
        self.show_error(title, e.message)
        self.upscaler.stopped("failed")  # the error box says why
        self.run_ended.emit("failed")
        self._close_if_waiting()

    # -- view ------------------------------------------------------------------------------------------

    def show_result(self, result: Result) -> None:
        self.results.show(result)

    def show_seam(self, seam: Seam) -> None:
        self.results.show_seam(seam)

    def _current_changed(self, result: Result | None) -> None:
        self.act_export.setEnabled(result is not None and result.image is not None)
        self.upscaling.update_action()

    # -- files ----------------------------------------------------------------------------------------------

    def open_image(self, path: str, autosave: str | None = None) -> None:
        """Load ``path`` off the GUI thread and inspect it (plan from its metadata, or from the
        tile editor when it has none)."""
        self.files.open_image(path, autosave)

    def _display_opened(self, result: Result, source: str) -> None:
        # Not shown over a running generation's previews: it waits in History.
        self.results.present(result, lambda: not self.runner.active, lambda r, _relief: self._opened(r, source))

    def _opened(self, result: Result, source: str) -> None:
        h, w = result.image.shape[:2]
        self.status_text.setText(f"{result.title}: {w}×{h}; tile plan from {source}")
        self.result_ready.emit(result)

    def load_request(self, path: str) -> bool:
        return self.files.load_request(path)

    def save_request(self, path: str) -> bool:
        return self.files.save_request(path, self.panel.request)

    def export(self, path: str, quality: int = 95) -> None:
        """Write the current picture to ``path`` (format from the extension) off the GUI thread."""
        if self.files.export(self.current, path, quality):
            self.progress.setRange(0, 0)
            self.progress.setVisible(True)

    def _exported(self, result: Result, path: str) -> None:
        self.progress.setVisible(False)
        self.autosaver.exported(result)
        self.exported.emit(path)

    def _export_failed(self, message: str) -> None:
        self.progress.setVisible(False)
        self.export_failed.emit(message)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile() and self.files.droppable(urls[0].toLocalFile()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        path = event.mimeData().urls()[0].toLocalFile()
        event.acceptProposedAction()
        self.drop_file(path)

    def drop_file(self, path: str) -> None:
        """A dropped request or Paradiff image restores its settings; an image is also opened."""
        self.files.drop_file(path)

    # -- upscale ----------------------------------------------------------------------------------------------

    def upscale_dialog(self) -> UpscaleDialog | None:
        """Ask for the scale, strength and output of an upscale of the current picture (not blocking)."""
        return self.upscaling.dialog()

    def upscale(self, scale: int, strength: float | None = None, output: str | None = None) -> bool:
        """Upscale the current picture by ``scale`` (2, 4, 8) in ×2 passes, each run like Generate
        and written (``output`` is the last pass's file) before the next; False, with the reason
        shown, if it cannot start. ``upscale_ended`` says how it ended."""
        return self.upscaling.upscale(scale, strength, output)

    # -- errors, help, closing ---------------------------------------------------------------------------

    def show_error(self, title: str, message: str) -> None:
        """The engine's message in plain words; details go to the log file."""
        self.last_error = message
        log.error("%s: %s", title, message)
        self.status_text.setText(title)
        if self.interactive:
            self.error_box = error_box(self, title, message)

    def _job_failed(self, exc: BaseException) -> None:
        log.error("background job failed", exc_info=exc)
        self.show_error("Something went wrong", message_for(exc))

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.runner.active and not self._close_forced:
            # Cancel and close once the worker has stopped (within a tile batch): never block the
            # loop waiting, and never destroy a running thread (Qt aborts the process).
            event.ignore()
            if not self._closing:
                self._closing = True
                self.upscaler.cancel()
                self.runner.cancel()
                self.status_text.setText("Stopping the run, then closing…")
                QTimer.singleShot(self.close_timeout_ms, self._force_close)
            return
        self.save_settings()
        self.jobs.shutdown()
        super().closeEvent(event)

    def _close_if_waiting(self) -> None:
        if self._closing:
            QTimer.singleShot(0, self.close)

    def _force_close(self) -> None:
        """The run ignored its cancel for ``close_timeout_ms``: close anyway. Its thread stays
        referenced (bridge._LIVE_WORKERS) so it is never destroyed running; the app then leaves
        with os._exit (app.main)."""
        if self._closing and self.runner.active and self.isVisible():
            log.warning("the run did not stop within %d ms of a cancel; closing without it", self.close_timeout_ms)
            self._close_forced = True
            self.close()


__all__ = ["MainWindow"]
