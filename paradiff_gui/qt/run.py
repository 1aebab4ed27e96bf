"""The run controller: one generation's life from Generate to its end.

It owns the :class:`EngineBridge` (the worker thread), the run's state, its figures (step
times, preview rate, stalls, cancel latency) and the speed learnt from it, and routes the live
previews to the canvas. It says what is happening through signals; the window turns them into
buttons, status text and dialogs.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from ..engine.core import events as ev
from ..engine.core.cancel import CancelToken
from ..engine.core.modelinfo import ModelInfo
from ..engine.core.request import GenerationRequest, RequestError
from .bridge import Engine, EngineBridge
from .imaging import relief_preview
from .jobs import StallMonitor
from .plan_summary import fmt_bytes, fmt_seconds
from .settings import AppSettings
from .widgets.canvas import CanvasWidget


def _checked(engine: Engine, info: ModelInfo) -> Engine:
    def run(request: GenerationRequest, on_event: Callable[[Any], None], cancel: CancelToken, **extra: Any) -> Any:
        try:
            info.plan(request)
        except RequestError as exc:
            on_event(ev.Failed(str(exc), "request"))
            raise
        return engine(request, on_event, cancel, **extra)

    return run


def _shifted(then: Any, dx: int, dy: int) -> Any:
    """A preview filter moving each tile preview by (dx, dy) image px (after ``then``), on the worker."""
    def shift(p: ev.TilePreview) -> ev.TilePreview:
        p = then(p) if then is not None else p
        x0, y0, x1, y1 = p.rect
        return replace(p, rect=(x0 + dx, y0 + dy, x1 + dx, y1 + dy))

    return shift


class RunState(enum.Enum):
    idle = "idle"  # nothing has run yet
    running = "running"
    cancelling = "cancelling"  # asked to stop; the engine stops after its current tile batch
    finished = "finished"
    cancelled = "cancelled"
    failed = "failed"

    @property
    def active(self) -> bool:
        return self in (RunState.running, RunState.cancelling)


class RunController(QObject):
    """Starts and cancels runs; ``ended`` comes once the worker thread is gone."""

    state_changed = Signal(object)  # RunState
    status = Signal(str)  # the status bar's main text
    progress = Signal(int, int)  # value, maximum (0 = busy, no steps known yet)
    step_text = Signal(str)
    memory_text = Signal(str)
    notice = Signal(str)
    finished = Signal(object)  # ev.Finished
    cancelled = Signal(object)  # ev.Cancelled
    failed = Signal(object)  # ev.Failed

    def __init__(self, engine: Engine | None, settings: AppSettings, canvas: CanvasWidget, stall: StallMonitor,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.bridge = EngineBridge(engine, self)
        self.engine = self.bridge.engine
        self.settings = settings
        self.canvas = canvas
        self.stall = stall
        self.state = RunState.idle
        self.stats: dict[str, Any] = {}
        self._run: dict[str, Any] = {}
        self.offset = (0, 0)  # image px: where the run's canvas sits on the picture shown
        b = self.bridge
        b.planned.connect(self._on_planned)
        b.notice.connect(self.notice)
        b.step_started.connect(self._on_step_started)
        b.batch_started.connect(lambda e: self.canvas.set_in_flight(e.tiles))
        b.previews.connect(self.canvas.add_previews)
        b.step_finished.connect(self._on_step_finished)
        b.decoding.connect(self._on_decoding)
        b.finished.connect(self._on_finished)
        b.cancelled.connect(self._on_cancelled)
        b.failed.connect(self._on_failed)

    @property
    def active(self) -> bool:
        return self.state.active

    @property
    def consensus(self) -> float | None:
        return self._run.get("consensus")

    def _set_state(self, state: RunState) -> None:
        self.state = state
        self.state_changed.emit(state)

    def start(self, request: GenerationRequest, info: ModelInfo, device: str, relief: bool,
              check: bool = False, place: tuple[int, int, int, int] | None = None, **extra: Any) -> None:
        """Run ``request``. ``device``: the device type it will likely run on (for the learnt
        speed; the engine's Planned event corrects it); ``relief``: show a heightmap model's
        previews as shaded relief; ``check``: lay out its plan on the worker first, so a request
        that cannot be tiled fails before the engine loads a model (seconds). ``place`` (x0, y0,
        width, height image px): the request is a part of a bigger picture (a refine's sub-canvas)
        whose previews and tiles show at that place on it; ``extra`` goes to the engine."""
        self.bridge.engine = _checked(self.engine, info) if check else self.engine
        shaded = relief_preview if relief and info.output == "height" else None
        self.offset = (0, 0) if place is None else place[:2]
        self.bridge.preview_filter = shaded if place is None else _shifted(shaded, *self.offset)
        self._run = {"request": request, "info": info, "started": time.perf_counter(), "step_times": [],
                     "total": 0, "device": device, "views": 0, "consensus": None}
        self.canvas.set_canvas_size(*((request.width, request.height) if place is None else place[2:]))
        self.canvas.start_previews()
        self.progress.emit(0, 0)
        self.status.emit("Loading the model…")
        self.step_text.emit("")
        self.memory_text.emit("")
        self.stall.start()
        self._set_state(RunState.running)
        self.bridge.start(request, **extra)

    def cancel(self) -> bool:
        """Ask the run to stop after its current tile batch; False if none runs."""
        if self.state is not RunState.running:
            return False
        self.bridge.cancel()
        self._set_state(RunState.cancelling)
        self.status.emit("Cancelling after the current tile batch…")
        return True

    # -- engine events --------------------------------------------------------------------------

    def _on_planned(self, e: ev.Planned) -> None:
        info: ModelInfo = self._run["info"]
        self._run.update(total=e.total_steps, plan=e.plan, device=e.device.split(":")[0], dtype=e.dtype)
        cfg = 2 if info.text and info.guidance and e.request.guidance > 1 else 1
        self._run["views"] = len(e.plan) * cfg
        self.canvas.set_plan(self._rects(e.plan), e.total_steps)
        self.progress.emit(0, e.total_steps)
        self.status.emit(f"{len(e.plan)} tiles on {e.device} ({e.dtype})")

    def _on_step_started(self, e: ev.StepStarted) -> None:
        if e.plan is not self._run.get("plan"):  # jitter: the grid moved
            self._run["plan"] = e.plan
            self.canvas.set_plan(self._rects(e.plan), e.total)
        if self.state is RunState.running:  # "Cancelling…" stays up until the run stops
            self.status.emit(f"Step {e.step + 1} of {e.total}")

    def _rects(self, plan: Any) -> list[tuple[int, int, int, int]]:
        dx, dy = self.offset
        return [(x0 + dx, y0 + dy, x1 + dx, y1 + dy) for x0, y0, x1, y1 in map(plan.image_rect, plan.tiles)]

    def _on_step_finished(self, e: ev.StepFinished) -> None:
        times = self._run["step_times"]
        times.append(e.seconds)
        if e.consensus is not None:
            self._run["consensus"] = e.consensus
        mean = sum(times) / len(times)
        left = max(0, e.total - e.step - 1)
        self.progress.emit(e.step + 1, e.total)
        self.step_text.emit(f"{e.seconds:.2f} s/step · ETA {fmt_seconds(left * mean)}")
        if e.device_memory is not None:
            self.memory_text.emit(f"GPU {fmt_bytes(e.device_memory)}")

    def _on_decoding(self, done: int, total: int) -> None:
        self.status.emit(f"Decoding {done}/{total}")
        self.progress.emit(done, max(1, total))

    def _remember_speed(self) -> None:
        times, views = self._run.get("step_times") or [], self._run.get("views") or 0
        if len(times) >= 2 and views:
            # The first step carries warm-up; the median of the rest is the steady speed.
            per_view = float(np.median(times[1:])) / views
            self.settings.set_seconds_per_view(self._run["request"].model, self._run["device"], per_view)

    def _on_finished(self, e: ev.Finished) -> None:
        self._remember_speed()
        times = self._run.get("step_times") or []
        self.step_text.emit(f"{len(times)} steps · {np.mean(times):.2f} s/step" if times else "")
        self._finish_stats("finished", e.seconds)
        self._set_state(RunState.finished)
        self.finished.emit(e)

    def _on_cancelled(self, e: ev.Cancelled) -> None:
        waited = time.perf_counter() - (self.bridge.cancel_requested_at or time.perf_counter())
        self._finish_stats("cancelled", None)
        self.stats["cancel_latency_s"] = round(waited, 3)
        self.stall.stop()
        self.canvas.set_in_flight(())
        self._set_state(RunState.cancelled)
        self.status.emit(f"Cancelled at step {e.step + 1}; nothing was written")
        self.cancelled.emit(e)

    def _on_failed(self, e: ev.Failed) -> None:
        self._finish_stats("failed", None)
        self.stall.stop()
        self.canvas.set_in_flight(())
        self._set_state(RunState.failed)
        self.status.emit("Failed")
        self.failed.emit(e)

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
            "stall_ticks": self.stall.ticks,
            "paint_ms_last": round(self.canvas.last_paint_ms, 2),
        }

    def finish_display(self) -> None:
        """The finished picture is on screen: the stall figure covers the run up to here."""
        if self.stall.active:
            self.stall.stop()
            self.stats["stall_ms_max"] = round(self.stall.worst_ms, 1)
            self.stats["stall_ticks"] = self.stall.ticks
