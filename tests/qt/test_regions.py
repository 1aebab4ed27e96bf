"""Regional prompts in the app: drawn, moved and resized on the canvas, listed in the panel, carried
into the request and back (recipes, settings), and refused by name when they cannot run."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core.regions import Region, encode_mask_png
from paradiff_gui.engine.io.metadata import save_png
from paradiff_gui.engine.models.info import describe_model
from paradiff_gui.qt.forms.mapping import from_request, to_request
from paradiff_gui.qt.widgets.regions import MIN_SIDE, colour_for

TERRAIN = "builtin:terrain"


def at(window, x: float, y: float) -> QPoint:
    """The widget point over image px (x, y)."""
    p = window.canvas.to_widget(QPointF(x, y))
    return QPoint(round(p.x()), round(p.y()))


def drag(qtbot, window, a: tuple[float, float], b: tuple[float, float],
         modifier: Qt.KeyboardModifier = Qt.KeyboardModifier.NoModifier) -> None:
    c = window.canvas
    qtbot.mousePress(c, Qt.MouseButton.LeftButton, modifier, at(window, *a))
    qtbot.mouseMove(c, at(window, (a[0] + b[0]) / 2, (a[1] + b[1]) / 2))
    qtbot.mouseMove(c, at(window, *b))
    qtbot.mouseRelease(c, Qt.MouseButton.LeftButton, modifier, at(window, *b))


def draw(qtbot, window, a, b) -> None:
    window.panel.regions_form.draw.setChecked(True)
    drag(qtbot, window, a, b)


def rects(window) -> list:
    return [r.rect for r in window.panel.regions_form.regions()]


def pixel(window, x: float, y: float) -> tuple[int, int, int]:
    img = window.canvas.grab().toImage()
    p = window.canvas.to_widget(QPointF(x, y))
    dpr = img.devicePixelRatio()
    c = QColor(img.pixel(int(p.x() * dpr), int(p.y() * dpr)))
    return c.red(), c.green(), c.blue()


@pytest.fixture
def ready(qtbot, window):
    """The 256² terrain request shown, its plan drawn."""
    qtbot.waitUntil(lambda: len(window.canvas.tiles) == 9)
    assert window.canvas.scale > 1.5  # an image px is wider than a widget px: clicks land on whole px
    return window


# -- the canvas --------------------------------------------------------------------------------------


def test_drawing_a_rectangle_adds_a_region_in_image_px(qtbot, ready):
    w, form, layer = ready, ready.panel.regions_form, ready.canvas.regions
    center = QPointF(w.canvas.center)
    draw(qtbot, w, (40, 30), (140, 100))
    assert rects(w) == [(40, 30, 140, 100)]
    assert w.canvas.center == center  # a drawing drag does not pan
    assert layer.regions == form.regions() and layer.current == form.current == 0
    assert not form.draw.isChecked() and not layer.draw_mode  # Draw is one rectangle
    assert w.panel.request().regions[0].rect == (40, 30, 140, 100)
    # Dragged up and to the left, and past the canvas: the same kind of rectangle, clamped inside.
    drag(qtbot, w, (250, 200), (-40, 180), Qt.KeyboardModifier.ShiftModifier)  # Shift: draw at any time
    assert rects(w)[1] == (0, 180, 250, 200) and form.current == 1
    # A click in draw mode is not a region; a tiny drag makes one of the minimum size.
    form.draw.setChecked(True)
    qtbot.mouseClick(w.canvas, Qt.MouseButton.LeftButton, pos=at(w, 60, 60))
    assert len(rects(w)) == 2 and form.current == 0  # it selected the region under it
    draw(qtbot, w, (252, 10), (253, 12))
    assert rects(w)[2] == (256 - MIN_SIDE, 10, 256, 10 + MIN_SIDE)


def test_a_plain_drag_off_the_regions_still_pans(qtbot, ready):
    w = ready
    draw(qtbot, w, (40, 30), (140, 100))
    centre = QPointF(w.canvas.center)
    drag(qtbot, w, (200, 200), (220, 220))
    assert rects(w) == [(40, 30, 140, 100)] and w.canvas.center != centre


def test_a_region_moves_and_resizes_with_its_handles_inside_the_canvas(qtbot, ready):
    w = ready
    draw(qtbot, w, (40, 30), (140, 100))
    drag(qtbot, w, (90, 60), (110, 70))  # the body
    assert rects(w) == [(60, 40, 160, 110)]
    drag(qtbot, w, (160, 110), (200, 190))  # the bottom-right handle
    assert rects(w) == [(60, 40, 200, 190)]
    drag(qtbot, w, (60, 115), (20, 300))  # the left handle: x only
    assert rects(w) == [(20, 40, 200, 190)]
    drag(qtbot, w, (100, 100), (400, 100))  # moved against the right edge: stops there, same size
    assert rects(w) == [(76, 40, 256, 190)]
    drag(qtbot, w, (76, 40), (300, 300))  # the top-left handle past the opposite corner
    assert rects(w) == [(256 - MIN_SIDE, 190 - MIN_SIDE, 256, 190)]
    assert w.panel.regions_form.rows[0].where.text().startswith(f"x {256 - MIN_SIDE}–256, y {190 - MIN_SIDE}–190")
    assert w.panel.request().regions[0].rect == rects(w)[0]


def test_regions_are_drawn_in_their_colours_and_red_when_outside(qtbot, ready):
    w = ready
    draw(qtbot, w, (40, 40), (200, 200))
    w.canvas.regions.select(None)  # no handles over the border
    w.canvas.repaint()
    assert pixel(w, 40, 120) == colour_for(0).getRgb()[:3]  # the outline
    assert pixel(w, 120, 120) != pixel(w, 20, 120)  # a faint fill inside
    w.panel.regions_form.set_rect(0, (40, 40, 300, 200))  # outside the 256 px canvas
    w.canvas.repaint()
    assert pixel(w, 40, 120) != colour_for(0).getRgb()[:3]


# -- the list --------------------------------------------------------------------------------------


def test_the_list_and_the_canvas_select_and_remove_together(qtbot, ready):
    w, form, layer = ready, ready.panel.regions_form, ready.canvas.regions
    draw(qtbot, w, (10, 10), (100, 100))
    draw(qtbot, w, (150, 150), (240, 240))
    assert len(form.rows) == 2 and layer.current == 1
    qtbot.mouseClick(form.rows[0].swatch, Qt.MouseButton.LeftButton)  # the list selects on the canvas
    assert form.current == layer.current == 0 and form.rows[0].selected and not form.rows[1].selected
    qtbot.mouseClick(w.canvas, Qt.MouseButton.LeftButton, pos=at(w, 200, 200))  # and back
    assert form.current == layer.current == 1 and form.rows[1].selected
    w.canvas.setFocus()
    qtbot.keyClick(w.canvas, Qt.Key.Key_Delete)
    assert rects(w) == [(10, 10, 100, 100)] and layer.regions == form.regions()
    assert form.current is None and layer.current is None
    form.add.click()  # the middle of the canvas
    assert rects(w) == [(10, 10, 100, 100), (80, 80, 208, 208)] and layer.current == 1  # offset: not over another
    qtbot.mouseClick(form.rows[0].swatch, Qt.MouseButton.LeftButton)
    form.remove_button.click()
    assert rects(w) == [(80, 80, 208, 208)] and layer.regions == form.regions()
    assert form.rows[0].swatch.text() == "1"  # renumbered
    form.rows[0].remove_button.click()
    assert form.regions() == () and layer.regions == () and w.panel.request().regions == ()


def test_a_row_shows_prompts_for_text_models_and_the_model_options_otherwise(qtbot, window, sd_like):
    p, form = window.panel, window.panel.regions_form
    p.set_request(request_for(TERRAIN, width=256, height=256, extra={"terrain_difficulty": 20}))
    form.add.click()
    row = form.rows[0]
    assert row.prompt is None and list(row.controls) == ["terrain_difficulty"]
    assert row.controls["terrain_difficulty"].value() == 20  # a new region starts from the main option
    row.controls["terrain_difficulty"].setValue(90)
    assert p.request().regions[0].extra == {"terrain_difficulty": 90}
    assert window.canvas.regions.labels == ("Difficulty 90",)
    row.controls["terrain_difficulty"].setValue(0)  # below the range: "as main", left out
    assert p.request().regions[0].extra == {} and window.canvas.regions.labels == ("Difficulty as main",)
    p.set_request(request_for(sd_like, width=1024, height=512, prompt="a city"))
    form.add_region((0, 0, 512, 512))
    row = form.rows[0]
    assert row.prompt is not None and row.controls == {}
    row.prompt.setPlainText("a lighthouse\non a cliff")
    row.negative.setText("fog")
    qtbot.keyClicks(row.negative, "!")  # typed: the box reports edits, not programmatic text
    row.weight.setValue(2.5)
    row.feather.setValue(32)
    region = p.request().regions[0]
    assert (region.prompt, region.negative_prompt, region.weight, region.feather) == (
        "a lighthouse\non a cliff", "fog!", 2.5, 32)
    assert window.canvas.regions.labels == ("a lighthouse",)


def test_regions_stay_across_a_model_change(qtbot, window, sd_like):
    p, form = window.panel, window.panel.regions_form
    p.set_request(request_for(sd_like, width=1024, height=1024))
    form.add_region((100, 100, 300, 400))
    form.rows[0].prompt.setPlainText("a tower")
    p.select_model(TERRAIN, apply_defaults=True)  # as the picker does; its defaults keep a 1024² canvas
    assert rects(window) == [(100, 100, 300, 400)]
    assert p.request().regions[0].prompt == ""  # not sent to a model without text...
    p.select_model(sd_like, apply_defaults=True)
    assert p.request().regions[0].prompt == "a tower"  # ...but kept, like the main prompt


# -- the request -------------------------------------------------------------------------------------


def _mask(width: int, height: int) -> str:
    import io

    from PIL import Image

    a = np.zeros((height, width), np.uint8)
    a[: height // 2] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return encode_mask_png(buf.getvalue())


def requests_with_regions(sd_like: str) -> list:
    return [
        request_for(TERRAIN, width=384, height=256, seed=3, extra={"terrain_difficulty": 60},
                    regions=(Region((0, 0, 128, 256), weight=2.0, feather=0, extra={"terrain_difficulty": 95}),
                             Region((200, 16, 384, 100), extra={"backend_own": "kept"}))),
        request_for(sd_like, prompt="a valley", width=1024, height=512, tile=512, overlap=128, seed=4,
                    regions=(Region((512, 0, 1024, 512), prompt="a castle", negative_prompt="blur", weight=0.35,
                                    feather=128),
                             Region(mask=_mask(1024, 512), prompt="clouds", feather=7))),
    ]


def test_the_mapping_and_the_panel_round_trip_regions_exactly(window, sd_like):
    for req in requests_with_regions(sd_like):
        info = describe_model(req.model)
        assert from_request(info, req).regions == req.regions
        assert to_request(info, from_request(info, req)) == req
        window.panel.set_request(req)
        assert window.panel.request() == req
        assert window.canvas.regions.regions == req.regions  # the canvas shows what the list holds


def test_a_recipe_with_regions_restores_them_and_generate_sends_them(qtbot, window, fake, tmp_path, sd_like):
    req = requests_with_regions(sd_like)[0]
    save_png(tmp_path / "r.png", np.zeros((256, 384), np.uint16), req, describe_model(req.model).plan(req), {})
    window.panel.set_request(request_for(TERRAIN, width=256, height=256))
    with qtbot.waitSignal(window.result_ready, timeout=20000):
        window.drop_file(str(tmp_path / "r.png"))
    assert window.panel.request() == req
    assert [r.rect for r in window.canvas.regions.regions] == [(0, 0, 128, 256), (200, 16, 384, 100)]
    # The second region names no difficulty: the main one holds there, and the box says so.
    assert [row.controls["terrain_difficulty"].text() for row in window.panel.regions_form.rows] == ["95", "as main"]
    assert window.load_request(str(tmp_path / "r.png")) and window.panel.request() == req
    window.panel.seed_lock.setChecked(True)
    with qtbot.waitSignal(window.run_ended, timeout=20000):
        assert window.generate()
    assert fake.calls[-1] == req


def test_a_recipe_with_a_region_option_out_of_range_is_refused_by_name(qtbot, window, tmp_path):
    bad = request_for(TERRAIN, width=256, height=256,
                      regions=(Region((0, 0, 64, 64)), Region((0, 0, 64, 64), extra={"terrain_difficulty": 500})))
    (tmp_path / "bad.json").write_text(bad.to_json())
    before = window.panel.request()
    assert not window.load_request(str(tmp_path / "bad.json"))
    assert window.error_box.text().startswith("regions[1].terrain_difficulty: must be from 1 to 100, got 500")
    assert window.panel.request() == before
    window.error_box.close()


def test_a_size_that_leaves_a_region_outside_is_named_and_generate_is_refused(qtbot, window, fake):
    w = window
    w.interactive = False  # the refusal's dialog is not under test here
    w.panel.set_request(request_for(TERRAIN, width=512, height=256, regions=(Region((220, 0, 400, 200)),)))
    qtbot.waitUntil(lambda: w.canvas.image_w == 512 and len(w.canvas.tiles) > 0)
    w.panel.size_form.width_.setValue(256)
    qtbot.waitUntil(lambda: "regions[0].rect" in w.panel.plan_info.text())
    assert "x1 <= 256" in w.panel.plan_info.text() and "400" in w.panel.plan_info.text()  # the engine's words
    assert rects(w) == [(220, 0, 400, 200)]  # not moved behind the person's back
    assert (w.canvas.image_w, w.canvas.image_h) == (256, 256) and w.canvas.tiles == []  # seen hanging out
    assert w.generate() is False and fake.calls == []
    assert w.last_error.startswith("regions[0].rect:")
    # Moving it with the mouse brings it back inside (an interaction, so clamping is expected).
    drag(qtbot, w, (240, 100), (140, 100))
    assert rects(w) == [(76, 0, 256, 200)]
    qtbot.waitUntil(lambda: len(w.canvas.tiles) == 9 and "tiles" in w.panel.plan_info.text())


def test_regions_show_but_cannot_be_edited_while_running(qtbot, ready, fake):
    w, layer = ready, ready.canvas.regions
    draw(qtbot, w, (40, 40), (200, 200))
    fake.batch_seconds = 0.05
    w.panel.seed_lock.setChecked(True)
    assert w.generate()
    qtbot.waitUntil(lambda: len(w.canvas.tiles) == 9 and bool(w.canvas.tile_steps))
    assert not layer.editable and layer.regions == w.panel.regions_form.regions()
    drag(qtbot, w, (120, 120), (150, 150))
    w.canvas.setFocus()
    qtbot.keyClick(w.canvas, Qt.Key.Key_Delete)
    assert rects(w) == [(40, 40, 200, 200)]
    w.canvas.repaint()
    assert pixel(w, 40, 120) == colour_for(0).getRgb()[:3]  # drawn over the previews
    assert fake.calls[-1].regions[0].rect == (40, 40, 200, 200)
    with qtbot.waitSignal(w.run_ended, timeout=20000):
        w.cancel()
    assert layer.editable


def test_regions_persist_with_the_last_request(qtbot, make_window, fake):
    w = make_window(fake)
    req = request_for(TERRAIN, width=256, height=256, regions=(Region((8, 16, 120, 200), weight=3.0),))
    w.panel.set_request(req)
    w.close()
    w2 = make_window(fake)
    assert w2.panel.request().regions == req.regions
    assert w2.canvas.regions.regions == req.regions


def test_a_row_cannot_hold_a_weight_or_feather_the_request_refuses(window):
    form = window.panel.regions_form
    form.add.click()
    row = form.rows[0]
    for box, lo, hi in ((row.weight, 0.01, 10.0), (row.feather, 0, 1024)):
        box.setValue(-1e9)
        assert box.value() == lo
        window.panel.request()  # valid at the lowest...
        box.setValue(1e9)
        assert box.value() == hi
        window.panel.request()  # ...and at the highest
