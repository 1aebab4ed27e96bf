"""The main window: generation panel, canvas, seam inspector, history, menus and status bar.

It owns the run's life cycle: panel → request → bridge (worker thread) → events → canvas and
status bar; finished pictures become ``Result``s whose display pyramid, seam scores and
heatmap are computed on a background thread, so the event loop never waits on pixels.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QByteArray, QObject, QPointF, QSettings, Qt, QUrl, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDesktopServices, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
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

from ..engine.analysis.seams import Seam, analyse, heatmap
from ..engine.core import events as ev
from ..engine.core import request as rq
from ..engine.core.modelinfo import ModelInfo
from ..engine.models.info import describe_model
from ..engine.runtime.devices import set_cpu_threads
from ..engine.runtime.estimate import estimate
from .bridge import Engine, EngineBridge
from .imaging import Layer, heat_rgba, pyramid, to_display
from .jobs import Jobs, StallMonitor
from .widgets.canvas import CanvasWidget, SeamMark
from .widgets.inspector import HistoryPanel, Result, SeamPanel
from .widgets.panel import GenerationPanel

log = logging.getLogger(__name__)

HISTORY_BYTES = 3 << 30  # full-resolution pictures kept in memory; older ones keep their thumbnail
IMAGE_FILTER = "Images (*.png *.tif *.tiff *.webp *.jpg *.jpeg)"
EXPORT_FILTERS = ("PNG (*.png)", "TIFF (*.tif *.tiff)", "WebP (*.webp)", "JPEG (*.jpg *.jpeg)")


def fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _resolved_device(name: str) -> str:
    if name != "auto":
        return name.split(":")[0]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _prepare_display(image: np.ndarray, relief: bool) -> tuple[list[np.ndarray], np.ndarray]:
    levels = pyramid(to_display(image, relief))
    return levels, levels[-1]


def _score(image: np.ndarray, tiles: list[tuple[int, int, int, int]]) -> tuple[Any, list[np.ndarray], np.ndarray]:
    report = analyse(image, tiles)
    heat = heatmap(image, tiles)
    return report, pyramid(heat_rgba(heat)), heat


class MainWindow(QMainWindow):
    """The Paradiff desktop app. ``engine`` is for tests (a scriptable fake); ``settings`` lets
    tests keep their own QSettings file."""

    run_ended = Signal(str)  # "finished" | "cancelled" | "failed"
    result_ready = Signal(object)  # Result, once shown (pyramid built)
    scored = Signal(object)  # Result, once its seams are scored
    exported = Signal(str)  # path
    autosaved = Signal(str)  # path
    export_failed = Signal(str)  # message

    def __init__(self, engine: Engine | None = None, settings: QSettings | None = None,
                 interactive: bool = True, autosave_dir: Path | None = None) -> None:
        super().__init__()
        from platformdirs import user_data_path

        # Every finished picture is written here (with its recipe) the moment it arrives, and
        # removed once exported: what is left at the next start is offered back.
        self.autosave_dir = Path(autosave_dir or user_data_path("paradiff", appauthor=False) / "autosave")
        self.recoverable = sorted(self.autosave_dir.glob("*.png")) if self.autosave_dir.is_dir() else []
        self.recover_box: QMessageBox | None = None
        self.setWindowTitle("Paradiff")
        self.setAcceptDrops(True)
        self.settings = settings or QSettings()
        self.interactive = interactive  # False in scripted mode: errors go to stderr, not dialogs
        self.bridge = EngineBridge(engine, self)
        self.jobs = Jobs(self)
        self.stall = StallMonitor(parent=self)
        self.canvas = CanvasWidget()
        self.setCentralWidget(self.canvas)
        self.panel = GenerationPanel()
        self.seams = SeamPanel()
        self.history = HistoryPanel()
        self.current: Result | None = None
        self.last_error: str | None = None
        self.error_box: QMessageBox | None = None
        self.stats: dict[str, Any] = {}
        self._run: dict[str, Any] = {}
        self._relief = False
        self._build_docks()
        self._build_actions()
        self._build_status()
        self._connect()
        self._restore()
        self._update_plan()
        if self.recoverable and interactive:
            self._offer_recovery()

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
        self.act_open = self._action("&Open image…", self.open_image_dialog, QKeySequence.StandardKey.Open,
                                     sp.SP_DialogOpenButton, "Open an image to inspect its seams")
        self.act_open_request = self._action("Open &request…", self.open_request_dialog, "Ctrl+Shift+O",
                                             tip="Load settings from a request .json or a Paradiff image")
        self.act_save_request = self._action("&Save request…", self.save_request_dialog, "Ctrl+Shift+S",
                                             tip="Save the current settings as a .json request")
        self.act_export = self._action("&Export…", self.export_dialog, "Ctrl+E", sp.SP_DialogSaveButton,
                                       "Export the picture (PNG, TIFF, WebP, JPEG) with its recipe")
        self.act_export.setEnabled(False)
        self.act_quit = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.act_fit = self._action("&Fit", self.canvas.fit, "Ctrl+0", tip="Fit the picture in the window (Ctrl+0)")
        self.act_actual = self._action("&100 %", self.canvas.actual_size, "Ctrl+1",
                                       tip="One image pixel per screen pixel (Ctrl+1)")
        self.act_zoom_in = self._action("Zoom &in", lambda: self.canvas.zoom_by(1.25), QKeySequence.StandardKey.ZoomIn)
        self.act_zoom_out = self._action("Zoom &out", lambda: self.canvas.zoom_by(0.8),
                                         QKeySequence.StandardKey.ZoomOut)
        self.act_relief = self._action("Shaded &relief", self._set_relief, "Ctrl+R", checkable=True,
                                       tip="Show heightmaps as shaded relief instead of gray levels")
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
        m = mb.addMenu("&Generate")
        m.addAction(self.act_generate)
        m.addAction(self.act_cancel)
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
        for a in (self.act_open, self.act_export):
            tb.addAction(a)
        tb.addSeparator()
        for a in (self.act_fit, self.act_actual):
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
        b = self.bridge
        b.planned.connect(self._on_planned)
        b.notice.connect(self._on_notice)
        b.step_started.connect(self._on_step_started)
        b.batch_started.connect(lambda e: self.canvas.set_in_flight(e.tiles))
        b.previews.connect(self._on_previews)
        b.step_finished.connect(self._on_step_finished)
        b.decoding.connect(self._on_decoding)
        b.finished.connect(self._on_finished)
        b.cancelled.connect(self._on_cancelled)
        b.failed.connect(self._on_failed)
        b.running_changed.connect(self._running_changed)
        self.generate_button.clicked.connect(self.generate)
        self.cancel_button.clicked.connect(self.cancel)
        self.panel.changed.connect(self._update_plan)
        self.seams.overlays_changed.connect(
            lambda b_, o, h: self.canvas.set_overlays(borders=b_, overlaps=o, heatmap=h))
        self.seams.seam_chosen.connect(self.show_seam)
        self.history.chosen.connect(self.show_result)
        self.history.reuse.connect(lambda r: self.panel.set_request(r.request))
        self.canvas.view_changed.connect(self._zoom_changed)

    # -- settings -----------------------------------------------------------------------------------

    def _restore(self) -> None:
        s = self.settings
        geometry = s.value("window/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        else:
            self.resize(1400, 900)
        state = s.value("window/state")
        if isinstance(state, QByteArray):
            self.restoreState(state)
        added = [m for m in s.value("models/added", []) or [] if isinstance(m, str) and Path(m).exists()]
        self.panel.refresh_models(added)  # the scan runs off the GUI thread
        text = s.value("request/last")
        if isinstance(text, str):
            try:
                self.panel.set_request(rq.GenerationRequest.from_json(text),
                                       lock_seed=s.value("request/seed_locked", False, type=bool))
            except rq.RequestError as exc:
                log.warning("saved settings ignored: %s", exc)
        self.seams.borders.setChecked(s.value("view/borders", True, type=bool))
        self.seams.overlaps.setChecked(s.value("view/overlaps", False, type=bool))
        self.seams.heatmap.setChecked(s.value("view/heatmap", False, type=bool))
        self.panel.spare_core.setChecked(s.value("performance/spare_core", False, type=bool))

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.setValue("models/added", self.panel.added_models())
        with contextlib.suppress(rq.RequestError):  # an invalid form is not worth restoring
            s.setValue("request/last", self.panel.request().to_json(indent=None))
        s.setValue("request/seed_locked", self.panel.seed_lock.isChecked())
        s.setValue("view/borders", self.seams.borders.isChecked())
        s.setValue("view/overlaps", self.seams.overlaps.isChecked())
        s.setValue("view/heatmap", self.seams.heatmap.isChecked())
        s.setValue("performance/spare_core", self.panel.spare_core.isChecked())
        s.sync()

    def _speed_key(self, model: str, device: str) -> str:
        return f"speed/{model.replace('/', '|')}/{device}"

    def seconds_per_view(self, model: str, device: str) -> float | None:
        v = self.settings.value(self._speed_key(model, device))
        try:
            return float(v) if v is not None else None
        except (TypeError, ValueError):
            return None

    # -- plan preview -----------------------------------------------------------------------------

    def _update_plan(self) -> None:
        if self.bridge.running:
            return
        try:
            request = self.panel.request()
            info = self.panel.info
            plan = info.plan(request)
        except rq.RequestError as exc:
            self.panel.plan_info.setText(f"<span style='color:#e5534b'>{exc}</span>")
            self.act_generate.setEnabled(True)  # Generate explains the problem in a dialog
            return
        self.panel.show_plan(plan)
        device = _resolved_device(request.device)
        est = estimate(request, info, self.seconds_per_view(info.id, device), device)
        rows_overlap, cols_overlap = plan.actual_overlap  # latent px, None along a single-tile axis
        overlaps = " · ".join(f"{axis} {o * plan.scale}" for axis, o in (("x", cols_overlap), ("y", rows_overlap))
                              if o is not None) or "none"
        time_text = f"≈ {fmt_seconds(est.seconds)}" if est.seconds is not None else "time known after a first run"
        mem = f"≈ {fmt_bytes(est.canvas_bytes)} canvas"
        if est.weight_bytes:
            mem += f" + {fmt_bytes(est.weight_bytes)} weights"
        if device == "cuda":
            mem = self._gpu_memory_text(request, info)
        self.panel.plan_info.setText(
            f"<b>{len(plan)} tiles</b> ({plan.rows}×{plan.cols} of {plan.tile_w * plan.scale}×"
            f"{plan.tile_h * plan.scale} px) · overlap {overlaps} px<br>"
            f"overhead {plan.overhead:.2f}× · {est.total_views} model calls<br>{time_text} · {mem}")
        self.panel.plan_info.setToolTip(
            "Overhead: tile pixels computed per canvas pixel. Time comes from your last run of this model on "
            "this device (or a built-in figure); memory counts the canvas buffers and weights, not activations.")
        if self.current is None or (request.width, request.height) != (self.canvas.image_w, self.canvas.image_h):
            if self.current is not None:
                self.current = None
                self.act_export.setEnabled(False)
                self.seams.clear("The size changed: the plan is drawn on an empty canvas.")
            self.canvas.set_canvas_size(request.width, request.height)
        self.canvas.set_plan([plan.image_rect(t) for t in plan.tiles])

    def _gpu_memory_text(self, request: rq.GenerationRequest, info: ModelInfo) -> str:
        import torch

        from ..engine.runtime import memory

        fp = memory.footprint(request, info, "fp32" if request.dtype == "fp32" else "fp16")
        free = torch.cuda.mem_get_info()[0]
        try:
            batch = memory.choose_tile_batch(fp, free, "cuda") if request.tile_batch == "auto" else \
                int(request.tile_batch)
        except rq.RequestError as exc:
            return f"<span style='color:#e5534b'>{exc}</span>"
        colour = "" if fp.peak(batch) <= free * memory.MARGIN else " style='color:#e5534b'"
        return f"<span{colour}>GPU {fp.describe(batch)}, {fmt_bytes(free)} free</span>"

    # -- a run ------------------------------------------------------------------------------------------

    def generate(self) -> bool:
        """Start a run from the panel; False (with the reason shown) if it cannot start."""
        if self.bridge.running:
            return False
        self.panel.prepare_run()
        try:
            request = self.panel.request()
            self.panel.info.plan(request)  # geometry errors now, not after loading a model
        except rq.RequestError as exc:
            self.show_error("This request cannot run", str(exc))
            return False
        spare = self.panel.spare_core.isChecked() and (os.cpu_count() or 1) > 1
        set_cpu_threads((os.cpu_count() or 2) - 1 if spare else None)
        self.last_error = None
        self.current = None
        self.act_export.setEnabled(False)
        self.canvas.set_canvas_size(request.width, request.height)
        self.canvas.start_previews()
        self.seams.clear("Generating…")
        self._run = {"request": request, "started": time.perf_counter(), "step_times": [], "total": 0,
                     "device": _resolved_device(request.device), "views": 0, "consensus": None}
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.status_text.setText("Loading the model…")
        self.step_label.clear()
        self.memory_label.clear()
        self.stall.start()
        self.bridge.start(request)
        return True

    def cancel(self) -> None:
        if self.bridge.running:
            self.bridge.cancel()
            self.status_text.setText("Cancelling after the current tile batch…")

    def _running_changed(self, running: bool) -> None:
        self.act_generate.setEnabled(not running)
        self.generate_button.setEnabled(not running)
        self.act_cancel.setEnabled(running)
        self.cancel_button.setEnabled(running)
        self.panel.setEnabled(not running)
        if not running:
            self.progress.setVisible(False)

    def _on_planned(self, e: ev.Planned) -> None:
        self._run.update(total=e.total_steps, plan=e.plan, device=e.device.split(":")[0], dtype=e.dtype)
        cfg = 2 if self.panel.info.text and self.panel.info.guidance and e.request.guidance > 1 else 1
        self._run["views"] = len(e.plan) * cfg
        self.canvas.set_plan([e.plan.image_rect(t) for t in e.plan.tiles], e.total_steps)
        self.progress.setRange(0, e.total_steps)
        self.progress.setValue(0)
        self.status_text.setText(f"{len(e.plan)} tiles on {e.device} ({e.dtype})")

    def _on_notice(self, message: str) -> None:
        log.info("notice: %s", message)
        self.statusBar().showMessage(message, 8000)

    def _on_step_started(self, e: ev.StepStarted) -> None:
        if e.plan is not self._run.get("plan"):
            self._run["plan"] = e.plan
            self.canvas.set_plan([e.plan.image_rect(t) for t in e.plan.tiles], e.total)
        self.status_text.setText(f"Step {e.step + 1} of {e.total}")

    def _on_previews(self, previews: list) -> None:
        self.canvas.add_previews(previews)

    def _on_step_finished(self, e: ev.StepFinished) -> None:
        times = self._run.setdefault("step_times", [])
        times.append(e.seconds)
        if e.consensus is not None:
            self._run["consensus"] = e.consensus
        mean = sum(times) / len(times)
        left = max(0, e.total - e.step - 1)
        self.progress.setValue(e.step + 1)
        self.step_label.setText(f"{e.seconds:.2f} s/step · ETA {fmt_seconds(left * mean)}")
        if e.device_memory is not None:
            self.memory_label.setText(f"GPU {fmt_bytes(e.device_memory)}")

    def _on_decoding(self, done: int, total: int) -> None:
        self.status_text.setText(f"Decoding {done}/{total}")
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)

    def _remember_speed(self) -> None:
        times, views = self._run.get("step_times") or [], self._run.get("views") or 0
        if len(times) >= 2 and views:
            # The first step carries warm-up; the median of the rest is the steady speed.
            per_view = float(np.median(times[1:])) / views
            req = self._run["request"]
            self.settings.setValue(self._speed_key(req.model, self._run["device"]), per_view)

    def _on_finished(self, e: ev.Finished) -> None:
        self._remember_speed()
        times = self._run.get("step_times") or []
        self.step_label.setText(f"{len(times)} steps · {np.mean(times):.2f} s/step" if times else "")
        title = f"{e.request.width}×{e.request.height} · seed {e.request.seed}"
        result = Result(e.image, e.request, [e.plan.image_rect(t) for t in e.plan.tiles], title,
                        e.seconds, dict(e.info), e.plan, consensus=self._run.get("consensus"))
        self._autosave(result)
        self.status_text.setText(f"Done in {fmt_seconds(e.seconds)}, preparing the view…")
        self._finish_stats("finished", e.seconds)
        self.jobs.submit(lambda: _prepare_display(e.image, self._relief),
                         lambda out: self._displayed(result, *out), self._job_failed)
        self.run_ended.emit("finished")

    def _autosave(self, result: Result) -> None:
        """Write the finished picture and its recipe to the autosave folder, off the GUI thread."""
        from ..engine.io.metadata import save_png

        self.autosave_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-seed{result.request.seed}"
        path = self.autosave_dir / f"{stem}.png"
        n = 1
        while path.exists():
            n += 1
            path = self.autosave_dir / f"{stem}-{n}.png"
        image, request, plan, info = result.image, result.request, result.plan, result.info
        result.autosave = str(path)

        def failed(exc: BaseException) -> None:
            result.autosave = None
            log.error("autosave failed", exc_info=exc)
            self.statusBar().showMessage(f"Could not autosave ({_message(exc)}); export the picture to keep it",
                                         15000)

        self.jobs.submit(lambda: save_png(path, image, request, plan, info),
                         lambda _p: self.autosaved.emit(str(path)), failed)

    def _offer_recovery(self) -> None:
        n = len(self.recoverable)
        box = QMessageBox(QMessageBox.Icon.Question, "Recover pictures",
                          f"{n} finished picture{'s' if n > 1 else ''} from an earlier session "
                          f"{'were' if n > 1 else 'was'} never exported. Open {'them' if n > 1 else 'it'}?",
                          QMessageBox.StandardButton.Open | QMessageBox.StandardButton.Discard
                          | QMessageBox.StandardButton.Ignore, self)
        box.setObjectName("recover_box")
        box.setInformativeText(f"They are kept in {self.autosave_dir} until you export or discard them. "
                               "Ignore asks again next time.")
        box.button(QMessageBox.StandardButton.Ignore).setText("Later")
        box.setWindowModality(Qt.WindowModality.WindowModal)
        choices = {QMessageBox.StandardButton.Open: "open", QMessageBox.StandardButton.Discard: "discard"}
        box.buttonClicked.connect(lambda button: self.recover(choices.get(box.standardButton(button), "later")))
        box.open()
        self.recover_box = box

    def recover(self, choice: str) -> None:
        """``open`` the earlier session's autosaved pictures into History, ``discard`` them, or
        leave them for ``later``."""
        files, self.recoverable = self.recoverable, []
        if choice == "open":
            for path in files:
                self.open_image(str(path), autosave=str(path))
        elif choice == "discard":
            for path in files:
                path.unlink(missing_ok=True)
        else:
            self.recoverable = files

    def _displayed(self, result: Result, levels: list[np.ndarray], thumb: np.ndarray) -> None:
        result.layer = Layer.from_levels(levels)
        self.history.add(result, thumb)
        self._trim_history()
        self.show_result(result)
        if self.stall.active:
            self.stall.stop()
            self.stats["stall_ms_max"] = round(self.stall.worst_ms, 1)
        self.status_text.setText(f"{result.title} · {fmt_seconds(result.seconds or 0)}")
        self.result_ready.emit(result)

    def _on_cancelled(self, e: ev.Cancelled) -> None:
        waited = time.perf_counter() - (self.bridge.cancel_requested_at or time.perf_counter())
        self._finish_stats("cancelled", None)
        self.stats["cancel_latency_s"] = round(waited, 3)
        self.stall.stop()
        self.canvas.set_in_flight(())
        self.status_text.setText(f"Cancelled at step {e.step + 1}; nothing was written")
        self.run_ended.emit("cancelled")

    def _on_failed(self, e: ev.Failed) -> None:
        self._finish_stats("failed", None)
        self.stall.stop()
        self.canvas.set_in_flight(())
        self.status_text.setText("Failed")
        title = {"request": "This request cannot run", "model": "The model is not available"}.get(
            e.kind, "The generation failed")
        self.show_error(title, e.message)
        self.run_ended.emit("failed")

    def _finish_stats(self, outcome: str, seconds: float | None) -> None:
        b = self.bridge
        elapsed = time.perf_counter() - self._run.get("started", time.perf_counter())
        self.stats = {
            "outcome": outcome,
            "seconds": round(seconds if seconds is not None else elapsed, 3),
            "preview_signals": b.preview_flushes,
            "previews": b.preview_count,
            "preview_rate_hz": round(b.preview_flushes / elapsed, 2) if elapsed > 0 else 0.0,
            "stall_ms_max": round(self.stall.worst_ms, 1),
            "paint_ms_last": round(self.canvas.last_paint_ms, 2),
        }

    # -- showing results ------------------------------------------------------------------------------

    def show_result(self, result: Result) -> None:
        self.current = result
        self.canvas.set_image(result.layer)
        self.canvas.set_plan(result.tiles)
        self.act_export.setEnabled(result.image is not None)
        if result.report is not None:
            self.seams.set_report(result.report, result.consensus)
            self.canvas.set_heatmap(result.heat)
        elif result.image is not None and result.tiles:
            self.seams.show_busy()
            image, tiles = result.image, result.tiles
            self.jobs.submit(lambda: _score(image, tiles), lambda out: self._scored(result, *out), self._job_failed)
        else:
            self.seams.clear("No tile plan for this picture.")

    def _scored(self, result: Result, report: Any, heat_levels: list[np.ndarray], heat: np.ndarray) -> None:
        result.report = report
        result.heat = Layer.from_levels(heat_levels, alpha=True)
        result.heat_map = heat
        if self.current is result:
            self.seams.set_report(report, result.consensus)
            self.canvas.set_heatmap(result.heat)
        self.scored.emit(result)

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

    def _trim_history(self) -> None:
        # Full pictures are big (an 8K RGB is 192 MiB): keep the newest within HISTORY_BYTES.
        total = 0
        for r in reversed(self.history.results):
            total += r.nbytes
            if total > HISTORY_BYTES and r is not self.current and r.image is not None:
                total -= r.nbytes
                r.image = None
                r.title += " (not in memory)"
                self.history.refresh(r)

    def _set_relief(self, on: bool) -> None:
        self._relief = on
        r = self.current
        if r is not None and r.image is not None and r.image.ndim == 2:
            self.jobs.submit(lambda: _prepare_display(r.image, on), lambda out: self._relayer(r, out[0]),
                             self._job_failed)

    def _relayer(self, result: Result, levels: list[np.ndarray]) -> None:
        result.layer = Layer.from_levels(levels)
        if self.current is result:
            self.canvas.set_image(result.layer)
            self.canvas.set_plan(result.tiles)
            self.canvas.set_heatmap(result.heat)

    def _zoom_changed(self) -> None:
        self.zoom_label.setText(f"{self.canvas.device_scale() * 100:.0f} %")

    # -- files ----------------------------------------------------------------------------------------------

    def open_image_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open an image", "", IMAGE_FILTER)
        if path:
            self.open_image(path)

    def open_image(self, path: str, autosave: str | None = None) -> None:
        """Load ``path`` off the GUI thread and inspect it (plan from its metadata, or from the
        tile editor when it has none)."""
        self.status_text.setText(f"Opening {Path(path).name}…")
        fallback = self._editor_plan_tiles

        def load() -> tuple[np.ndarray, Any, list, str]:
            from ..engine.io.export import open_image
            from ..engine.io.metadata import read_recipe

            image = open_image(path)
            try:
                recipe = read_recipe(path)
                request = rq.GenerationRequest.from_dict(recipe["request"])
                tiles = [tuple(int(v) for v in t) for t in recipe["plan"]["tiles"]]
                source = "its Paradiff metadata"
            except (rq.RequestError, KeyError, TypeError, ValueError):
                request, tiles, source = None, None, "the tile editor (the image has no Paradiff metadata)"
            return image, request, tiles, source

        def loaded(out: tuple) -> None:
            image, request, tiles, source = out
            if tiles is None:
                tiles = fallback(image.shape[1], image.shape[0])
            result = Result(image, request, tiles or [], Path(path).name, path=path, autosave=autosave)
            self.jobs.submit(lambda: _prepare_display(image, self._relief),
                             lambda lv: self._opened(result, source, *lv), self._job_failed)

        self.jobs.submit(load, loaded, lambda exc: self.show_error("Cannot open the image", _message(exc)))

    def _opened(self, result: Result, source: str, levels: list[np.ndarray], thumb: np.ndarray) -> None:
        result.layer = Layer.from_levels(levels)
        self.history.add(result, thumb)
        self.show_result(result)
        h, w = result.image.shape[:2]
        self.status_text.setText(f"{result.title}: {w}×{h}; tile plan from {source}")
        self.result_ready.emit(result)

    def _editor_plan_tiles(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        plan = self.panel.editor_plan(width, height)
        return [] if plan is None else [plan.image_rect(t) for t in plan.tiles]

    def open_request_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a request", "",
                                              "Requests and Paradiff images (*.json *.png *.tif *.tiff *.webp *.jpg)")
        if path:
            self.load_request(path)

    def load_request(self, path: str) -> bool:
        from ..engine.io.metadata import load_request

        try:
            request = load_request(path)
        except rq.RequestError as exc:
            self.show_error("Cannot load the request", str(exc))
            return False
        self.panel.set_request(request)
        self.status_text.setText(f"Settings loaded from {Path(path).name}")
        return True

    def save_request_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the request", "paradiff-request.json", "Request (*.json)")
        if path:
            self.save_request(path)

    def save_request(self, path: str) -> bool:
        from ..engine.io.metadata import save_request

        try:
            save_request(path, self.panel.request())
        except rq.RequestError as exc:
            self.show_error("This request cannot be saved", str(exc))
            return False
        except OSError as exc:
            self.show_error("Cannot save the request", f"{path}: {exc.strerror or exc}")
            return False
        self.status_text.setText(f"Request saved to {path}")
        return True

    def export_dialog(self) -> None:
        r = self.current
        if r is None or r.image is None:
            return
        stem = f"paradiff-{r.request.seed}" if r.request is not None else Path(r.title).stem
        path, _ = QFileDialog.getSaveFileName(self, "Export", f"{stem}.png", ";;".join(EXPORT_FILTERS))
        if path:
            self.export(path)

    def export(self, path: str, quality: int = 95) -> None:
        """Write the current picture to ``path`` (format from the extension) off the GUI thread."""
        from ..engine.io.export import format_for, save_image

        r = self.current
        if r is None or r.image is None:
            self.show_error("Nothing to export", "generate or open a picture first")
            return
        try:
            fmt = format_for(path)
        except rq.RequestError as exc:
            self.show_error("Cannot export", str(exc))
            return
        if r.image.ndim == 2 and r.image.dtype == np.uint16 and fmt in ("jpeg", "webp"):
            self.statusBar().showMessage(f"{fmt.upper()} holds 8 bits: the heightmap is stretched to 256 levels. "
                                         "Use PNG or TIFF to keep 16 bits.", 10000)
        image, request, plan, info = r.image, r.request, r.plan, r.info
        if request is not None and plan is None:
            plan = describe_model(request.model).plan(request)
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.status_text.setText(f"Exporting {Path(path).name}…")
        progress = _ExportProgress(self)

        def write() -> str:
            if request is None:
                from ..engine.io.export import save_plain

                return str(save_plain(path, image, fmt=fmt, quality=quality, on_progress=progress.report))
            return str(save_image(path, image, request, plan, info, fmt=fmt, quality=quality,
                                  on_progress=progress.report))

        def done(written: str) -> None:
            progress.deleteLater()
            self.progress.setVisible(False)
            r.path = written
            if r.autosave:  # exported: the autosaved copy has done its job
                Path(r.autosave).unlink(missing_ok=True)
                r.autosave = None
            self.status_text.setText(f"Exported {written}")
            self.exported.emit(written)

        def failed(exc: BaseException) -> None:
            progress.deleteLater()
            self.progress.setVisible(False)
            self.status_text.setText("Export failed; the picture is still here")
            self.show_error("Export failed", _message(exc) + "\nThe picture is kept: export it elsewhere.")
            self.export_failed.emit(_message(exc))

        self.jobs.submit(write, done, failed)

    # -- drag and drop -------------------------------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile() and Path(urls[0].toLocalFile()).suffix.lower() in (
                ".png", ".json", ".tif", ".tiff", ".webp", ".jpg", ".jpeg"):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        path = event.mimeData().urls()[0].toLocalFile()
        event.acceptProposedAction()
        self.drop_file(path)

    def drop_file(self, path: str) -> None:
        """A dropped request or Paradiff image restores its settings; an image is also opened."""
        from ..engine.io.metadata import load_request

        try:
            request = load_request(path)
        except rq.RequestError as exc:
            request = None
            if Path(path).suffix.lower() == ".json":
                self.show_error("Cannot load the request", str(exc))
                return
        if request is not None:
            self.panel.set_request(request)
        if Path(path).suffix.lower() != ".json":
            self.open_image(path)

    # -- errors, help, closing ---------------------------------------------------------------------------

    def show_error(self, title: str, message: str) -> None:
        """The engine's message in plain words; details go to the log file."""
        self.last_error = message
        log.error("%s: %s", title, message)
        self.status_text.setText(title)
        if not self.interactive:
            return
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
        box.setObjectName("error_box")
        box.setInformativeText("Details are in the log (Help → Open the log folder).")
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.open()  # not exec(): the event loop (and a running generation) keep going
        self.error_box = box

    def _job_failed(self, exc: BaseException) -> None:
        log.error("background job failed", exc_info=exc)
        self.show_error("Something went wrong", _message(exc))

    def _open_logs(self) -> None:
        from .logs import log_dir

        QDesktopServices.openUrl(QUrl.fromLocalFile(str(log_dir())))

    def _about(self) -> None:
        from .. import __version__

        QMessageBox.about(self, "About Paradiff",
                          f"<b>Paradiff {__version__}</b><p>Synchronized tiled diffusion for very large images.</p>")

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.bridge.running:
            self.bridge.cancel()
            self.bridge.wait(60000)
        self.save_settings()
        self.jobs.shutdown()
        super().closeEvent(event)


class _ExportProgress(QObject):
    """Carries byte counts from the export thread to the status bar (a queued signal)."""

    written = Signal(int)

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.written.connect(lambda n: window.status_text.setText(f"Exporting… {fmt_bytes(n)} written"))

    def report(self, n: int) -> None:
        self.written.emit(n)


def _message(exc: BaseException) -> str:
    if isinstance(exc, rq.RequestError):
        return str(exc)
    if isinstance(exc, OSError):
        name = f"{exc.filename}: " if exc.filename else ""
        return f"{name}{exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


__all__ = ["MainWindow", "ModelInfo"]
