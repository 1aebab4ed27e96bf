"""Background work for the GUI thread, and the stall monitor that proves the GUI never freezes.

``Jobs`` runs plain functions (pyramids, seam analysis, export, file loading) on a small thread
pool and calls back on the GUI thread with the result or the exception. The functions get
numpy arrays and paths, never widgets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal

log = logging.getLogger(__name__)


class Jobs(QObject):
    _done = Signal(object, object, object)  # callback, result, error

    def __init__(self, parent: QObject | None = None, workers: int = 2) -> None:
        super().__init__(parent)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="paradiff-job")
        self._done.connect(self._deliver, Qt.ConnectionType.QueuedConnection)
        self.pending = 0
        self.closed = False

    def submit(self, fn: Callable[[], Any], on_done: Callable[[Any], None],
               on_error: Callable[[BaseException], None] | None = None) -> Future | None:
        if self.closed:
            # The window is closing: a timer (plan summary, debounce) that fires now finds nobody
            # to show its result to.
            return None
        self.pending += 1

        def finished(fut: Future) -> None:
            if fut.cancelled():  # dropped by shutdown(): nobody is waiting for it
                return
            exc = fut.exception()
            self._done.emit((on_done, on_error), None if exc else fut.result(), exc)

        fut = self._pool.submit(fn)
        fut.add_done_callback(finished)
        return fut

    def _deliver(self, callbacks: tuple, result: Any, error: BaseException | None) -> None:
        self.pending -= 1
        on_done, on_error = callbacks
        if error is None:
            on_done(result)
        elif on_error is not None:
            on_error(error)
        else:
            log.error("background job failed", exc_info=error)

    def shutdown(self) -> None:
        self.closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)


class StallMonitor(QObject):
    """Measures how long the GUI thread's event loop goes without running a timer.

    A precise timer asks to fire every ``interval_ms``; any extra delay between two firings is
    time the loop spent busy (painting, building images, handling signals). ``worst_ms`` is
    the longest such stall since ``start()``.
    """

    def __init__(self, interval_ms: int = 5, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.interval_ms = interval_ms
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last = 0.0
        self.worst_ms = 0.0
        self.ticks = 0

    def start(self) -> None:
        self.worst_ms, self.ticks = 0.0, 0
        self._last = time.perf_counter()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    @property
    def active(self) -> bool:
        return self._timer.isActive()

    def _tick(self) -> None:
        now = time.perf_counter()
        stall = (now - self._last) * 1000 - self.interval_ms
        self.worst_ms = max(self.worst_ms, stall)
        self.ticks += 1
        self._last = now
