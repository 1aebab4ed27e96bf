"""Refine selection…: the selection on the canvas (rectangle, brush, mask file) at image px, and the
refine run through the app's run path — exact outside the selection, its recipe written, cancel
and bad inputs writing nothing."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from fake_engine import FakeEngine
from PIL import Image
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.io.export import open_image, save_image
from paradiff_gui.engine.io.metadata import read_recipe
from paradiff_gui.engine.models.info import describe_model
from paradiff_gui.qt.widgets.selection import Selection, SelectionTool, full_mask

Btn = Qt.MouseButton


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_file(path, size=256, steps=2):
    """A terrain picture of ``size``² with its recipe (smooth, 16-bit), written by the test."""
    request = request_for("builtin:terrain", width=size, height=size, steps=steps, seed=3)
    yy, xx = np.mgrid[0:size, 0:size]
    image = ((np.sin(xx / 19.0) * np.cos(yy / 13.0) + 1.2) * 25000).astype(np.uint16)
    save_image(path, image, request, describe_model(request.model).plan(request), {})
    return path


def opened(qtbot, win, path):
    with qtbot.waitSignal(win.result_ready, timeout=20000) as blocker:
        win.open_image(str(path))
    return blocker.args[0]


def refined(qtbot, win, timeout=120000, **kw):
    with qtbot.waitSignal(win.refining.ended, timeout=timeout) as ended:
        assert win.refining.refine(**kw)
    return ended.args


def send(canvas, kind, pos, button=Btn.LeftButton, buttons=Btn.LeftButton, mods=Qt.KeyboardModifier.NoModifier):
    p = QPointF(*pos)
    QApplication.sendEvent(canvas, QMouseEvent(kind, p, canvas.mapToGlobal(p), button, buttons, mods))


def drag(canvas, points, button=Btn.LeftButton, mods=Qt.KeyboardModifier.NoModifier):
    """Press at the first widget point, move through the others, release at the last."""
    send(canvas, QEvent.Type.MouseButtonPress, points[0], button, button, mods)
    for pt in points[1:]:
        send(canvas, QEvent.Type.MouseMove, pt, Btn.NoButton, button, mods)
    send(canvas, QEvent.Type.MouseButtonRelease, points[-1], button, Btn.NoButton, mods)


# -- the selection ------------------------------------------------------------------------------


def test_a_brush_stroke_selects_its_band_at_image_px_and_erase_takes_it_back(qtbot):
    sel = Selection(256, 256)
    sel.stroke([QPointF(50, 60), QPointF(150, 60)], 20)
    m = full_mask(sel.mask, 256, 256)
    assert m.shape == (256, 256)
    ys, xs = np.nonzero(m > 127)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == pytest.approx((40, 159, 50, 69), abs=1)
    assert sel.painted_box() == pytest.approx((40, 50, 160, 70), abs=1)
    assert m[60, 100] == 255 and m[100, 100] == 0 and m[60, 200] == 0
    sel.stroke([QPointF(100, 40), QPointF(100, 80)], 10, erase=True)
    m = full_mask(sel.mask, 256, 256)
    assert m[60, 100] == 0 and m[60, 60] == 255 and m[60, 140] == 255
    sel.stroke([QPointF(30, 20), QPointF(200, 20)], 600, erase=True)  # everything
    assert sel.painted_box() is None and not full_mask(sel.mask, 256, 256).any()


def test_a_16k_wide_picture_is_painted_on_a_downscaled_mask_that_maps_back(qtbot):
    sel = Selection(16384, 8192)
    assert sel.scale == 0.25 and sel.mask_size() == (4096, 2048)
    sel.stroke([QPointF(8000, 3000), QPointF(8800, 3000)], 400)
    assert (sel.mask.width(), sel.mask.height()) == (4096, 2048)  # never a full-size buffer on this thread
    box = sel.painted_box()
    assert box == pytest.approx((7800, 2800, 9000, 3200), abs=8)
    m = full_mask(sel.mask, 16384, 8192)
    assert m.shape == (8192, 16384)
    ys, xs = np.nonzero(m > 127)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == pytest.approx((7800, 9000, 2800, 3200), abs=8)
    assert m[3000, 8400] == 255 and m[3000, 7000] == 0 and m[4000, 8400] == 0


def test_the_canvas_drags_a_rectangle_and_paints_with_the_brush(qtbot, canvas):
    canvas.set_canvas_size(256, 256)
    sel = Selection(256, 256)
    tool = SelectionTool(canvas, sel)
    canvas.tool = tool
    tool.tool = "rect"
    a, b = canvas.to_widget(QPointF(40, 50)), canvas.to_widget(QPointF(120, 90))
    drag(canvas, [(a.x(), a.y()), ((a.x() + b.x()) / 2, a.y() + 5), (b.x(), b.y())])
    assert sel.kind == "rect" and sel.rect == pytest.approx((40, 50, 120, 90), abs=1)
    # Outside the picture: clamped to its edge.
    far = canvas.to_widget(QPointF(400, 400))
    drag(canvas, [(a.x(), a.y()), (far.x(), far.y())])
    assert sel.rect == pytest.approx((40, 50, 256, 256), abs=1)
    tool.tool = "brush"
    tool.brush = 16
    p, q = canvas.to_widget(QPointF(30, 200)), canvas.to_widget(QPointF(220, 200))
    drag(canvas, [(p.x(), p.y()), (q.x(), q.y())])
    m = full_mask(sel.mask, 256, 256)
    assert sel.kind == "brush" and m[200, 120] == 255 and m[150, 120] == 0
    # The right button erases, so does Shift.
    e, f = canvas.to_widget(QPointF(120, 180)), canvas.to_widget(QPointF(120, 220))
    drag(canvas, [(e.x(), e.y()), (f.x(), f.y())], Btn.RightButton)
    g, h = canvas.to_widget(QPointF(60, 180)), canvas.to_widget(QPointF(60, 220))
    drag(canvas, [(g.x(), g.y()), (h.x(), h.y())], mods=Qt.KeyboardModifier.ShiftModifier)
    m = full_mask(sel.mask, 256, 256)
    assert m[200, 120] == 0 and m[200, 60] == 0 and m[200, 90] == 255
    qtbot.keyClick(canvas, Qt.Key.Key_Escape)
    assert sel.kind == "" and sel.empty


# -- the refine run (fake engine: fast; it records the known picture it was given) ----------------


@pytest.fixture
def pics(tmp_path):
    """A folder of the test's pictures only (the window keeps its settings beside it)."""
    (tmp_path / "pics").mkdir()
    return tmp_path / "pics"


@pytest.fixture
def fwin(make_window):
    return make_window(FakeEngine())


def test_the_run_gets_the_sub_canvas_and_its_known_picture_and_previews_land_in_place(qtbot, fwin, pics):
    src = source_file(pics / "land.png")
    opened(qtbot, fwin, src)
    # The refine runs with the panel's settings (what the person sees and edits), not the picture's recipe.
    fwin.panel.set_request(request_for("builtin:terrain", steps=3, seed=5, extra={"terrain_difficulty": 77}))
    fwin.refining.selection.set_rect((96, 96, 160, 160))
    rects: list = []
    fwin.bridge.previews.connect(lambda batch: rects.extend(p.rect for p in batch))
    assert refined(qtbot, fwin, strength=0.5, feather=8) == ["finished", str(pics / "land-refined.png")]
    job = fwin.refining.job
    run, known = fwin.runner.engine.calls[-1], fwin.runner.engine.knowns[-1]
    x0, y0, x1, y1 = job.box
    assert (run.width, run.height, run.strength) == (x1 - x0, y1 - y0, 0.5) and run.init_image == str(src)
    assert (run.extra["terrain_difficulty"], run.steps, run.seed) == (77, 3, 5)
    assert known.mask.shape == (y1 - y0, x1 - x0) and known.pixels.shape[:2] == (y1 - y0, x1 - x0)
    # Every tile preview landed inside the sub-canvas's place on the 256² picture.
    assert rects and all(x0 <= a and y0 <= b and c <= x1 and d <= y1 for a, b, c, d in rects)
    assert min(r[0] for r in rects) == x0 and min(r[1] for r in rects) == y0
    result = fwin.current
    assert result.image.shape == (256, 256) and result.path == str(pics / "land-refined.png")
    assert fwin.canvas.image_w == 256 and fwin.history.results[-1] is result
    assert min(t[0] for t in result.tiles) == x0  # the seam inspector reads the tiles where they ran


def test_cancel_writes_nothing_and_removes_the_painted_mask(qtbot, make_window, pics):
    engine = FakeEngine(batch_seconds=0.05)
    win = make_window(engine)
    src = source_file(pics / "land.png")
    opened(qtbot, win, src)
    before = sha(src)
    win.refining.selection.stroke([QPointF(60, 60), QPointF(180, 180)], 40)
    with qtbot.waitSignal(win.refining.ended, timeout=60000) as ended:
        assert win.refining.refine(feather=4)
        qtbot.waitUntil(lambda: win.runner.active and engine.batch_seen.is_set(), timeout=20000)
        assert (pics / "land-refined-mask.png").is_file()  # written for the run's recipe...
        win.cancel()
    assert ended.args[0] == "cancelled"
    qtbot.waitUntil(lambda: win.jobs.pending == 0)
    assert sorted(p.name for p in pics.iterdir()) == ["land.png"]  # ...and gone again
    assert sha(src) == before
    # Back to the picture, its selection kept: ready to refine again.
    assert win.current.path == str(src) and win.canvas.image_w == 256 and not win.refining.selection.empty
    assert win.act_refine.isEnabled() and win.refining.act_brush.isEnabled()


@pytest.mark.parametrize(("setup", "kw", "field"), [
    (None, {}, "selection: is empty"),
    ((10, 10, 100, 100), {"strength": 1.5}, "strength: must be a number above 0 and at most 1; got 1.5"),
    ((10, 10, 100, 100), {"strength": 0}, "strength: must be a number above 0"),
    ((10, 10, 100, 100), {"feather": 5000}, "feather: must be a whole number from 0 to 1024; got 5000"),
    ((10, 10, 100, 100), {"feather": -1}, "feather: must be a whole number from 0 to 1024"),
])
def test_bad_values_are_refused_naming_the_field_before_anything_runs(qtbot, fwin, pics, setup, kw, field):
    src = source_file(pics / "land.png")
    opened(qtbot, fwin, src)
    if setup is not None:
        fwin.refining.selection.set_rect(setup)
    assert not fwin.refining.refine(**kw)
    assert fwin.last_error.startswith(field)
    assert not fwin.refining.active and fwin.runner.engine.calls == []


@pytest.mark.parametrize(("rect", "output", "field"), [
    ((200, 200, 300, 300), None, "rect: must lie inside the 256x256 picture"),
    ((50, 50, 50, 90), None, "rect: is empty"),
    ((10, 10, 100, 100), "land.png", "output: "),
])
def test_a_selection_outside_the_picture_or_the_source_as_output_writes_nothing(qtbot, fwin, pics, rect,
                                                                                 output, field):
    src = source_file(pics / "land.png")
    opened(qtbot, fwin, src)
    before = sha(src)
    fwin.refining.selection.set_rect(rect)
    out = None if output is None else str(pics / output)
    assert refined(qtbot, fwin, output=out)[0] == "failed"
    assert fwin.last_error.startswith(field)
    assert sorted(p.name for p in pics.iterdir()) == ["land.png"]
    assert sha(src) == before and fwin.runner.engine.calls == []


def test_a_brush_selection_erased_to_nothing_is_refused_on_the_worker_writing_nothing(qtbot, fwin, pics):
    src = source_file(pics / "land.png")
    opened(qtbot, fwin, src)
    sel = fwin.refining.selection
    sel.stroke([QPointF(60, 60), QPointF(120, 60)], 20)
    sel.stroke([QPointF(0, 60), QPointF(256, 60)], 100, erase=True)
    assert refined(qtbot, fwin)[0] == "failed"
    assert fwin.last_error.startswith("selection: is empty")
    assert sorted(p.name for p in pics.iterdir()) == ["land.png"] and fwin.runner.engine.calls == []


def test_mask_files_a_mode_is_refused_by_name_another_size_is_resized_with_a_note(qtbot, fwin, pics):
    src = source_file(pics / "land.png")
    opened(qtbot, fwin, src)
    Image.new("RGB", (256, 256), (255, 255, 255)).save(pics / "colour.png")
    fwin.refining.load_mask(str(pics / "colour.png"))
    qtbot.waitUntil(lambda: fwin.last_error is not None)
    assert fwin.last_error.startswith("mask: colour.png must be a grayscale image") and fwin.refining.selection.empty
    small = np.zeros((128, 128), np.uint8)
    small[32:64, 32:64] = 255
    Image.fromarray(small).save(pics / "small.png")
    fwin.refining.load_mask(str(pics / "small.png"))
    qtbot.waitUntil(lambda: fwin.refining.selection.kind == "file")
    assert "resized to the picture's 256x256" in fwin.statusBar().currentMessage()
    status: list = []
    fwin.runner.notice.connect(status.append)
    assert refined(qtbot, fwin, feather=0)[0] == "finished"
    assert any("resized" in s for s in status)
    rec = read_recipe(pics / "land-refined.png")["info"]["refine"]
    assert rec["mask"] == str(pics / "small.png") and rec["box"][0] <= 64 and rec["box"][2] >= 128


# -- the real engine on the built-in terrain model -----------------------------------------------


def test_real_refine_is_exact_outside_the_feathered_rect_and_writes_its_recipe(qtbot, make_window, pics):
    win = make_window()  # the real engine
    src = source_file(pics / "land.png", steps=2)
    opened(qtbot, win, src)
    before = sha(src)
    x0, y0, x1, y1, f = 96, 96, 160, 160, 8
    win.refining.selection.set_rect((x0, y0, x1, y1))
    out = pics / "land-refined.png"
    assert refined(qtbot, win, strength=0.8, feather=f) == ["finished", str(out)]
    source, picture = open_image(src), open_image(out)
    assert picture.shape == source.shape == (256, 256) and picture.dtype == np.uint16
    outside = np.ones((256, 256), bool)
    outside[y0 - f // 2 : y1 + f // 2, x0 - f // 2 : x1 + f // 2] = False  # the ramps are centred on the edges
    assert np.array_equal(picture[outside], source[outside])  # bit for bit
    core = picture[y0 + f : y1 - f, x0 + f : x1 - f].astype(np.int64) - source[y0 + f : y1 - f, x0 + f : x1 - f]
    assert np.abs(core).mean() > 100  # re-drawn (16-bit levels)
    rec = read_recipe(out)
    assert rec["info"]["refine"]["source_sha256"] == before and rec["info"]["refine"]["rect"] == [x0, y0, x1, y1]
    assert rec["info"]["refine"]["feather"] == f and rec["request"]["strength"] == 0.8
    assert sha(src) == before
    shown = win.current
    assert shown.path == str(out) and np.array_equal(shown.image, picture)
    assert win.history.results[-1] is shown and shown.title.startswith("refine ")


def test_escape_on_the_canvas_and_clear_selection_clear_it_and_a_new_size_drops_it(qtbot, fwin, pics):
    assert not fwin.act_refine.isEnabled() and not fwin.refining.act_rect.isEnabled()  # no picture yet
    opened(qtbot, fwin, source_file(pics / "land.png"))
    assert fwin.act_refine.isEnabled() and fwin.refining.act_rect.isEnabled()
    sel = fwin.refining.selection
    sel.set_rect((10, 10, 90, 90))
    fwin.canvas.setFocus()
    qtbot.keyClick(fwin.canvas, Qt.Key.Key_Escape)  # (Esc is Cancel's shortcut while a run is on)
    assert sel.empty
    sel.set_rect((10, 10, 90, 90))
    fwin.refining.act_clear.trigger()
    assert sel.empty
    sel.set_rect((10, 10, 90, 90))
    opened(qtbot, fwin, source_file(pics / "small.png", size=128))
    assert (sel.width, sel.height) == (128, 128) and sel.empty


def test_the_backdrop_under_the_previews_keeps_a_colour_picture_s_colours_and_size(qtbot):
    from paradiff_gui.qt.refine import _backdrop

    red = np.zeros((3000, 1000, 3), np.uint8)
    red[..., 0] = 200
    back = _backdrop(red, relief=False)
    assert back.shape == (1500, 500, 3) and back.dtype == np.uint8  # at most 2048 px a side
    assert tuple(back[10, 10]) == (200, 0, 0)
    grey = _backdrop(np.full((64, 64), 30000, np.uint16), relief=False)
    assert grey.shape == (64, 64, 3)


def test_an_unsaved_picture_is_written_beside_the_output_first_and_refined_from_that_file(qtbot, window, pics):
    with qtbot.waitSignal(window.result_ready, timeout=20000) as blocker:
        window.generate()
    picture = blocker.args[0]
    assert picture.path is None
    window.refining.selection.set_rect((64, 64, 128, 128))
    out = pics / "mine-refined.png"
    assert refined(qtbot, window, feather=0, output=str(out)) == ["finished", str(out)]
    src = pics / "mine.png"
    assert np.array_equal(open_image(src), picture.image)  # the picture as it was, with its recipe
    assert read_recipe(out)["info"]["refine"]["source"] == str(src)
    assert window.runner.engine.calls[-1].init_image == str(src)
