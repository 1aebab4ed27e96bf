"""Upscale…: the engine's ×2 passes run one after another through the app's run path, each pass's
picture written before the next starts, History keeping the chain; cancel stops it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_engine import FakeEngine
from PySide6.QtCore import Qt

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.io.export import open_image
from paradiff_gui.engine.io.metadata import load_request


class RecordingEngine(FakeEngine):
    """The fake engine, also noting whether each run's init image was on disk when it started."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.init_on_disk: list[bool] = []

    def __call__(self, request, on_event, cancel):
        if request.init_image is not None:
            self.init_on_disk.append(os.path.isfile(request.init_image))
        return super().__call__(request, on_event, cancel)


@pytest.fixture
def engine():
    return RecordingEngine()


@pytest.fixture
def win(make_window, engine):
    w = make_window(engine)
    w.panel.set_request(request_for("builtin:terrain", width=128, height=128, steps=2, seed=21))
    return w


def generated(qtbot, window):
    with qtbot.waitSignal(window.result_ready, timeout=20000) as blocker:
        window.generate()
    return blocker.args[0]


def test_upscale_runs_the_passes_in_order_writes_each_and_history_keeps_the_chain(qtbot, win, engine, tmp_path):
    source = generated(qtbot, win)
    out = tmp_path / "castle-x8.png"
    started: list = []
    win.upscaler.pass_started.connect(lambda i, n, k: started.append((i, n, k, win.status_text.text())))
    with qtbot.waitSignal(win.upscale_ended, timeout=60000) as ended:
        assert win.upscale(8, 0.4, str(out))
        assert not win.generate_button.isEnabled() and not win.act_upscale.isEnabled()
    assert ended.args == ["finished"]
    # Three ×2 passes, each an image-to-image run on the file the pass before wrote.
    runs = engine.calls[1:]
    assert [(r.width, r.height) for r in runs] == [(256, 256), (512, 512), (1024, 1024)]
    files = [tmp_path / f"castle-x{k}.png" for k in (1, 2, 4, 8)]  # x1: the unsaved picture, written first
    assert [r.init_image for r in runs] == [str(f) for f in files[:3]]
    assert all(r.strength == 0.4 and r.seed == source.request.seed for r in runs)
    assert engine.init_on_disk == [True, True, True]  # each written before the next pass started
    for f, side in zip(files, (128, 256, 512, 1024)):
        assert open_image(f).shape[:2] == (side, side)
        assert load_request(f).width == side  # each file carries its own recipe
    assert [s[:3] for s in started] == [(1, 3, 2), (2, 3, 4), (3, 3, 8)]
    # History: the picture, then its passes in order; each pass knows its file.
    results = win.history.results
    assert results[0] is source and len(results) == 4
    assert [r.title for r in results[1:]] == ["×2 upscale · 256×256", "×4 upscale · 512×512",
                                              "×8 upscale · 1024×1024"]
    assert [r.path for r in results[1:]] == [str(f) for f in files[1:]]
    assert win.current is results[-1] and win.canvas.image_w == 1024
    assert win.generate_button.isEnabled() and win.act_upscale.isEnabled() and not win.cancel_button.isEnabled()
    assert win.statusBar().currentMessage() == f"Upscaled ×8: {files[-1]}"
    # Back to any of them: the ×2 pass, clicked in History (newest first: it is third from the top).
    item = win.history.list.item(2)
    qtbot.mouseClick(win.history.list.viewport(), Qt.MouseButton.LeftButton,
                     pos=win.history.list.visualItemRect(item).center())
    assert win.current is results[1] and win.canvas.image_w == 256


def test_the_status_bar_says_which_pass_runs(qtbot, win, engine, tmp_path):
    generated(qtbot, win)
    engine.batch_seconds = 0.03
    with qtbot.waitSignal(win.upscale_ended, timeout=60000):
        assert win.upscale(4, output=str(tmp_path / "p-x4.png"))
        qtbot.waitUntil(lambda: "Upscale pass 2 of 2, ×4 · Step" in win.status_text.text(), timeout=20000)
        assert win.progress.format().startswith("pass 2/2")
    assert win.progress.format() == "%p%"


def test_cancel_mid_chain_stops_it_and_keeps_what_was_written(qtbot, win, engine, tmp_path):
    generated(qtbot, win)
    engine.batch_seconds = 0.03
    with qtbot.waitSignal(win.upscale_ended, timeout=60000) as ended:
        assert win.upscale(8, output=str(tmp_path / "c-x8.png"))
        qtbot.waitUntil(lambda: win.upscaler.label() == "pass 2 of 3, ×4" and win.runner.active, timeout=20000)
        qtbot.waitUntil(lambda: win.cancel_button.isEnabled(), timeout=5000)
        qtbot.keyClick(win, Qt.Key.Key_Escape)
    assert ended.args == ["cancelled"]
    assert len(engine.calls) == 3  # the first picture, pass 1, and pass 2 (cancelled): no pass 3
    assert (tmp_path / "c-x2.png").is_file()
    assert not (tmp_path / "c-x4.png").exists() and not (tmp_path / "c-x8.png").exists()
    assert [r.title for r in win.history.results[1:]] == ["×2 upscale · 256×256"]
    assert "Upscale cancelled in pass 2 of 3" in win.status_text.text()
    qtbot.waitUntil(lambda: win.generate_button.isEnabled())
    assert not win.upscaler.active and not win.cancel_button.isEnabled()


def test_cancel_between_two_passes_starts_no_further_pass(qtbot, win, engine, tmp_path):
    generated(qtbot, win)
    # Cancel the moment pass 1's run ends: its picture is still written, no pass 2 starts.
    win.run_ended.connect(lambda outcome: win.upscaler.active and win.cancel())
    with qtbot.waitSignal(win.upscale_ended, timeout=60000) as ended:
        assert win.upscale(4, output=str(tmp_path / "b-x4.png"))
    assert ended.args == ["cancelled"]
    assert len(engine.calls) == 2
    assert (tmp_path / "b-x2.png").is_file() and not (tmp_path / "b-x4.png").exists()


def test_an_opened_image_upscales_from_its_file_with_its_recipe(qtbot, win, engine, tmp_path):
    first = generated(qtbot, win)
    with qtbot.waitSignal(win.exported, timeout=20000):
        win.export(str(tmp_path / "mine.png"))
    with qtbot.waitSignal(win.result_ready, timeout=20000):
        win.open_image(str(tmp_path / "mine.png"))
    win.panel.set_request(win.panel.request().replace(seed=5, steps=1))  # not what the picture was made with
    with qtbot.waitSignal(win.upscale_ended, timeout=60000) as ended:
        assert win.upscale(2)
    assert ended.args == ["finished"]
    run = engine.calls[-1]
    assert run.init_image == str(tmp_path / "mine.png") and (run.seed, run.steps) == (first.request.seed, 2)
    assert (tmp_path / "mine-x2.png").is_file() and not (tmp_path / "mine-x1.png").exists()


def test_the_dialog_names_the_bad_field_and_its_allowed_values(qtbot, win, engine, tmp_path):
    generated(qtbot, win)
    box = win.upscale_dialog()
    assert box.isVisible() and box.output.text().endswith("-x2.png")
    box.scale.setCurrentIndex(box.scale.findData(4))
    assert box.output.text().endswith("-x4.png") and "512×512" in box.size_label.text()
    assert box.strength.minimum() > 0 and box.strength.maximum() == 1.0
    box.output.setText(str(tmp_path / "up.txt"))
    box.accept()
    assert box.isVisible() and box.error.isVisible()
    assert box.error.text().startswith("output:") and ".png" in box.error.text()
    box.output.setText(str(tmp_path / "nowhere" / "up.png"))
    box.accept()
    assert box.error.text().startswith("output: the folder") and box.isVisible()
    box.output.setText(str(tmp_path / "up.png"))
    box.strength.setValue(0.3)
    with qtbot.waitSignal(win.upscale_ended, timeout=60000) as ended:
        box.accept()
    assert ended.args == ["finished"] and not box.isVisible()
    assert [r.strength for r in engine.calls[1:]] == [0.3, 0.3]
    assert Path(tmp_path / "up.png").is_file() and Path(tmp_path / "up-x2.png").is_file()


def test_the_dialog_refuses_a_scale_past_the_size_limit(qtbot, win):
    generated(qtbot, win)
    box = win.upscale_dialog()
    box.source_size = (16384, 8192)
    box.scale.setCurrentIndex(box.scale.findData(8))
    box.accept()
    assert box.error.text() == "scale: ×8 makes 131072×65536 px; each side may be at most 65536 px"


def test_a_refused_upscale_says_why_and_leaves_the_app_ready(qtbot, win, engine, tmp_path):
    generated(qtbot, win)
    win.current.image = None  # dropped from memory...
    assert not win.upscale(2, output=str(tmp_path / "x-x2.png"))  # ...and never written: nothing to read
    assert win.last_error == "generate or open a picture first"
    win.current.path = str(tmp_path / "gone.png")  # a file since deleted: found out on the worker
    with qtbot.waitSignal(win.upscale_ended, timeout=20000) as ended:
        assert win.upscale(2, output=str(tmp_path / "x-x2.png"))
    assert ended.args == ["failed"]
    assert win.last_error.startswith("source: the picture is no longer in memory")
    assert win.status_text.text() == "The upscale failed"
    assert win.generate_button.isEnabled() and len(engine.calls) == 1
