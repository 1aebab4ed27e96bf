from __future__ import annotations

import pytest
from fake_engine import FakeEngine
from PySide6.QtCore import QSettings

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.qt.window import MainWindow


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def fake():
    return FakeEngine()


@pytest.fixture
def make_window(qtbot, settings, tmp_path):
    made = []

    def make(engine=None, **kw):
        kw.setdefault("autosave_dir", tmp_path / "autosave")
        w = MainWindow(engine=engine, settings=kw.pop("settings", settings), **kw)
        qtbot.addWidget(w)
        w.resize(1280, 800)
        w.show()
        made.append(w)
        return w

    yield make
    for w in made:
        if w.bridge.running:
            w.bridge.cancel()
            w.bridge.wait(10000)
        w.jobs.shutdown()


@pytest.fixture
def window(make_window, fake):
    w = make_window(fake)
    w.panel.set_request(request_for("builtin:terrain", width=256, height=256, steps=3, seed=11))
    return w
