"""The plan summary: built once per pause in the edits, off the GUI thread, newest only."""

from __future__ import annotations

import threading

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.models.info import describe_model
from paradiff_gui.qt import plan_summary as ps
from paradiff_gui.qt.jobs import Jobs

INFO = describe_model("builtin:terrain")


def test_a_burst_of_edits_builds_one_summary_on_a_worker(qtbot, monkeypatch):
    jobs = Jobs()
    summary = ps.PlanSummary(jobs, debounce_ms=40)
    builds: list[tuple[int, bool]] = []
    real = ps.summarise

    def counted(token, request, info, speeds):
        builds.append((request.width, threading.current_thread() is threading.main_thread()))
        return real(token, request, info, speeds)

    monkeypatch.setattr(ps, "summarise", counted)
    try:
        with qtbot.waitSignal(summary.ready, timeout=5000) as got:
            for w in range(256, 1024 + 1, 64):  # a held arrow key
                summary.request_update(request_for("builtin:terrain", width=w, height=256), INFO, {})
        qtbot.wait(150)
        assert builds == [(1024, False)]
        assert got.args[0].request.width == 1024 and "tiles" in got.args[0].html
        assert not summary.pending
    finally:
        jobs.shutdown()


def test_a_build_overtaken_by_an_edit_is_not_shown(qtbot, monkeypatch):
    jobs = Jobs()
    summary = ps.PlanSummary(jobs, debounce_ms=0)
    gate = threading.Event()
    real = ps.summarise

    def slow_first(token, request, info, speeds):
        if request.width == 256:
            gate.wait(5)
        return real(token, request, info, speeds)

    monkeypatch.setattr(ps, "summarise", slow_first)
    shown: list[int] = []
    summary.ready.connect(lambda s: shown.append(s.request.width))
    try:
        summary.request_update(request_for("builtin:terrain", width=256, height=256), INFO, {}, now=True)
        with qtbot.waitSignal(summary.ready, timeout=5000):
            summary.request_update(request_for("builtin:terrain", width=512, height=256), INFO, {}, now=True)
        gate.set()
        qtbot.waitUntil(lambda: jobs.pending == 0, timeout=5000)
        assert shown == [512] and summary.latest.request.width == 512
    finally:
        gate.set()
        jobs.shutdown()


def test_a_request_that_cannot_be_tiled_says_why(qapp):
    req = request_for("builtin:terrain", width=256, height=256).replace(grid=(40, 40), tile=None, overlap=0)
    s = ps.summarise(1, req, INFO, {})
    assert s.plan is None and s.error is not None and s.error.startswith("grid:")


def test_the_summary_follows_edits_made_during_a_run_and_one_started_at_once(qtbot, make_window, fake):
    # Generate before the first summary arrived (scripted --autorun does): the panel still gets
    # its summary, and an edit made while the run goes on is summarised too.
    fake.batch_seconds = 0.05
    w = make_window(fake)
    w.panel.plan_info.setText("")
    w.panel.set_request(request_for("builtin:terrain", width=256, height=256, steps=4, seed=11))
    assert w.generate()
    qtbot.waitUntil(lambda: "9 tiles" in w.panel.plan_info.text(), timeout=5000)
    with qtbot.waitSignal(w.plan_summary.ready, timeout=5000):
        w.panel.size_form.width_.setValue(384)
    assert w.runner.active and "15 tiles" in w.panel.plan_info.text()
    assert not w.act_generate.isEnabled()  # the summary never re-enables Generate during a run
    qtbot.waitUntil(lambda: not w.runner.active, timeout=20000)


def test_the_summary_shows_the_host_memory_and_marks_what_does_not_fit(qapp, monkeypatch):
    from paradiff_gui.engine.runtime import memory

    monkeypatch.setattr(memory, "host_available", lambda: 24 * memory.GiB)
    small = ps.summarise(1, request_for("builtin:terrain", width=512, height=512, device="cpu"), INFO, {})
    assert "host ≈" in small.html and "24.0 GiB available" in small.html
    assert "color:#e5534b'>host" not in small.html
    huge = ps.summarise(2, request_for("builtin:terrain", width=65536, height=65536, device="cpu"), INFO, {})
    assert "color:#e5534b'>host ≈ 264" in huge.html


def test_the_summary_measures_the_host_estimate_against_the_budget(qapp, monkeypatch):
    from paradiff_gui.engine.runtime import memory

    monkeypatch.setattr(memory, "host_available", lambda: 24 * memory.GiB)
    monkeypatch.delenv(memory.HOST_MEMORY_ENV, raising=False)
    fits = ps.summarise(1, request_for("builtin:terrain", width=512, height=512, device="cpu", host_memory=8), INFO,
                        {})
    assert "of the 8.0 GiB budget" in fits.html and "color:#e5534b'>host" not in fits.html
    over = ps.summarise(2, request_for("builtin:terrain", width=2048, height=2048, device="cpu", host_memory=0.5),
                        INFO, {})
    assert "color:#e5534b'>host" in over.html and "of the 512.0 MiB budget" in over.html
    monkeypatch.setenv(memory.HOST_MEMORY_ENV, "lots")
    bad = ps.summarise(3, request_for("builtin:terrain", device="cpu"), INFO, {})
    assert bad.error is not None and bad.error.startswith("host_memory: $PARADIFF_HOST_MEMORY must be")
