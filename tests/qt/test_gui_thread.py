"""The GUI thread only paints and dispatches: no device query, catalogue scan, model description
or plan-summary layout runs on it while a person edits the size and tiles, generates and gets
the picture (they go to the job pool)."""

from __future__ import annotations

import threading

import pytest
import torch

from paradiff_gui.engine.core.plan import TilePlan
from paradiff_gui.engine.models import catalogue, info


@pytest.fixture
def gui_thread_calls(monkeypatch):
    """Wraps the expensive calls; records the name of each one made on the main thread."""
    seen: list[str] = []

    def spy(owner, name, label):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if threading.current_thread() is threading.main_thread():
                seen.append(label)
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    for name in ("mem_get_info", "is_available", "device_count"):
        spy(torch.cuda, name, f"torch.cuda.{name}")
    spy(catalogue, "list_models", "list_models")
    spy(info, "describe_model", "describe_model")
    # Every TilePlan comes from create() (for_request and ModelInfo.plan go through it).
    real_create = TilePlan.create.__func__

    def create(cls, *args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            seen.append("TilePlan.create")
        return real_create(cls, *args, **kwargs)

    monkeypatch.setattr(TilePlan, "create", classmethod(create))
    return seen


def test_editing_generating_and_finishing_keep_device_catalogue_and_plans_off_the_gui_thread(
        qtbot, window, fake, gui_thread_calls):
    p = window.panel
    qtbot.waitUntil(lambda: window.plan_summary.latest is not None)
    gui_thread_calls.clear()  # construction (the panel's own model list) is the panel's business
    s, t, f = p.size_form, p.tiles_form, p.performance_form
    for edit in (lambda: s.width_.setValue(512), lambda: s.height_.setValue(384), lambda: t.overlap.setValue(32),
                 lambda: f.device.setCurrentText("cpu"), lambda: f.device.setCurrentText("auto")):
        with qtbot.waitSignal(window.plan_summary.ready, timeout=10000):
            edit()
    assert "tiles" in p.plan_info.text()
    with qtbot.waitSignal(window.result_ready, timeout=20000):
        assert window.generate()
    qtbot.waitUntil(lambda: window.current.report is not None, timeout=20000)
    assert gui_thread_calls == []


def test_the_recorder_sees_a_call_on_the_gui_thread(qtbot, window, gui_thread_calls, monkeypatch):
    """The test above can fail: the summary built on the GUI thread is caught."""
    monkeypatch.setattr(window.plan_summary, "jobs", _Inline())
    with qtbot.waitSignal(window.plan_summary.ready, timeout=10000):
        window.panel.size_form.width_.setValue(512)
    assert "TilePlan.create" in gui_thread_calls and "torch.cuda.is_available" in gui_thread_calls


class _Inline:
    """A Jobs that runs its work on the calling thread (the mistake the test guards against)."""

    def submit(self, fn, on_done, on_error=None):
        on_done(fn())
