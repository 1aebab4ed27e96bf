"""File → Restyle…: a picture as the starting canvas of an image-to-image run (the panel remembers
it, the canvas draws it under the plan), View → Compare with source, and the refusals."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from fake_engine import FakeEngine

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.io.export import save_plain
from paradiff_gui.engine.io.metadata import load_request, read_recipe
from paradiff_gui.qt.widgets.restyle import restyle_size


def heightmap(path: Path, w: int, h: int) -> Path:
    """A 16-bit heightmap: dark left half, bright right half (so a view of it is easy to tell)."""
    a = np.full((h, w), 8000, np.uint16)
    a[:, w // 2:] = 50000
    a[: h // 4, :] += np.arange(w, dtype=np.uint16)[None, :]  # not flat: the percentile stretch has a range
    save_plain(path, a)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def win(make_window, engine):
    w = make_window(engine, interactive=False)
    w.panel.set_request(request_for("builtin:terrain", width=128, height=128, steps=2, seed=21))
    return w


def restyled(qtbot, w, *args, **kw):
    with qtbot.waitSignal(w.restyling.restyled, timeout=30000) as blocker:
        assert w.restyling.restyle(*args, **kw)
    return blocker.args


def test_rounding_follows_the_requests_multiple():
    assert restyle_size(100, 61, 1) == (96, 64)  # 12.5 rounds to even, as the engine rounds
    assert restyle_size(100, 61, 2) == (200, 120)
    assert restyle_size(100, 61, 4) == (400, 240)


def test_the_dialog_builds_the_request_and_the_run_writes_the_output(qtbot, win, engine, tmp_path):
    src = heightmap(tmp_path / "hills.png", 100, 61)
    before = digest(src)
    box = win.restyling.dialog()
    box._set_source(str(src))
    qtbot.waitUntil(lambda: box.size_label.text() == "100×61 → 96×64 px", timeout=5000)
    assert box.anchor.currentData() == 0  # keep the size: anchor off
    box.scale.setCurrentIndex(box.scale.findData(2))
    assert box.size_label.text() == "100×61 → 200×120 px" and box.anchor.currentData() == 2
    assert box.output.text() == str(tmp_path / "hills-restyled-x2.png")
    box.strength.setValue(0.45)
    with qtbot.waitSignal(win.restyling.restyled, timeout=30000) as blocker:
        box.accept()
    assert blocker.args == ["finished", str(tmp_path / "hills-restyled-x2.png")]
    run = engine.calls[-1]
    assert (run.init_image, run.strength, run.anchor, run.width, run.height) == (str(src), 0.45, 2, 200, 120)
    assert run.global_context == 0 and run.seed == 21
    written = load_request(tmp_path / "hills-restyled-x2.png")
    assert written.init_image == str(src) and written.strength == 0.45
    assert digest(src) == before  # the source is never written
    # The panel remembers the starting picture: Generate re-runs the restyle.
    form = win.panel.start_form
    assert form.isVisibleTo(win.panel) and form.path == str(src) and form.strength.value() == 0.45
    assert win.panel.request().init_image == str(src)
    with qtbot.waitSignal(win.result_ready, timeout=20000):
        assert win.generate()
    assert engine.calls[-1].init_image == str(src) and engine.calls[-1].anchor == 2
    assert win.current.path is None  # Generate's own result: not the restyle's file


def test_the_source_is_drawn_under_the_plan_while_it_runs(qtbot, win, engine, tmp_path):
    src = heightmap(tmp_path / "under.png", 128, 128)
    win.results.set_relief(False)
    engine.batch_seconds = 1.0  # no tile's preview lands before the look below
    with qtbot.waitSignal(win.restyling.restyled, timeout=30000) as ended:
        assert win.restyling.restyle(str(src), output=str(tmp_path / "o.png"))
        qtbot.waitUntil(lambda: win.runner.active, timeout=10000)
        c = win.canvas
        assert c.underlay is not None and (c.underlay.width(), c.underlay.height()) == (128, 128)
        assert not c.tile_steps
        shot = c.grab().toImage()
        left, right = (shot.pixelColor(round(c.width() / 2 + dx * c.scale), c.height() // 2).value()
                       for dx in (-40, 40))
        assert right > left + 60  # dark left half, bright right half: the source, under the plan
        win.cancel()
    assert ended.args[0] == "cancelled" and not (tmp_path / "o.png").exists()


def test_compare_flips_between_the_source_and_the_result(qtbot, win, tmp_path):
    win.results.set_relief(False)
    src = heightmap(tmp_path / "ab.png", 128, 128)
    assert not win.act_compare.isEnabled()  # nothing shown yet
    with qtbot.waitSignal(win.result_ready, timeout=30000):
        assert win.restyling.restyle(str(src), output=str(tmp_path / "ab-out.png"))
    assert win.act_compare.isEnabled()
    c = win.canvas
    x_left, x_right, y = round(c.width() / 2 - 40 * c.scale), round(c.width() / 2 + 40 * c.scale), c.height() // 2
    result_shot = c.grab().toImage()
    with qtbot.waitSignal(win.restyling.compare_shown, timeout=10000) as shown:
        win.act_compare.trigger()
    assert shown.args == [True]
    source_shot = c.grab().toImage()
    assert source_shot.pixelColor(x_left, y).value() < 40 and source_shot.pixelColor(x_right, y).value() > 215
    assert source_shot != result_shot
    with qtbot.waitSignal(win.restyling.compare_shown, timeout=10000) as shown:
        win.act_compare.trigger()
    assert shown.args == [False] and c.grab().toImage() == result_shot


def test_reuse_settings_and_save_request_keep_the_starting_picture(qtbot, win, tmp_path):
    src = heightmap(tmp_path / "keep.png", 128, 128)
    with qtbot.waitSignal(win.result_ready, timeout=30000):
        win.restyling.restyle(str(src), strength=0.3, output=str(tmp_path / "keep-out.png"))
    result = win.current
    win.panel.start_form.clear()
    assert win.panel.request().init_image is None and not win.panel.start_form.isVisibleTo(win.panel)
    win.history.reuse.emit(result)
    form = win.panel.start_form
    assert form.path == str(src) and form.strength.value() == 0.3 and form.isVisibleTo(win.panel)
    assert win.panel.request() == result.request
    assert win.save_request(str(tmp_path / "r.json"))
    assert load_request(tmp_path / "r.json").init_image == str(src)


def test_a_deleted_source_is_said_plainly_and_generate_refuses(qtbot, win, engine, tmp_path):
    src = heightmap(tmp_path / "gone.png", 128, 128)
    with qtbot.waitSignal(win.result_ready, timeout=30000):
        win.restyling.restyle(str(src), output=str(tmp_path / "gone-out.png"))
    result = win.current
    src.unlink()
    win.history.reuse.emit(result)
    form = win.panel.start_form
    qtbot.waitUntil(lambda: form.found is False, timeout=5000)
    assert form.path_label.text() == f"Starting picture not found: {src} — choose it again or clear it"
    calls = len(engine.calls)
    assert not win.generate()
    assert win.last_error == f"init_image: Starting picture not found: {src} — choose it again or clear it"
    assert len(engine.calls) == calls
    # Another picture can still be chosen; Clear lets Generate paint from noise again.
    form.clear()
    assert win.panel.request().init_image is None


def test_bad_input_is_refused_by_name_and_nothing_is_written(qtbot, win, engine, tmp_path):
    src = heightmap(tmp_path / "src.png", 128, 128)
    colour = tmp_path / "colour.png"
    save_plain(colour, np.full((64, 64, 3), 120, np.uint8))
    out = tmp_path / "never.png"
    cases = [
        ((str(colour),), "init_image: colour.png is a colour picture; this model starts from a grayscale heightmap"),
        ((str(src),), "strength: must be a number above 0 and at most 1, got 1.5"),
        ((str(src),), "anchor: the result shrunk N× keeps the init image shrunk N×: must be 0 (off) or"),
        ((str(tmp_path / "missing.png"),), "init_image: no such file"),
        ((str(src),), "scale: must be 1 (keep the size), 2 or 4; got 3"),
        ((str(src),), "output: "),
    ]
    extra = [{}, {"strength": 1.5}, {"anchor": 3}, {}, {"scale": 3}, {"output": str(src)}]
    for (args, message), kw in zip(cases, extra):
        kw.setdefault("output", str(out))
        outcome, said = restyled(qtbot, win, *args, **kw)
        assert outcome == "refused" and said.startswith(message), said
        assert win.last_error == said
    assert engine.calls == [] and not out.exists()


def test_a_canvas_over_the_host_memory_budget_is_refused_before_any_run(qtbot, win, engine, tmp_path):
    src = heightmap(tmp_path / "big.png", 1024, 1024)
    win.panel.set_request(win.panel.request().replace(host_memory=0.5, device="cpu"))
    outcome, said = restyled(qtbot, win, str(src), scale=4, output=str(tmp_path / "big-x4.png"))
    assert outcome == "refused" and said.startswith("host_memory: the run needs ≈"), said
    assert engine.calls == [] and not (tmp_path / "big-x4.png").exists()


def test_the_underlay_follows_the_relief_view(qtbot, win, tmp_path):
    src = heightmap(tmp_path / "relief.png", 128, 128)
    win.panel.set_request(request_for("builtin:terrain", width=128, height=128, steps=2, init_image=str(src)))
    qtbot.waitUntil(lambda: win.canvas.underlay is not None, timeout=5000)
    shaded = win.canvas.underlay.copy()
    win.act_relief.setChecked(not win.act_relief.isChecked())
    qtbot.waitUntil(lambda: win.canvas.underlay is not None and win.canvas.underlay != shaded, timeout=5000)


def test_real_terrain_restyle_records_the_source_in_the_recipe(qtbot, make_window, tmp_path):
    w = make_window(interactive=False)  # the real engine
    w.panel.set_request(request_for("builtin:terrain", width=128, height=128, steps=2, seed=4, device="cpu"))
    src = heightmap(tmp_path / "real.png", 128, 128)
    before = digest(src)
    with qtbot.waitSignal(w.restyling.restyled, timeout=180000) as blocker:
        assert w.restyling.restyle(str(src), strength=0.5, output=str(tmp_path / "real-out.png"))
    assert blocker.args == ["finished", str(tmp_path / "real-out.png")], w.last_error
    recipe = read_recipe(tmp_path / "real-out.png")
    assert recipe["request"]["init_image"] == str(src) and recipe["request"]["strength"] == 0.5
    assert recipe["info"]["init_image_sha256"] == before and recipe["info"]["init_image_size"] == [128, 128]
    assert digest(src) == before
    qtbot.waitUntil(lambda: w.current is not None and w.current.path == str(tmp_path / "real-out.png"),
                    timeout=20000)


def test_a_request_without_a_strength_comes_back_without_one(win, tmp_path):
    src = str(heightmap(tmp_path / "plain.png", 64, 64))
    shown = request_for("builtin:terrain", width=128, height=128, steps=2, seed=3, init_image=src)
    win.panel.set_request(shown)
    assert win.panel.start_form.strength.value() == 0.6 and win.panel.request() == shown
    win.panel.start_form.strength.setValue(0.7)
    assert win.panel.request().strength == 0.7


def test_a_huge_source_is_shown_shrunk_in_its_own_depth():
    from paradiff_gui.qt.restyle import DISPLAY_PX, display_pixels

    a = np.zeros((300, 9000), np.uint16)
    a[:, 4500:] = 60000
    a[0, 0] = 1000  # a range for the grey stretch
    shown = display_pixels(a, relief=False)
    assert shown.shape == (75, 2250, 4) and max(shown.shape[:2]) <= DISPLAY_PX
    assert shown[40, 100, 0] < 10 and shown[40, 2000, 0] > 245  # left dark, right bright: 16-bit kept
