"""The main window against the scriptable fake engine: a run from key press to history, cancel,
errors, the panel, seam inspection, files, and persisted settings."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from fake_engine import tile_colour
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent
from PySide6.QtWidgets import QMessageBox

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core.request import GenerationRequest
from paradiff_gui.engine.io.export import open_image
from paradiff_gui.engine.io.metadata import load_request, read_recipe, save_png
from paradiff_gui.engine.models.info import describe_model


def run_to_result(qtbot, window, start=None):
    with qtbot.waitSignal(window.result_ready, timeout=20000) as blocker:
        (start or window.generate)()
    return blocker.args[0]


def test_ctrl_enter_runs_and_the_result_lands_in_view_history_and_inspector(qtbot, window, fake):
    seen: list = []
    window.bridge.previews.connect(seen.extend)
    result = run_to_result(qtbot, window, lambda: qtbot.keyClick(window, Qt.Key.Key_Return,
                                                                  Qt.KeyboardModifier.ControlModifier))
    assert len(fake.calls) == 1 and fake.calls[0].width == 256
    assert {p.tile for p in seen} == set(range(9))  # every tile's preview arrived
    assert result.image.shape == (256, 256) and result.image.dtype == np.uint16
    assert window.canvas.layer is result.layer
    assert window.history.list.count() == 1
    assert window.act_export.isEnabled() and window.generate_button.isEnabled()
    assert not window.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: result.report is not None, timeout=20000)
    assert window.seams.table.rowCount() == len(result.report.seams) > 0
    assert "Seam score" in window.seams.summary.text()
    assert window.stats["outcome"] == "finished" and window.stats["stall_ticks"] > 0  # the monitor ran


def test_the_canvas_shows_previews_and_steps_while_running(qtbot, window, fake):
    fake.batch_seconds = 0.05
    window.act_relief.setChecked(False)  # grey levels: each tile's preview keeps the fake's colour
    window.panel.set_request(window.panel.request().replace(steps=20))
    window.generate()
    qtbot.waitUntil(lambda: len(window.canvas.tile_steps) == 9, timeout=10000)
    assert window.canvas.total_steps == 20
    assert window.progress.isVisible() and window.progress.maximum() == 20
    qtbot.waitUntil(lambda: "ETA" in window.step_label.text(), timeout=10000)
    # Pixels in a tile's own (unshared) corner, clear of its step label, are that tile's colour.
    window.canvas.set_in_flight(())  # the highlight tints the batch in flight
    img = window.canvas.grab().toImage()
    p = window.canvas.to_widget(QPointF(48, 48))
    dpr = img.devicePixelRatio()
    c = img.pixelColor(int(p.x() * dpr), int(p.y() * dpr))
    assert (c.red(), c.green(), c.blue()) == tile_colour(0)
    with qtbot.waitSignal(window.run_ended, timeout=10000):
        qtbot.keyClick(window, Qt.Key.Key_Escape)


def test_escape_cancels_within_a_batch_and_the_app_is_ready_for_the_next_run(qtbot, window, fake):
    fake.batch_seconds = 0.05
    window.panel.set_request(window.panel.request().replace(steps=200))
    window.generate()
    assert fake.batch_seen.wait(5)
    with qtbot.waitSignal(window.run_ended, timeout=5000) as blocker:
        qtbot.keyClick(window, Qt.Key.Key_Escape)
    assert blocker.args == ["cancelled"]
    assert window.stats["cancel_latency_s"] < 1.0  # one 50 ms batch, with room for a busy CI machine
    assert "Cancelled" in window.status_text.text()
    qtbot.waitUntil(lambda: window.generate_button.isEnabled())
    assert window.history.list.count() == 0  # a cancelled run writes and keeps nothing
    fake.batch_seconds = 0.0
    window.panel.set_request(window.panel.request().replace(steps=2))
    run_to_result(qtbot, window)
    assert window.history.list.count() == 1


def test_an_engine_error_shows_the_message_in_a_dialog_and_the_log(qtbot, window, fake, caplog):
    fake.fail_at_step = 1
    with qtbot.waitSignal(window.run_ended, timeout=10000) as blocker:
        window.generate()
    assert blocker.args == ["failed"]
    box = window.error_box
    assert isinstance(box, QMessageBox) and box.isVisible()
    assert box.text() == fake.fail_message
    assert fake.fail_message in caplog.text
    box.close()
    qtbot.waitUntil(lambda: window.generate_button.isEnabled())


def test_a_bad_request_is_refused_before_starting_with_the_field_named(qtbot, window, fake):
    window.panel.tiles_form.by_grid.setEnabled(True)
    with qtbot.waitSignal(window.plan_summary.ready):
        window.panel.tiles_form.overlap.setValue(128)  # = the terrain tile: not allowed
    assert "overlap" in window.panel.plan_info.text()
    assert window.generate() is False
    assert fake.calls == []
    assert window.error_box.isVisible() and window.error_box.text().startswith("overlap:")
    window.error_box.close()


def test_the_plan_is_drawn_before_generation_and_follows_the_editor(qtbot, window):
    p, t = window.panel, window.panel.tiles_form
    qtbot.waitUntil(lambda: len(window.canvas.tiles) == 9 and "9 tiles" in p.plan_info.text())
    with qtbot.waitSignal(window.plan_summary.ready):  # built off the GUI thread, once the edits pause
        p.size_form.width_.setValue(512)
    assert len(window.canvas.tiles) == 7 * 3 and "21 tiles" in p.plan_info.text()
    assert (t.rows.value(), t.cols.value()) == (3, 7)  # the derived grid is shown
    assert (window.canvas.image_w, window.canvas.image_h) == (512, 256)
    with qtbot.waitSignal(window.plan_summary.ready):
        t.overlap.setValue(32)
    # Tiles are spread evenly: the 256 px side needs 3 rows, so they overlap by 64, not 32.
    plan = describe_model("builtin:terrain").plan(p.request())
    assert plan.actual_overlap == (64, 32) and "overlap x 32 · y 64 px" in p.plan_info.text()
    assert "overhead" in p.plan_info.text() and "≈" in p.plan_info.text()


def test_panel_round_trips_a_request_and_shows_the_right_controls(qtbot, window, sd_folder):
    p = window.panel
    terrain = request_for("builtin:terrain", width=384, height=256, steps=5, seed=4_000_000_000,
                                          extra={"terrain_difficulty": 70}, jitter=True)
    p.set_request(terrain)
    assert p.request() == terrain
    assert not p.prompt_form.isVisibleTo(window) and p.options_form.isVisibleTo(window)
    assert not p.tiles_form.by_grid.isEnabled()  # the terrain model's tiles are fixed
    sd = GenerationRequest(model=str(sd_folder), prompt="a castle", negative_prompt="blur", width=1024, height=512,
                           grid=(2, 3), overlap=64, steps=7, guidance=5.5, sampler="euler_a", seed=9,
                           fusion="gaussian", global_context=0.5, tile_batch=3, device="cpu", dtype="fp32")
    p.set_request(sd)
    assert p.request() == sd
    assert p.prompt_form.isVisibleTo(window) and not p.options_form.isVisibleTo(window)
    assert describe_model(str(sd_folder)).scale == 8


def test_size_presets_keep_the_aspect_and_the_lock_links_width_and_height(window):
    p = window.panel.size_form
    p.width_.setValue(1024)
    p.height_.setValue(512)
    p.preset.setCurrentIndex(p.preset.findData(4096))
    p._preset_chosen(p.preset.currentIndex())
    assert (p.width_.value(), p.height_.value()) == (4096, 2048)
    p.aspect_lock.setChecked(True)
    p.width_.setValue(2048)
    assert p.height_.value() == 1024
    p.aspect_lock.setChecked(False)
    p.width_.setValue(1000)
    assert p.height_.value() == 1024


def test_an_unlocked_seed_changes_every_run_and_a_locked_one_does_not(qtbot, window, fake):
    window.panel.seed_lock.setChecked(False)
    run_to_result(qtbot, window)
    run_to_result(qtbot, window)
    window.panel.seed_lock.setChecked(True)
    run_to_result(qtbot, window)
    seeds = [r.seed for r in fake.calls]
    assert seeds[0] != seeds[1] and seeds[2] == seeds[1]


def test_clicking_a_seam_zooms_to_it_at_100_percent(qtbot, window):
    result = run_to_result(qtbot, window)
    qtbot.waitUntil(lambda: result.report is not None, timeout=20000)
    table = window.seams.table
    table.sortItems(0, Qt.SortOrder.DescendingOrder)
    seam = window.seams.seam_at(0)
    assert seam.ratio == max(s.ratio for s in result.report.seams)
    rect = table.visualItemRect(table.item(0, 0))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert window.canvas.device_scale() == pytest.approx(1.0)
    centre = window.canvas.center
    assert (centre.x() if seam.orientation == "vertical" else centre.y()) == pytest.approx(seam.position)
    # The overlay toggles reach the canvas.
    window.seams.heatmap.setChecked(True)
    window.seams.overlaps.setChecked(True)
    window.seams.borders.setChecked(False)
    assert window.canvas.show_heatmap and window.canvas.show_overlaps and not window.canvas.show_borders
    assert window.canvas.heat is result.heat


def test_history_views_old_results_and_reuses_their_settings(qtbot, window):
    first = run_to_result(qtbot, window)
    window.panel.set_request(window.panel.request().replace(seed=77, steps=2))
    second = run_to_result(qtbot, window)
    assert window.history.list.count() == 2 and window.current is second
    item = window.history.list.item(1)  # newest first
    rect = window.history.list.visualItemRect(item)
    qtbot.mouseClick(window.history.list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert window.current is first and window.canvas.layer is first.layer
    window.history.reuse_button.click()
    assert window.panel.request() == first.request


def test_export_writes_every_format_with_the_recipe(qtbot, window, tmp_path):
    result = run_to_result(qtbot, window)
    for name in ("out.png", "out.tif", "out.webp", "out.jpg"):
        path = tmp_path / name
        with qtbot.waitSignal(window.exported, timeout=20000):
            window.export(str(path))
        assert read_recipe(path)["request"] == result.request.to_dict()
    assert open_image(tmp_path / "out.png").dtype == np.uint16  # 16-bit heightmap kept
    assert np.array_equal(open_image(tmp_path / "out.tif"), result.image)


def test_a_failed_export_says_why_and_keeps_the_result(qtbot, window, tmp_path, monkeypatch):
    result = run_to_result(qtbot, window)
    tmp_path = tmp_path / "exports"
    tmp_path.mkdir()
    # A folder that cannot be made (its parent is a file)...
    (tmp_path / "file").write_text("x")
    with qtbot.waitSignal(window.export_failed, timeout=20000) as blocker:
        window.export(str(tmp_path / "file" / "out.png"))
    assert "file" in blocker.args[0] and window.error_box.isVisible()
    window.error_box.close()
    # ...and a full disk mid-write: the older file of that name survives untouched.
    (tmp_path / "out.png").write_bytes(b"older")

    def full(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with qtbot.waitSignal(window.export_failed, timeout=20000) as blocker:
        window.export(str(tmp_path / "out.png"))
    assert "No space left on device" in blocker.args[0]
    assert (tmp_path / "out.png").read_bytes() == b"older"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out.png"]
    assert window.current is result and result.image is not None and window.act_export.isEnabled()


def test_open_image_takes_the_plan_from_metadata_or_from_the_editor(qtbot, window, tmp_path):
    req = request_for("builtin:terrain", width=384, height=256, seed=3)
    plan = describe_model(req.model).plan(req)
    img = (np.random.default_rng(0).random((256, 384)) * 60000).astype(np.uint16)
    save_png(tmp_path / "p.png", img, req, plan, {"model_name": "terrain"})
    with qtbot.waitSignal(window.result_ready, timeout=20000) as blocker:
        window.open_image(str(tmp_path / "p.png"))
    opened = blocker.args[0]
    assert opened.request == req and opened.tiles == [plan.image_rect(t) for t in plan.tiles]
    assert "Paradiff metadata" in window.status_text.text()
    Image.fromarray(np.zeros((200, 300, 3), np.uint8)).save(tmp_path / "plain.png")
    window.panel.tiles_form.overlap.setValue(32)
    with qtbot.waitSignal(window.result_ready, timeout=20000) as blocker:
        window.open_image(str(tmp_path / "plain.png"))
    plain = blocker.args[0]
    assert plain.request is None and len(plain.tiles) > 1 and "tile editor" in window.status_text.text()
    # A picture without a recipe still exports (without one).
    with qtbot.waitSignal(window.exported, timeout=20000):
        window.export(str(tmp_path / "plain-copy.jpg"))
    assert open_image(tmp_path / "plain-copy.jpg").shape == (200, 300, 3)


def test_opening_a_broken_file_is_a_plain_error(qtbot, window, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    window.open_image(str(bad))
    qtbot.waitUntil(lambda: window.error_box is not None and window.error_box.isVisible(), timeout=10000)
    assert "bad.png" in window.error_box.text()


def test_save_and_load_request_and_drop_a_paradiff_png(qtbot, window, tmp_path):
    window.panel.set_request(window.panel.request().replace(seed=1234, steps=6))
    assert window.save_request(str(tmp_path / "r.json"))
    assert load_request(tmp_path / "r.json") == window.panel.request()
    window.panel.set_request(window.panel.request().replace(seed=1))
    assert window.load_request(str(tmp_path / "r.json")) and window.panel.request().seed == 1234
    # Dropping a Paradiff PNG restores its request.
    req = request_for("builtin:terrain", width=256, height=384, seed=99, steps=4)
    save_png(tmp_path / "d.png", np.zeros((384, 256), np.uint16), req, describe_model(req.model).plan(req), {})
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path / "d.png"))])
    enter = QDragEnterEvent(QPoint(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                            Qt.KeyboardModifier.NoModifier)
    window.dragEnterEvent(enter)
    assert enter.isAccepted()
    with qtbot.waitSignal(window.result_ready, timeout=20000):
        window.drop_file(str(tmp_path / "d.png"))
    assert window.panel.request() == req
    # A malformed request file: a plain message naming the problem, the panel untouched.
    (tmp_path / "bad.json").write_text(json.dumps({"width": "wide"}))
    assert not window.load_request(str(tmp_path / "bad.json"))
    assert window.error_box.text().startswith("width:")
    assert window.panel.request() == req
    # A model option out of its range is refused by name, not shown clamped.
    window.error_box.close()
    (tmp_path / "rough.json").write_text(req.replace(extra={"terrain_difficulty": 500}).to_json())
    assert not window.load_request(str(tmp_path / "rough.json"))
    assert window.error_box.text().startswith("terrain_difficulty: must be from 1 to 100, got 500")
    assert window.panel.request() == req


def test_settings_and_geometry_persist(qtbot, make_window, settings, fake):
    w = make_window(fake)
    w.panel.set_request(request_for("builtin:terrain", width=640, height=384, seed=5, steps=3))
    w.resize(1100, 700)
    w.seams.overlaps.setChecked(True)
    w.close()
    w2 = make_window(fake)
    req = w2.panel.request()
    assert (req.width, req.height, req.seed, req.steps) == (640, 384, 5, 3)
    assert w2.seams.overlaps.isChecked()
    assert settings.value("window/geometry") is not None


def test_the_time_estimate_learns_from_a_run(qtbot, window, fake):
    fake.batch_seconds = 0.01
    run_to_result(qtbot, window)
    speed = window.seconds_per_view("builtin:terrain", "cpu")
    assert speed is not None and 0 < speed < 1


def test_keeping_a_core_free_limits_the_cpu_pools_and_persists(qtbot, window, settings):
    from paradiff_gui.engine.runtime import devices

    try:
        window.panel.spare_core.setChecked(True)
        run_to_result(qtbot, window)
        assert devices.cpu_threads() == max(1, (os.cpu_count() or 2) - 1)
        window.panel.spare_core.setChecked(False)
        run_to_result(qtbot, window)
        assert devices.cpu_threads() is None
        window.panel.spare_core.setChecked(True)
        window.save_settings()
        assert settings.value("performance/spare_core", type=bool) is True
    finally:
        devices.set_cpu_threads(None)


def test_history_keeps_full_pictures_within_its_memory_budget(qtbot, window, monkeypatch):
    window.session.budget = 2 * 256 * 256 * 2  # two 256² 16-bit maps
    results = [run_to_result(qtbot, window) for _ in range(3)]
    assert [r.image is not None for r in results] == [False, True, True]
    assert window.history.list.item(2).text().endswith("(not in memory)")
    window.show_result(results[0])
    assert not window.act_export.isEnabled()  # nothing to export, said in the title; the thumbnail stays
    window.history.list.setCurrentRow(2)
    window.history.reuse_button.click()
    assert window.panel.request() == results[0].request


def test_zoom_shortcuts_and_a_real_drop_event(qtbot, window, tmp_path):
    from PySide6.QtGui import QDropEvent

    qtbot.waitUntil(lambda: window.canvas.image_w == 256)  # the plan (and canvas size) are built off-thread
    window.canvas.setFocus()
    qtbot.keyClick(window.canvas, Qt.Key.Key_1, Qt.KeyboardModifier.ControlModifier)
    assert window.canvas.device_scale() == pytest.approx(1.0)
    assert window.zoom_label.text() == "100 %"
    qtbot.keyClick(window.canvas, Qt.Key.Key_0, Qt.KeyboardModifier.ControlModifier)
    assert window.canvas.visible_image_rect().width() == pytest.approx(256)
    req = request_for("builtin:terrain", width=128, height=128, seed=5, steps=2)
    (tmp_path / "r.json").write_text(req.to_json())
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path / "r.json"))])
    drop = QDropEvent(QPointF(20, 20), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                      Qt.KeyboardModifier.NoModifier)
    window.dropEvent(drop)
    assert window.panel.request() == req


def test_every_result_is_autosaved_until_exported_and_offered_back_after_a_crash(qtbot, make_window, fake,
                                                                                  tmp_path):
    from PySide6.QtWidgets import QMessageBox

    autosave = tmp_path / "autosave"
    w = make_window(fake)
    w.panel.set_request(request_for("builtin:terrain", width=256, height=128, steps=2, seed=8))
    with qtbot.waitSignal(w.autosaved, timeout=20000) as saved:
        w.generate()
    first = saved.args[0]
    assert read_recipe(first)["request"]["seed"] == 8 and open_image(first).dtype == np.uint16
    qtbot.waitUntil(lambda: w.current is not None, timeout=20000)
    with qtbot.waitSignal(w.exported, timeout=20000):
        w.export(str(tmp_path / "kept.png"))
    assert not os.path.exists(first)  # exported: the autosave is gone
    with qtbot.waitSignal(w.autosaved, timeout=20000) as saved:
        w.generate()
    second = saved.args[0]
    # A crash now: the second picture was never exported. The next start offers it back.
    w2 = make_window(fake, autosave_dir=autosave)
    assert w2.recoverable == [autosave / os.path.basename(second)]
    box = w2.recover_box
    assert box is not None and box.isVisible() and "1 finished picture" in box.text()
    with qtbot.waitSignal(w2.result_ready, timeout=20000) as opened:
        box.button(QMessageBox.StandardButton.Open).click()
    recovered = opened.args[0]
    assert recovered.request.seed == 8 and recovered.autosave == second
    assert w2.history.list.count() == 1
    # "Later" keeps them for the next start; "Discard" deletes them.
    w3 = make_window(fake, autosave_dir=autosave)
    w3.recover_box.button(QMessageBox.StandardButton.Ignore).click()
    assert os.path.exists(second) and w3.recoverable
    w3.recover("discard")
    assert not os.path.exists(second)
