"""The run controller's life cycle in the window: states, the order of the end signals, cancel
as the person sees it, closing during a run, and late background work for a picture no longer
shown."""

from __future__ import annotations

import threading
import time

import numpy as np
from PIL import Image
from PySide6.QtCore import Qt

from paradiff_gui.qt import bridge as bridge_module
from paradiff_gui.qt import results as results_module
from paradiff_gui.qt.run import RunState
from paradiff_gui.qt.widgets.inspector import Result


def _long_run(window, fake, steps=200):
    fake.batch_seconds = 0.05
    window.panel.set_request(window.panel.request().replace(steps=steps))
    fake.batch_seen.clear()
    assert window.generate()
    assert fake.batch_seen.wait(5)


def test_the_bridge_is_idle_when_run_ended_arrives_for_every_outcome(qtbot, window, fake):
    seen: list[tuple[str, bool]] = []
    window.run_ended.connect(lambda outcome: seen.append((outcome, window.bridge.running)))
    with qtbot.waitSignal(window.run_ended, timeout=20000):
        window.generate()
    _long_run(window, fake)
    with qtbot.waitSignal(window.run_ended, timeout=5000):
        window.cancel()
    fake.batch_seconds, fake.fail_at_step = 0.0, 0
    with qtbot.waitSignal(window.run_ended, timeout=20000):
        window.generate()
    window.error_box.close()
    assert seen == [("finished", False), ("cancelled", False), ("failed", False)]


def test_a_cancel_goes_running_cancelling_cancelled_and_the_inspect_panel_says_so(qtbot, window, fake):
    states: list[RunState] = []
    window.runner.state_changed.connect(states.append)
    _long_run(window, fake)
    assert window.seams.summary.text() == "Generating…"
    # The thread ends (running_changed False) strictly before the run is reported over.
    with qtbot.waitSignals([window.bridge.running_changed, window.run_ended], order="strict", timeout=5000):
        qtbot.keyClick(window, Qt.Key.Key_Escape)
    assert states == [RunState.running, RunState.cancelling, RunState.cancelled]
    assert "Cancelled at step" in window.status_text.text()
    assert "Cancelled at step" in window.seams.summary.text() and "Generating" not in window.seams.summary.text()


def test_closing_during_a_run_cancels_and_closes_within_five_seconds(qtbot, window, fake):
    _long_run(window, fake)
    worker = window.bridge._worker
    started = time.perf_counter()
    window.close()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=5000)
    assert time.perf_counter() - started < 5.0
    assert not window.bridge.running and worker not in bridge_module._LIVE_WORKERS
    assert window.stats["outcome"] == "cancelled"


def test_a_run_that_ignores_its_cancel_does_not_keep_the_window_open(qtbot, make_window):
    release = threading.Event()

    def stuck(request, on_event, cancel):
        release.wait(10)  # a model call that never looks at the cancel flag

    w = make_window(stuck)
    w.close_timeout_ms = 300
    assert w.generate()
    started = time.perf_counter()
    w.close()
    assert w.isVisible()  # not closed yet: the run was asked to stop first
    qtbot.waitUntil(lambda: not w.isVisible(), timeout=3000)
    assert time.perf_counter() - started < 2.0
    assert bridge_module.workers_running()  # the thread lives on, referenced, never destroyed running
    release.set()
    qtbot.waitUntil(lambda: not bridge_module.workers_running(), timeout=5000)


def test_late_scores_and_relief_for_a_picture_no_longer_shown_are_dropped(qtbot, window, monkeypatch):
    with qtbot.waitSignal(window.result_ready, timeout=20000) as first:
        window.generate()
    b = first.args[0]
    qtbot.waitUntil(lambda: b.report is not None, timeout=20000)
    gate = threading.Event()
    real_score = results_module._score

    def slow_score(image, tiles):
        gate.wait(10)
        return real_score(image, tiles)

    monkeypatch.setattr(results_module, "_score", slow_score)
    c = Result(b.image.copy(), b.request, b.tiles, "copy", layer=b.layer)
    window.show_result(c)  # its scoring waits at the gate
    window.show_result(b)  # the person moves on
    with qtbot.waitSignal(window.scored, timeout=20000):
        gate.set()
    assert c.report is not None  # kept on the picture it belongs to...
    assert window.seams.report is b.report and window.canvas.heat is b.heat  # ...but not shown over b
    # Relief toggled off and on again quickly; the grey layer, slower to build here, arrives last
    # and must not land.
    real_prepare = results_module._prepare_display

    def prepare(image, relief):
        if not relief:
            time.sleep(0.3)
        return real_prepare(image, relief)

    monkeypatch.setattr(results_module, "_prepare_display", prepare)
    relief_layer = b.layer
    window.act_relief.setChecked(False)
    window.act_relief.setChecked(True)
    qtbot.waitUntil(lambda: window.jobs.pending == 0, timeout=20000)
    assert b.layer is not relief_layer and window.canvas.layer is b.layer
    pixel = b.layer.arrays[0][100, 100, :3]
    assert len(set(pixel.tolist())) > 1  # coloured relief (B, G, R differ), not a grey level


def test_twenty_generate_cancel_cycles_leave_no_worker_thread_or_stuck_state(qtbot, window, fake):
    before = set(bridge_module._LIVE_WORKERS)  # a test elsewhere may leave its dropped bridge's worker
    workers = []
    fake.batch_seconds = 0.02
    window.panel.set_request(window.panel.request().replace(steps=100))
    for _ in range(20):
        fake.batch_seen.clear()
        assert window.generate()
        workers.append(window.bridge._worker)
        assert fake.batch_seen.wait(5)
        with qtbot.waitSignal(window.run_ended, timeout=5000) as ended:
            qtbot.keyClick(window, Qt.Key.Key_Escape)
        assert ended.args == ["cancelled"]
        assert window.generate_button.isEnabled()  # at once: run_ended comes after the thread ended
    assert len(set(map(id, workers))) == 20
    assert window.bridge._worker is None and not window.stall.active
    assert not bridge_module._LIVE_WORKERS - before  # every thread ended and was let go
    fake.batch_seconds = 0.0
    window.panel.set_request(window.panel.request().replace(steps=2))
    with qtbot.waitSignal(window.result_ready, timeout=20000):
        window.generate()


def test_the_stall_figure_measures_the_gui_thread(qtbot, window, fake):
    fake.batch_seconds = 0.05
    window.panel.set_request(window.panel.request().replace(steps=4))
    with qtbot.waitSignal(window.result_ready, timeout=20000):
        window.generate()
        qtbot.wait(50)
        time.sleep(0.25)  # the GUI thread busy for 250 ms mid-run
    assert window.stats["stall_ticks"] > 0
    assert window.stats["stall_ms_max"] >= 150


def test_a_picture_arriving_after_the_person_moved_on_waits_in_history(qtbot, window, fake, tmp_path, monkeypatch):
    shown: list[Result] = []
    window.result_ready.connect(shown.append)
    # An image opened during a run is kept in History, not drawn over the run's previews.
    Image.fromarray(np.full((64, 96, 3), 200, np.uint8)).save(tmp_path / "opened.png")
    _long_run(window, fake)
    window.open_image(str(tmp_path / "opened.png"))
    qtbot.waitUntil(lambda: len(window.history.results) == 1, timeout=20000)
    opened = window.history.results[0]
    assert opened.layer is not None and window.current is None and window.canvas.layer is not opened.layer
    with qtbot.waitSignal(window.run_ended, timeout=5000):
        window.cancel()
    # A finished run whose view is still being built when the next run starts: kept, not shown.
    fake.batch_seconds = 0.0
    window.panel.set_request(window.panel.request().replace(steps=3))
    gate = threading.Event()
    real_prepare = results_module._prepare_display

    def slow_prepare(image, relief):
        gate.wait(10)
        return real_prepare(image, relief)

    monkeypatch.setattr(results_module, "_prepare_display", slow_prepare)
    with qtbot.waitSignal(window.run_ended, timeout=20000):
        window.generate()
    _long_run(window, fake)  # the next run starts while the first one's view waits at the gate
    gate.set()
    qtbot.waitUntil(lambda: len(window.history.results) == 2, timeout=20000)
    late = window.history.results[1]
    assert late.layer is not None and window.current is None and window.canvas.layer is not late.layer
    assert shown == []
    with qtbot.waitSignal(window.run_ended, timeout=5000):
        window.cancel()
