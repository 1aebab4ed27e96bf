"""The bridge between the engine (a worker QThread) and the GUI thread.

The engine calls ``on_event`` from the worker thread. Every event except previews is forwarded
at once as a queued signal. Previews are many (one per tile per step) and only the newest one
of each tile matters, so the worker drops them in a dict keyed by tile and a GUI-thread timer
takes the whole dict at most ``PREVIEW_HZ`` times a second; before a terminal event the dict is
always drained, so the last previews are never lost and never arrive after ``finished``. The
terminal signal itself (``finished``, ``cancelled``, ``failed``) is held until the worker thread
has ended, so a receiver sees ``running`` False and may start the next run at once.

The worker never touches a widget: it hands over numpy arrays; QImages are built on the GUI
thread by the receivers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThread, QTimer, Signal

from ..engine.core import events as ev
from ..engine.core.cancel import Cancelled, CancelToken
from ..engine.core.request import GenerationRequest
from ..engine.runtime.devices import lower_pool_priority

log = logging.getLogger(__name__)

PREVIEW_HZ = 20
Engine = Callable[[GenerationRequest, Callable[[Any], None], CancelToken], Any]
PreviewFilter = Callable[[ev.TilePreview], ev.TilePreview]


def default_engine(request: GenerationRequest, on_event: Callable[[Any], None], cancel: CancelToken,
                   **extra: Any) -> Any:
    from ..engine.sampling.sampler import generate

    return generate(request, on_event, cancel, **extra)


# On a CPU the model's thread pool takes every core and the interface waits for a time slice.
# Each step, the pool threads of the run (not the run thread: it holds the GIL between ops) get a
# lower OS priority (runtime.devices.lower_pool_priority; measured in docs/PERFORMANCE.md). A
# switch for benchmarks/bench_gui.py --pool-priority same.
LOWER_POOL_PRIORITY = True
WORKER_NAME = "paradiff-run"  # the OS name of the run thread, and so of the pool threads it starts


class _Worker(QThread):
    """Runs one generation; ``event`` carries every non-preview event to the GUI thread."""

    event = Signal(object)

    def __init__(self, engine: Engine, request: GenerationRequest, cancel: CancelToken,
                 previews: dict[int, ev.TilePreview], lock: threading.Lock,
                 preview_filter: PreviewFilter | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.setObjectName(WORKER_NAME)  # Qt names the OS thread after it when it starts
        self.engine, self.request, self.cancel = engine, request, cancel
        self._previews, self._lock = previews, lock
        self._filter = preview_filter
        self.extra = extra or {}  # more arguments for the engine: a refine's ``known`` (engine.api.refine)
        self._terminal_sent = False

    def _on_event(self, event: Any) -> None:
        if isinstance(event, ev.TilePreview):
            if self._filter is not None:
                # Pixel work (e.g. shaded relief) here, on the worker, never on the GUI thread.
                event = self._filter(event)
            with self._lock:
                # Keyed by tile: a newer preview replaces an unshown older one. Each carries
                # its own rect, so with jitter (the grid moves) it still lands in the right place.
                self._previews[event.tile] = event
            return
        if isinstance(event, ev.StepFinished) and LOWER_POOL_PRIORITY:
            # Every step: a pool may start threads late (a first parallel op, a larger batch).
            lower_pool_priority()
        if isinstance(event, ev.TERMINAL):
            self._terminal_sent = True
        self.event.emit(event)

    def run(self) -> None:
        try:
            self.engine(self.request, self._on_event, self.cancel, **self.extra)
        except Cancelled:
            pass  # the engine emitted Cancelled already
        except Exception as exc:  # the engine emits Failed itself; a fake or broken one may not
            log.exception("generation failed")
            if not self._terminal_sent:
                self.event.emit(ev.Failed(f"{type(exc).__name__}: {exc}", "runtime"))
            return
        if not self._terminal_sent:
            self.event.emit(ev.Failed("the engine stopped without a result", "runtime"))


# Every started worker until its bridge has seen it end: Qt aborts the whole process when a
# QThread object is destroyed while its thread runs, which happened when a bridge was garbage-
# collected mid-run. A worker whose bridge is gone first stays here (a finished thread: bytes).
_LIVE_WORKERS: set[_Worker] = set()


def workers_running() -> bool:
    """A generation thread still runs (one that ignored a cancel): the process must not tear
    Qt down normally, or destroying its QThread aborts."""
    return any(w.isRunning() for w in _LIVE_WORKERS)


class EngineBridge(QObject):
    """Starts generations on a worker thread and turns engine events into Qt signals.

    ``engine`` is ``generate``-shaped: ``engine(request, on_event, cancel)``; tests pass a
    scriptable fake. One generation runs at a time.
    """

    planned = Signal(object)  # ev.Planned
    notice = Signal(str)
    step_started = Signal(object)  # ev.StepStarted
    batch_started = Signal(object)  # ev.BatchStarted
    previews = Signal(list)  # list[ev.TilePreview], newest per tile, throttled
    step_finished = Signal(object)  # ev.StepFinished
    decoding = Signal(int, int)
    finished = Signal(object)  # ev.Finished
    cancelled = Signal(object)  # ev.Cancelled
    failed = Signal(object)  # ev.Failed
    running_changed = Signal(bool)

    def __init__(self, engine: Engine | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = engine or default_engine
        self._worker: _Worker | None = None
        self._cancel: CancelToken | None = None
        self._lock = threading.Lock()
        self._pending: dict[int, ev.TilePreview] = {}
        self._timer = QTimer(self)
        self._timer.setInterval(1000 // PREVIEW_HZ)
        self._timer.timeout.connect(self.flush_previews)
        self.preview_flushes = 0  # signals sent (for the rate figure)
        self.preview_count = 0  # previews handed over in them
        self.cancel_requested_at: float | None = None
        self.preview_filter: PreviewFilter | None = None  # applied on the worker thread, per run
        self._terminal: Any = None  # held until the thread has ended

    @property
    def running(self) -> bool:
        return self._worker is not None

    def start(self, request: GenerationRequest, **extra: Any) -> None:
        """Run ``request``; ``extra`` goes to the engine as keywords (a refine's ``known``)."""
        if self._worker is not None:
            raise RuntimeError("a generation is already running")
        self._cancel = CancelToken()
        with self._lock:
            self._pending.clear()
        self.preview_flushes = self.preview_count = 0
        self.cancel_requested_at = None
        self._terminal = None
        worker = _Worker(self.engine, request, self._cancel, self._pending, self._lock, self.preview_filter, extra)
        worker.event.connect(self._dispatch)
        worker.finished.connect(self._thread_done)
        self._worker = worker
        _LIVE_WORKERS.add(worker)
        self._timer.start()
        self.running_changed.emit(True)
        # Normal priority on purpose: a lower one (nice 10 on Linux) made the GUI thread wait
        # longer for the GIL held by a preempted worker (100 ms stalls against 45 ms, 2 cores).
        worker.start()

    def cancel(self) -> None:
        """Ask the running generation to stop; it does after the current tile batch."""
        if self._cancel is not None and not self._cancel.cancelled:
            self.cancel_requested_at = time.perf_counter()
            self._cancel.cancel()

    def wait(self, ms: int = 30000) -> bool:
        """Block until the worker thread has ended (for shutdown and tests)."""
        return self._worker.wait(ms) if self._worker is not None else True

    def flush_previews(self) -> None:
        with self._lock:
            if not self._pending:
                return
            batch = list(self._pending.values())
            self._pending.clear()
        self.preview_flushes += 1
        self.preview_count += len(batch)
        self.previews.emit(batch)

    def _dispatch(self, event: Any) -> None:
        # One dispatch on the receiving side (house style): event type -> signal.
        if isinstance(event, ev.TERMINAL):
            self.flush_previews()
            self._timer.stop()
            if self._worker is not None:
                self._terminal = event  # sent by _thread_done, once `running` is False
                return
        self._emit(event)

    def _emit(self, event: Any) -> None:
        match event:
            case ev.Planned():
                self.planned.emit(event)
            case ev.Notice():
                self.notice.emit(event.message)
            case ev.StepStarted():
                self.step_started.emit(event)
            case ev.BatchStarted():
                self.batch_started.emit(event)
            case ev.StepFinished():
                self.step_finished.emit(event)
            case ev.Decoding():
                self.decoding.emit(event.done, event.total)
            case ev.Finished():
                self.finished.emit(event)
            case ev.Cancelled():
                self.cancelled.emit(event)
            case ev.Failed():
                self.failed.emit(event)
            case _:
                log.warning("unknown engine event %r", type(event).__name__)

    def _thread_done(self) -> None:
        worker, self._worker = self._worker, None
        self._cancel = None
        if worker is not None:
            worker.wait()  # `finished` comes just before the thread's very end: let it end
            _LIVE_WORKERS.discard(worker)
            worker.deleteLater()
        self._timer.stop()
        self.flush_previews()
        self.running_changed.emit(False)
        terminal, self._terminal = self._terminal, None
        if terminal is not None:
            self._emit(terminal)
