"""The worker-thread bridge: event order, preview throttling, cancel, and failures."""

from __future__ import annotations

import threading
import time

from fake_engine import FakeEngine

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.qt.bridge import PREVIEW_HZ, EngineBridge

REQ = request_for("builtin:terrain", width=256, height=256, steps=3, seed=1)


def test_events_arrive_in_order_on_the_gui_thread(qtbot):
    bridge = EngineBridge(FakeEngine())
    threads = set()
    for name in ("planned", "step_started", "step_finished", "finished"):
        getattr(bridge, name).connect(lambda *_a: threads.add(threading.current_thread()))
    with qtbot.waitSignals([bridge.planned, bridge.step_started, bridge.batch_started, bridge.step_finished,
                            bridge.finished], order="simple", timeout=10000):
        bridge.start(REQ)
    assert threads == {threading.main_thread()}
    qtbot.waitUntil(lambda: not bridge.running)


def test_previews_are_throttled_and_the_newest_of_every_tile_arrives_before_finished(qtbot):
    # 9 tiles x 3 steps x 200 repeats = 5400 previews in well under a second.
    bridge = EngineBridge(FakeEngine(previews_per_batch=200, batch_seconds=0.02))
    got: list = []
    order: list[str] = []
    bridge.previews.connect(lambda batch: (got.append(batch), order.append("previews")))
    bridge.finished.connect(lambda _e: order.append("finished"))
    started = time.perf_counter()
    with qtbot.waitSignal(bridge.finished, timeout=20000):
        bridge.start(REQ)
    elapsed = time.perf_counter() - started
    qtbot.waitUntil(lambda: not bridge.running)
    assert order[-1] == "finished" and "previews" in order
    # At most PREVIEW_HZ flushes a second, plus the final one before the terminal event.
    assert len(got) <= elapsed * PREVIEW_HZ + 2, (len(got), elapsed)
    assert sum(len(b) for b in got) < 9 * 3 * 200 / 10  # most repeats were coalesced
    # Within one flush a tile appears once, and the last word of every tile is the last step.
    for batch in got:
        assert len({p.tile for p in batch}) == len(batch)
    last = {}
    for batch in got:
        for p in batch:
            last[p.tile] = p.step
    assert last == {i: 2 for i in range(9)}


def test_cancel_stops_within_one_batch_and_the_bridge_is_ready_again(qtbot):
    engine = FakeEngine(batch_seconds=0.05)
    bridge = EngineBridge(engine)
    batches: list = []
    bridge.batch_started.connect(batches.append)
    bridge.start(REQ.replace(steps=50))
    assert engine.batch_seen.wait(5)
    with qtbot.waitSignal(bridge.cancelled, timeout=5000) as blocker:
        t0 = time.perf_counter()
        bridge.cancel()
    assert time.perf_counter() - t0 < 1.0
    qtbot.waitUntil(lambda: not bridge.running)
    assert blocker.args[0].step < 2
    n = len(batches)
    qtbot.wait(150)
    assert len(batches) == n  # nothing runs after the cancel
    engine.batch_seconds = 0.0
    with qtbot.waitSignal(bridge.finished, timeout=10000):
        bridge.start(REQ)
    qtbot.waitUntil(lambda: not bridge.running)


def test_an_engine_that_raises_without_an_event_still_reports_failed(qtbot):
    bridge = EngineBridge(FakeEngine(fail_at_step=1, raise_plain=True, fail_message="boom"))
    with qtbot.waitSignal(bridge.failed, timeout=10000) as blocker:
        bridge.start(REQ)
    assert blocker.args[0].message == "RuntimeError: boom"
    qtbot.waitUntil(lambda: not bridge.running)


def test_only_one_run_at_a_time(qtbot):
    bridge = EngineBridge(FakeEngine(batch_seconds=0.05))
    bridge.start(REQ)
    try:
        import pytest

        with pytest.raises(RuntimeError, match="already running"):
            bridge.start(REQ)
    finally:
        bridge.cancel()
        qtbot.waitUntil(lambda: not bridge.running, timeout=10000)


def test_a_bridge_dropped_mid_run_does_not_take_the_process_down(qtbot):
    """Qt aborts the process when a running QThread's object is destroyed; a bridge collected
    while its generation runs must not do that (the worker is kept until it ends)."""
    import gc

    engine = FakeEngine(batch_seconds=0.05)
    bridge = EngineBridge(engine)
    bridge.start(REQ)
    assert engine.batch_seen.wait(5)
    bridge.cancel()
    del bridge
    gc.collect()
    qtbot.wait(500)  # the worker ends on its own; reaching the next line is the test


def test_the_runs_pool_threads_yield_to_the_interface_and_the_run_thread_does_not(qtbot):
    # A real OpenMP pool, started by the run thread: after a step its threads run at nice 10, so
    # the interface gets a core when it needs one; the run thread itself keeps its priority.
    import os

    import torch

    from paradiff_gui.engine import events as ev
    from paradiff_gui.engine.runtime.devices import _comm
    from paradiff_gui.qt.bridge import WORKER_NAME

    seen: dict = {}

    def engine(request, on_event, cancel):
        me = threading.get_native_id()
        torch.set_num_threads(2)
        a = torch.randn(512, 512)
        for _ in range(20):
            a = torch.tanh(a @ a)
        on_event(ev.StepFinished(0, 1, 0.1))
        pool = [int(t) for t in os.listdir("/proc/self/task") if int(t) != me and _comm(int(t)) == WORKER_NAME]
        seen.update(name=_comm(me), pool=[os.getpriority(os.PRIO_PROCESS, t) for t in pool],
                    own=os.getpriority(os.PRIO_PROCESS, me))
        on_event(ev.Failed("done", "runtime"))

    threads = torch.get_num_threads()
    bridge = EngineBridge(engine)
    with qtbot.waitSignal(bridge.failed, timeout=20000):
        bridge.start(REQ)
    qtbot.waitUntil(lambda: not bridge.running)
    torch.set_num_threads(threads)
    assert seen["name"] == WORKER_NAME
    assert seen["pool"] and all(n == 10 for n in seen["pool"])
    assert seen["own"] == os.getpriority(os.PRIO_PROCESS, os.getpid())
