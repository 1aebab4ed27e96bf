"""The main window: it composes the app's parts and connects them; the work lives elsewhere.

- ``run.RunController``: a generation's life (worker thread, state, figures, live previews);
- ``session.Session``: this session's results, their memory budget, the current picture, and
  the token that drops background work arriving for a picture no longer shown;
- ``plan_summary.PlanSummary``: the plan, estimate and memory check, once per edit, off-thread;
- ``upscale.UpscaleChain``: Upscale…'s ×2 passes, each run like Generate and written before the next;
- ``files.FileActions`` (open, save, export, drop), ``autosave.Autosaver`` (autosave and
  recovery), ``settings.AppSettings`` (QSettings), ``dialogs`` (error boxes);
- widgets: the generation panel, the canvas, the seam inspector and the history.

The GUI thread only paints and dispatches: pixels, files, plans and device queries all go to the
job pool (``jobs.Jobs``) and come back as callbacks.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QPointF, QSettings, QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDesktopServices, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QStyle,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from ..engine.analysis.seams import Seam, analyse, heatmap, tiled_score
from ..engine.api.upscale import SCALES
from ..engine.core import events as ev
from ..engine.core import request as rq
from ..engine.core.modelinfo import ModelInfo
from ..engine.io.export import FORMATS
from ..engine.runtime.devices import set_cpu_threads
from .autosave import Autosaver
from .bridge import Engine
from .dialogs import FAILURE_TITLES, error_box, message_for
from .files import FileActions
from .imaging import Layer, heat_rgba, pyramid, qimage, to_display
from .jobs import Jobs, StallMonitor
from .plan_summary import TOOLTIP, PlanSummary, Summary, fmt_bytes, fmt_seconds
from .run import RunController, RunState
from .session import Session
from .settings import AppSettings
from .upscale import UpscaleChain, default_output
from .widgets.canvas import CanvasWidget, SeamMark
from .widgets.inspector import HistoryPanel, Result, SeamPanel
from .widgets.panel import GenerationPanel
from .widgets.upscale import UpscaleDialog

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_MS = 5000  # a run that ignores its cancel this long does not keep the window open
MIN_CANVAS = QSize(360, 480)  # px: the canvas's share of a restored window's minimum size


def _prepare_display(image: np.ndarray, relief: bool) -> tuple[list[np.ndarray], np.ndarray]:
    levels = pyramid(to_display(image, relief))
    return levels, levels[-1]


CONTROL_VIEW_PX = 2048  # the control image is shown at most this long a side (it only guides the eye)


def _read_control(path: str) -> np.ndarray:
    """A control image as RGB bytes for the canvas, shrunk to CONTROL_VIEW_PX (on a worker)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((CONTROL_VIEW_PX, CONTROL_VIEW_PX))
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def _score(image: np.ndarray, tiles: list[tuple[int, int, int, int]]) -> tuple[Any, list[np.ndarray], np.ndarray]:
    report = analyse(image, tiles)
    heat = heatmap(image, tiles)
    return report, pyramid(heat_rgba(heat)), heat


def _same_plan(a: rq.GenerationRequest, b: rq.GenerationRequest) -> bool:
    # The seed never changes the plan, and Generate draws a new one just before it starts.
    return a.replace(seed=0) == b.replace(seed=0)


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
        self._control_path: str | None = None  # the control image the canvas has (View → Control image)
        self.stall = StallMonitor(parent=self)
        self.canvas = CanvasWidget()
        self.setCentralWidget(self.canvas)
        self.panel = GenerationPanel()
        self.seams = SeamPanel()
        self.history = HistoryPanel()
        self.session = Session(parent=self)
        self.runner = RunController(engine, self.prefs, self.canvas, self.stall, self)
        self.bridge = self.runner.bridge
        self.plan_summary = PlanSummary(self.jobs, self)
        self.files = FileActions(self.jobs, self, self.panel.editor_plan)
        self.autosaver = Autosaver(self.jobs, autosave_dir, self)
        self.upscaler = UpscaleChain(self.jobs, self._start_pass, self)
        self.upscale_box: UpscaleDialog | None = None
        self.last_error: str | None = None
        self.error_box: QMessageBox | None = None
        self.relief = True  # heightmaps in shaded relief (restored below)
        self.close_timeout_ms = CLOSE_TIMEOUT_MS
        self._closing = False  # a close waits for the run to stop
        self._close_forced = False
        self._build_docks()
        self._build_actions()
        self._build_status()
        self._connect()
        self._restore()
        self._update_plan(now=True)
        if self.autosaver.recoverable and interactive:
            self.autosaver.offer(self)

    # -- state kept by the parts, under the names tests and scripts use -----------------------------

    @property
    def current(self) -> Result | None:
        return self.session.current

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

    # -- construction ---------------------------------------------------------------------------

    def _build_docks(self) -> None:
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.panel)
        scroll.setMinimumWidth(self.panel.sizeHint().width() + 24)
        left = QWidget()
        lay = QVBoxLayout(left)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(scroll, 1)
        self.generate_button = QPushButton("Generate")
        self.generate_button.setObjectName("generate")
        self.generate_button.setDefault(True)
        self.generate_button.setToolTip("Generate (Ctrl+Enter)")
        self.generate_button.setMinimumHeight(36)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancel")
        self.cancel_button.setToolTip("Stop after the current tile batch (Esc)")
        self.cancel_button.setEnabled(False)
        lay.addWidget(self.generate_button)
        lay.addWidget(self.cancel_button)
        dock = QDockWidget("Generate", self)
        dock.setObjectName("generate_dock")
        dock.setWidget(left)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, dock)
        tabs = QTabWidget()
        tabs.addTab(self.seams, "Seams")
        tabs.addTab(self.history, "History")
        self.tabs = tabs
        dock = QDockWidget("Inspect", self)
        dock.setObjectName("inspect_dock")
        dock.setWidget(tabs)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)

    def _action(self, text: str, slot: Any, shortcut: Any = None, icon: Any = None, tip: str = "",
                checkable: bool = False) -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcuts(shortcut if isinstance(shortcut, list) else [QKeySequence(shortcut)])
        if icon is not None:
            a.setIcon(self.style().standardIcon(icon))
        if tip:
            a.setToolTip(tip)
            a.setStatusTip(tip)
        a.setCheckable(checkable)
        (a.toggled if checkable else a.triggered).connect(slot)
        self.addAction(a)
        return a

    def _build_actions(self) -> None:
        sp = QStyle.StandardPixmap
        self.act_generate = self._action(
            "&Generate", self.generate, [QKeySequence("Ctrl+Return"), QKeySequence("Ctrl+Enter")],
            sp.SP_MediaPlay, "Generate the image (Ctrl+Enter)")
        self.act_cancel = self._action("&Cancel", self.cancel, QKeySequence(Qt.Key.Key_Escape), sp.SP_MediaStop,
                                       "Stop after the current tile batch (Esc)")
        self.act_cancel.setEnabled(False)
        self.act_open = self._action("&Open image…", self.files.open_image_dialog, QKeySequence.StandardKey.Open,
                                     sp.SP_DialogOpenButton, "Open an image to inspect its seams")
        self.act_open_request = self._action("Open &request…", self.files.open_request_dialog, "Ctrl+Shift+O",
                                             tip="Load settings from a request .json or a Paradiff image")
        self.act_save_request = self._action("&Save request…",
                                             lambda: self.files.save_request_dialog(self.panel.request),
                                             "Ctrl+Shift+S",
                                             tip="Save the current settings as a .json request")
        self.act_export = self._action("&Export…", lambda: self.files.export_dialog(self.current), "Ctrl+E",
                                       sp.SP_DialogSaveButton,
                                       "Export the picture (" + ", ".join(f.name.upper() for f in FORMATS.values())
                                       + ") with its recipe")
        self.act_export.setEnabled(False)
        self.act_upscale = self._action("&Upscale…", self.upscale_dialog, "Ctrl+U", sp.SP_ArrowUp,
                                        "Upscale the picture ×2, ×4 or ×8 in image-to-image passes, each one kept "
                                        "(Ctrl+U)")
        self.act_upscale.setEnabled(False)
        self.act_quit = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.act_fit = self._action("&Fit", self.canvas.fit, "Ctrl+0", tip="Fit the picture in the window (Ctrl+0)")
        self.act_actual = self._action("&100 %", self.canvas.actual_size, "Ctrl+1",
                                       tip="One image pixel per screen pixel (Ctrl+1)")
        self.act_zoom_in = self._action("Zoom &in", lambda: self.canvas.zoom_by(1.25), QKeySequence.StandardKey.ZoomIn)
        self.act_zoom_out = self._action("Zoom &out", lambda: self.canvas.zoom_by(0.8),
                                         QKeySequence.StandardKey.ZoomOut)
        self.act_relief = self._action("Shaded &relief", self._set_relief, "Ctrl+R", checkable=True,
                                       tip="Show heightmaps as shaded relief; off: grey levels (Ctrl+R)")
        self.act_tiled = self._action("Show &2×2", self._set_tiled, "Ctrl+T", checkable=True,
                                      tip="Show the picture four times, 2×2, to check that it tiles seamlessly "
                                          "(Ctrl+T)")
        self.act_control = self._action("&Control image", self._set_show_control, "Ctrl+K", checkable=True,
                                        tip="Draw the first ControlNet's control image over the canvas, "
                                            "half-transparent, where each tile will take its crop (Ctrl+K)")
        self.act_logs = self._action("Open the &log folder", self._open_logs)
        self.act_about = self._action("&About Paradiff", self._about)
        mb = self.menuBar()
        m = mb.addMenu("&File")
        for a in (self.act_open, self.act_open_request, self.act_save_request, self.act_export):
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.act_quit)
        m = mb.addMenu("&View")
        for a in (self.act_fit, self.act_actual, self.act_zoom_in, self.act_zoom_out):
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.act_relief)
        m.addAction(self.act_tiled)
        m.addAction(self.act_control)
        m = mb.addMenu("&Generate")
        m.addAction(self.act_generate)
        m.addAction(self.act_cancel)
        m.addSeparator()
        m.addAction(self.act_upscale)
        m = mb.addMenu("&Help")
        m.addAction(self.act_logs)
        m.addAction(self.act_about)
        tb = QToolBar("Main")
        tb.setObjectName("main_toolbar")
        tb.setMovable(False)
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for a in (self.act_generate, self.act_cancel):
            tb.addAction(a)
        tb.addSeparator()
        for a in (self.act_open, self.act_export, self.act_upscale):
            tb.addAction(a)
        tb.addSeparator()
        for a in (self.act_fit, self.act_actual, self.act_tiled):
            tb.addAction(a)
        self.addToolBar(tb)

    def _build_status(self) -> None:
        sb = self.statusBar()
        self.status_text = QLabel("Ready")
        self.status_text.setObjectName("status_text")
        self.progress = QProgressBar()
        self.progress.setObjectName("progress")
        self.progress.setMaximumWidth(220)
        self.progress.setTextVisible(True)
        self.progress.setVisible(False)
        self.step_label = QLabel()
        self.step_label.setObjectName("step_label")
        self.memory_label = QLabel()
        self.memory_label.setObjectName("memory_label")
        self.zoom_label = QLabel()
        self.zoom_label.setObjectName("zoom_label")
        sb.addWidget(self.status_text, 1)
        for w in (self.step_label, self.memory_label, self.progress, self.zoom_label):
            sb.addPermanentWidget(w)

    def _connect(self) -> None:
        r = self.runner
        r.state_changed.connect(self._state_changed)
        r.status.connect(self._run_status)
        r.progress.connect(self._progress)
        r.step_text.connect(self.step_label.setText)
        r.memory_text.connect(self.memory_label.setText)
        r.notice.connect(self._on_notice)
        r.finished.connect(self._on_finished)
        r.cancelled.connect(self._on_cancelled)
        r.failed.connect(self._on_failed)
        self.generate_button.clicked.connect(self.generate)
        self.cancel_button.clicked.connect(self.cancel)
        self.panel.changed.connect(self._update_plan)
        self.panel.changed.connect(self._follow_control)
        self.plan_summary.ready.connect(self._show_summary)
        self.seams.overlays_changed.connect(
            lambda b_, o, h: self.canvas.set_overlays(borders=b_, overlaps=o, heatmap=h))
        self.seams.seam_chosen.connect(self.show_seam)
        self.history.chosen.connect(self.show_result)
        self.history.reuse.connect(lambda res: self.panel.set_request(res.request))
        self.canvas.view_changed.connect(self._zoom_changed)
        # Regions: the form holds them, the canvas draws them and reports the mouse's edits.
        rf, layer = self.panel.regions_form, self.canvas.regions
        rf.regions_changed.connect(layer.set_regions)
        rf.selected.connect(layer.select)
        rf.draw_toggled.connect(layer.set_draw_mode)
        layer.drawn.connect(rf.add_region)
        layer.edited.connect(rf.set_rect)
        layer.selected.connect(rf.select)
        layer.remove_requested.connect(rf.remove)
        layer.set_regions(rf.regions(), tuple(row.caption() for row in rf.rows))
        self.session.current_changed.connect(lambda _r: self._update_upscale_action())
        u = self.upscaler
        u.pass_started.connect(lambda i, n, k: self.progress.setFormat(f"pass {i}/{n} · %p%"))
        u.pass_written.connect(lambda i, path: log.info("upscale pass %d written to %s", i, path))
        u.ended.connect(self._upscale_ended)
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

    def _restore(self) -> None:
        p = self.prefs
        p.restore_window(self, self._minimum_restored_size())
        extra = p.added_models()
        self.panel.refresh_models(extra)  # the catalogue scan runs off the GUI thread
        request = p.last_request()
        if request is not None:
            self.panel.set_request(request, lock_seed=p.flag("request/seed_locked", False))
        self.seams.borders.setChecked(p.flag("view/borders", True))
        self.seams.overlaps.setChecked(p.flag("view/overlaps", False))
        self.seams.heatmap.setChecked(p.flag("view/heatmap", False))
        self.act_relief.setChecked(p.flag("view/relief", True))
        self.relief = self.act_relief.isChecked()
        self.act_tiled.setChecked(p.flag("view/tiled", False))
        self.panel.spare_core.setChecked(p.flag("performance/spare_core", False))

    def save_settings(self) -> None:
        p = self.prefs
        p.save_window(self)
        p.set_added_models(self.panel.added_models())
        with contextlib.suppress(rq.RequestError):  # an invalid form is not worth restoring
            p.set_last_request(self.panel.request())
        p.set_flag("request/seed_locked", self.panel.seed_lock.isChecked())
        p.set_flag("view/borders", self.seams.borders.isChecked())
        p.set_flag("view/overlaps", self.seams.overlaps.isChecked())
        p.set_flag("view/heatmap", self.seams.heatmap.isChecked())
        p.set_flag("performance/spare_core", self.panel.spare_core.isChecked())
        p.sync()

    # -- plan summary ---------------------------------------------------------------------------------

    def _update_plan(self, now: bool = False) -> None:
        # Also during a run: the panel's summary follows the edits (the canvas waits, see below).
        try:
            request = self.panel.request()
        except rq.RequestError as exc:
            self.plan_summary.request_update_failed(str(exc))
            if exc.field.startswith("regions") and not self.runner.active:
                self._follow_size()
            return
        info = self.panel.info
        self.plan_summary.request_update(request, info, self.prefs.speeds_for(info.id), now=now)

    def _follow_size(self) -> None:
        # A new size that leaves a region outside: the canvas takes the size anyway (without a
        # plan until the request is valid again), so the region is seen where it now lies.
        v = self.panel.values()
        if (v.width, v.height) != (self.canvas.image_w, self.canvas.image_h):
            self._leave_picture()
            self.canvas.set_canvas_size(v.width, v.height)
            self.canvas.set_plan([])

    def _leave_picture(self) -> None:
        if self.current is not None:
            self.session.set_current(None)
            self.act_export.setEnabled(False)
            self.seams.clear("The size changed: the plan is drawn on an empty canvas.")

    def _show_plan_error(self, message: str) -> None:
        self.panel.plan_info.setText(f"<span style='color:#e5534b'>{message}</span>")
        if not self.runner.active:
            self.act_generate.setEnabled(True)  # Generate explains the problem in a dialog

    def _show_summary(self, summary: Summary) -> None:
        if summary.error is not None or summary.request is None:
            self._show_plan_error(summary.error or "")
        else:
            self.panel.show_plan(summary.plan)
            self.panel.plan_info.setText(summary.html)
            self.panel.plan_info.setToolTip(TOOLTIP)
            if self.runner.active or self.upscaler.active:
                return  # the canvas shows the run now; the panel's summary is up to date
            request = summary.request
            if self.current is None or (request.width, request.height) != (self.canvas.image_w,
                                                                           self.canvas.image_h):
                self._leave_picture()
                self.canvas.set_canvas_size(request.width, request.height)
            self.canvas.set_plan(summary.tiles)

    # -- a run ------------------------------------------------------------------------------------------

    def generate(self) -> bool:
        """Start a run from the panel; False (with the reason shown) if it cannot start."""
        if self.runner.active or self.upscaler.active:
            return False
        self.panel.prepare_run()
        try:
            request = self.panel.request()
        except rq.RequestError as exc:
            self.show_error("This request cannot run", str(exc))
            return False
        summary = self.plan_summary.latest
        if summary is not None and summary.request is not None and _same_plan(summary.request, request):
            if summary.error is not None:  # geometry errors now, not after loading a model
                self.show_error("This request cannot run", summary.error)
                return False
            device, check = summary.device, False
        else:
            # Generate right after an edit, before its plan was built: the run's worker checks the
            # geometry before the engine loads a model (never the GUI thread).
            device, check = request.device.split(":")[0].replace("auto", "cpu"), True
        self._start_run(request, self.panel.info, device, check)
        return True

    def _start_run(self, request: rq.GenerationRequest, info: ModelInfo, device: str, check: bool) -> None:
        spare = self.panel.spare_core.isChecked() and (os.cpu_count() or 1) > 1
        set_cpu_threads((os.cpu_count() or 2) - 1 if spare else None)
        self.last_error = None
        self.session.set_current(None)  # late pictures of earlier work are not shown over the run
        self.act_export.setEnabled(False)
        self.seams.clear("Generating…")
        self.runner.start(request, info, device, self.relief, check=check)

    def cancel(self) -> None:
        if self.upscaler.active:
            self.upscaler.cancel()  # no further pass; a picture being written is still written
            self.status_text.setText("Cancelling the upscale…")
        self.runner.cancel()

    def _state_changed(self, state: RunState) -> None:
        chain = self.upscaler.active  # between two passes no run is active, yet the chain is
        running = state.active or chain
        self.act_generate.setEnabled(not running)
        self.generate_button.setEnabled(not running)
        can_cancel = state is RunState.running or (chain and not state.active)
        self.act_cancel.setEnabled(can_cancel)
        self.cancel_button.setEnabled(can_cancel)
        self.panel.setEnabled(not running)
        self.canvas.regions.set_editable(not running)  # shown over the previews, not editable
        self._update_upscale_action()
        if not running:
            self.progress.setVisible(False)

    def _run_status(self, text: str) -> None:
        label = self.upscaler.label()
        self.status_text.setText(f"Upscale {label} · {text}" if label else text)

    def _progress(self, value: int, maximum: int) -> None:
        self.progress.setRange(0, maximum)
        self.progress.setValue(value)
        self.progress.setVisible(True)

    def _on_notice(self, message: str) -> None:
        log.info("notice: %s", message)
        self.statusBar().showMessage(message, 8000)

    def _on_finished(self, e: ev.Finished) -> None:
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
        token, relief = self.session.token, self.relief
        self.jobs.submit(lambda: _prepare_display(e.image, relief),
                         lambda out: self._displayed(token, relief, result, *out), self._job_failed)
        self.run_ended.emit("finished")
        self._close_if_waiting()

    def _displayed(self, token: int, relief: bool, result: Result, levels: list[np.ndarray],
                   thumb: np.ndarray) -> None:
        result.layer = Layer.from_levels(levels)
        self._keep(result, thumb)
        if not self.session.is_current(token):
            return  # the person moved on (another picture, a new run): it waits in History
        self.show_result(result)
        if relief != self.relief:  # relief toggled while the view was built
            self._set_relief(self.relief)
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

    # -- showing results ------------------------------------------------------------------------------

    def _keep(self, result: Result, thumb: np.ndarray) -> None:
        self.history.add(result, thumb)
        for dropped in self.session.add(result):
            self.history.refresh(dropped)
        self.upscaler.kept(result)  # an upscale pass's result: the next pass may start

    def show_result(self, result: Result) -> None:
        token = self.session.set_current(result)
        self.canvas.set_image(result.layer)
        self.canvas.set_plan(result.tiles)
        self.act_export.setEnabled(result.image is not None)
        if result.report is not None:
            self.seams.set_report(result.report, result.consensus)
            self.canvas.set_heatmap(result.heat)
            self._score_tiling(token, result)
        elif result.image is not None and result.tiles:
            self.seams.show_busy()
            image, tiles = result.image, result.tiles
            self.jobs.submit(lambda: _score(image, tiles), lambda out: self._scored(token, result, *out),
                             self._job_failed)
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

            self.jobs.submit(lambda: tiled_score(image, wrap).seam_ratio, scored, self._job_failed)

    def show_seam(self, seam: Seam) -> None:
        """Centre the worst point of ``seam`` at 100 %."""
        r = self.current
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

    def _set_relief(self, on: bool) -> None:
        self.relief = on
        self.prefs.set_flag("view/relief", on)
        r = self.current
        if r is not None and r.image is not None and r.image.ndim == 2:
            token, image = self.session.token, r.image
            self.jobs.submit(lambda: _prepare_display(image, on), lambda out: self._relayer(token, on, r, out[0]),
                             self._job_failed)

    def _relayer(self, token: int, on: bool, result: Result, levels: list[np.ndarray]) -> None:
        if not self.session.is_current(token) or on != self.relief:
            return  # another picture is shown, or relief was toggled again: a newer job follows
        result.layer = Layer.from_levels(levels)
        self.canvas.set_image(result.layer)
        self.canvas.set_plan(result.tiles)
        self.canvas.set_heatmap(result.heat)

    def _set_show_control(self, on: bool) -> None:
        self.canvas.set_show_control(on)
        self._follow_control()

    def _follow_control(self) -> None:
        # The first ControlNet's image, read on a worker (the panel changes on every keystroke;
        # the file is read again only when its path does).
        if not self.act_control.isChecked():
            return
        path = next((c.image for c in self.panel.values().controlnets if c.image), None)
        if path == self._control_path:
            return
        self._control_path = path
        if path is None:
            self.canvas.set_control(None)
            return

        def shown(rgb: np.ndarray | None) -> None:
            if path == self._control_path:  # not overtaken by another path meanwhile
                self.canvas.set_control(None if rgb is None else qimage(rgb).copy())

        self.jobs.submit(lambda: _read_control(path), shown, lambda _exc: shown(None))

    def _set_tiled(self, on: bool) -> None:
        self.canvas.set_tiled(on)
        self.prefs.set_flag("view/tiled", on)

    def _zoom_changed(self) -> None:
        self.zoom_label.setText(f"{self.canvas.device_scale() * 100:.0f} %")

    # -- files ----------------------------------------------------------------------------------------------

    def open_image(self, path: str, autosave: str | None = None) -> None:
        """Load ``path`` off the GUI thread and inspect it (plan from its metadata, or from the
        tile editor when it has none)."""
        self.files.open_image(path, autosave)

    def _display_opened(self, result: Result, source: str) -> None:
        relief = self.relief
        self.jobs.submit(lambda: _prepare_display(result.image, relief),
                         lambda out: self._opened(result, source, *out), self._job_failed)

    def _opened(self, result: Result, source: str, levels: list[np.ndarray], thumb: np.ndarray) -> None:
        result.layer = Layer.from_levels(levels)
        self._keep(result, thumb)
        if self.runner.active:
            return  # not over a running generation's previews: it waits in History
        self.show_result(result)
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

    def _update_upscale_action(self) -> None:
        r = self.current
        busy = self.runner.active or self.upscaler.active
        self.act_upscale.setEnabled(not busy and r is not None and (r.image is not None or bool(r.path)))

    def upscale_dialog(self) -> UpscaleDialog | None:
        """Ask for the scale, strength and output of an upscale of the current picture (not blocking)."""
        r = self.current
        if r is None or r.layer is None:
            return None
        box = UpscaleDialog(self, r.title, (r.layer.width, r.layer.height), lambda k: default_output(r, k))
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.chosen.connect(lambda scale, strength, output: self.upscale(scale, strength, output))
        box.open()
        self.upscale_box = box
        return box

    def upscale(self, scale: int, strength: float | None = None, output: str | None = None) -> bool:
        """Upscale the current picture by ``scale`` (2, 4, 8) in ×2 passes, each run like Generate
        and written (``output`` is the last pass's file) before the next; False, with the reason
        shown, if it cannot start. ``upscale_ended`` says how it ended."""
        r = self.current
        if self.runner.active or self.upscaler.active:
            return False
        if r is None or (r.image is None and not r.path):
            self.show_error("Nothing to upscale", "generate or open a picture first")
            return False
        if isinstance(scale, bool) or scale not in SCALES:
            self.show_error("Cannot upscale", f"scale: must be 2, 4 or 8; got {scale!r}")
            return False
        # The picture's own recipe; a picture without one takes the panel's model and prompt.
        base = r.request
        if base is None:
            with contextlib.suppress(rq.RequestError):
                base = self.panel.request()
        self.upscaler.start(r, scale, strength, Path(output) if output else default_output(r, scale), base)
        self.last_error = None
        self.status_text.setText(f"Preparing the ×{scale} upscale…")
        self._state_changed(self.runner.state)
        return True

    def _start_pass(self, request: rq.GenerationRequest, info: ModelInfo) -> bool:
        self._start_run(request, info, request.device.split(":")[0].replace("auto", "cpu"), check=True)
        return True

    def _upscale_ended(self, outcome: str, message: str) -> None:
        self.progress.setFormat("%p%")
        self._state_changed(self.runner.state)
        if outcome == "failed" and message:
            self.show_error("The upscale failed", message)
        elif message:
            self.status_text.setText(message)
            self.statusBar().showMessage(message, 15000)  # the last pass's own status follows it
        self.upscale_ended.emit(outcome)

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

    def _open_logs(self) -> None:
        from .logs import log_dir

        QDesktopServices.openUrl(QUrl.fromLocalFile(str(log_dir())))

    def _about(self) -> None:
        from .. import __version__

        QMessageBox.about(self, "About Paradiff",
                          f"<b>Paradiff {__version__}</b><p>Synchronized tiled diffusion for very large images.</p>")

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
