"""The model picker never reads model files on the GUI thread: the catalogue scan and the
description of a newly picked model run on a worker, and the picker stays usable meanwhile."""

from __future__ import annotations

import threading
import time

import pytest
from PySide6.QtCore import QTimer

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core.request import RequestError
from paradiff_gui.engine.models.catalogue import ModelEntry
from paradiff_gui.engine.models.info import describe_model
from paradiff_gui.qt.forms import model as model_form
from paradiff_gui.qt.widgets.panel import GenerationPanel

HUB = ModelEntry("someone/cached-model", "hub-cache", "hub cache")
BUILTIN = ModelEntry("builtin:terrain", "builtin", "shipped with Paradiff")


class FakeCatalogue:
    """``list_models`` stand-in: records the thread it ran on, can be slowed or held."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.delay = 0.0
        self.release: threading.Event | None = None

    def __call__(self) -> list[ModelEntry]:
        self.threads.append(threading.current_thread())
        if self.release is not None:
            self.release.wait(5)  # bounded: a broken (synchronous) scan fails instead of hanging
        time.sleep(self.delay)
        return [BUILTIN, HUB]


@pytest.fixture
def catalogue(monkeypatch):
    fake = FakeCatalogue()
    monkeypatch.setattr(model_form, "list_models", fake)
    return fake


@pytest.fixture
def panel(qtbot, catalogue):
    p = GenerationPanel()
    qtbot.addWidget(p)
    qtbot.waitUntil(lambda: HUB.id in ids(p), timeout=5000)  # the scan started by the constructor
    return p


def ids(p: GenerationPanel) -> list[str]:
    combo = p.model_form.combo
    return [combo.itemData(i) for i in range(combo.count()) if combo.itemData(i)]


def test_the_catalogue_scan_runs_on_a_worker_and_fills_the_picker_when_it_returns(qtbot, catalogue):
    p = GenerationPanel()
    qtbot.addWidget(p)
    assert HUB.id not in ids(p)  # not filled inline
    with qtbot.waitSignal(p.models_listed, timeout=5000):
        pass
    assert catalogue.threads and all(t is not threading.main_thread() for t in catalogue.threads)
    assert ids(p)[:2] == ["builtin:terrain", HUB.id]
    assert p.model_form.combo.itemText(1) == f"{HUB.id}  (hub-cache)"
    assert p.added_models() == []  # found by the scan, so not one the person added


def test_a_slow_scan_does_not_block_the_event_loop(qtbot, panel, catalogue):
    catalogue.delay = 0.5
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    marks = {}

    def refresh() -> None:
        marks["called"] = len(ticks)
        panel.refresh_models()

    panel.models_listed.connect(lambda: marks.setdefault("listed", len(ticks)))
    with qtbot.waitSignal(panel.models_listed, timeout=5000):
        QTimer.singleShot(0, refresh)
    timer.stop()
    # 0.5 s of scanning at one tick per 10 ms: a blocked loop would not tick at all.
    assert marks["listed"] - marks["called"] >= 10


def test_the_builtin_and_the_shown_model_are_selectable_before_the_scan_returns(qtbot, catalogue, sd_like):
    catalogue.release = threading.Event()
    try:
        p = GenerationPanel()  # start-up: the scan is held on the worker
        qtbot.addWidget(p)
        assert ids(p) == ["builtin:terrain", model_form.ADD_FOLDER, model_form.ADD_FILE]
        p.set_request(request_for(sd_like, prompt="a harbour", seed=3))  # e.g. the last session's request
        assert HUB.id not in ids(p) and p.model_form.combo.currentData() == sd_like
        p.select_model("builtin:terrain")
        assert p.request().model == "builtin:terrain"
        p.select_model(sd_like)
        assert p.request().model == sd_like
    finally:
        catalogue.release.set()
    with qtbot.waitSignal(p.models_listed, timeout=5000):
        pass
    assert ids(p)[:3] == ["builtin:terrain", HUB.id, sd_like]
    assert p.model_form.combo.currentData() == sd_like and p.added_models() == [sd_like]


def test_refresh_lists_extra_models_at_once_and_labels_them_when_described(qtbot, panel, sd_like):
    panel.refresh_models([sd_like])
    assert sd_like in ids(panel)  # listed before the worker returns: settings saved now keep it
    assert panel.added_models() == [sd_like]
    with qtbot.waitSignal(panel.models_listed, timeout=5000):
        pass
    combo = panel.model_form.combo
    assert combo.itemText(combo.findData(sd_like)) == describe_model(sd_like).label


@pytest.fixture
def described(monkeypatch):
    threads: list[threading.Thread] = []

    def describe(model: str):
        threads.append(threading.current_thread())
        return describe_model(model)

    monkeypatch.setattr(model_form, "describe_model", describe)
    return threads


def test_a_model_the_person_picks_is_described_on_a_worker_then_selected(qtbot, panel, described, sd_like):
    panel.set_request(request_for("builtin:terrain", seed=7))
    described.clear()
    with qtbot.waitSignal(panel.model_changed, timeout=5000) as blocker:
        panel.model_form.choose(sd_like)  # what the combo and the "Add a model folder…" dialog do
        # Until the description arrives the other fields belong to the terrain model: no request.
        with pytest.raises(RequestError, match="model"):
            panel.request()
        assert panel.info.id == "builtin:terrain"
    assert blocker.args[0].id == sd_like and panel.info.text
    assert described and all(t is not threading.main_thread() for t in described)
    req = panel.request()
    assert req.model == sd_like and req.seed == 7 and req.steps == request_for(sd_like).steps
    assert panel.prompt_form.isVisibleTo(panel)


def test_a_late_description_does_not_override_a_request_shown_meanwhile(qtbot, panel, described, sd_like):
    panel.model_form.choose(sd_like)
    terrain = request_for("builtin:terrain", width=384, seed=5)
    panel.set_request(terrain)  # e.g. a request loaded while the folder was being read
    qtbot.waitUntil(lambda: sd_like in panel.model_form._infos, timeout=5000)
    qtbot.wait(50)  # let a queued selection land, if there were one
    assert panel.info.id == "builtin:terrain" and panel.request() == terrain
