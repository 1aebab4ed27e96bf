"""Seamless canvases in the app: the Seamless choice ↔ request.wrap, tiles that pass the canvas
edge drawn at both places, and the 2×2 view that shows whether a picture tiles."""

from __future__ import annotations

import numpy as np
from fake_engine import tile_colour
from PySide6.QtCore import QPointF

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core.events import TilePreview
from paradiff_gui.engine.core.request import WRAPS
from paradiff_gui.engine.io.metadata import save_png
from paradiff_gui.engine.models.info import describe_model
from paradiff_gui.qt.forms.mapping import from_request, to_request
from paradiff_gui.qt.imaging import Layer, pyramid, to_display
from paradiff_gui.qt.widgets.canvas import CanvasWidget
from paradiff_gui.qt.widgets.wrapping import copies

TERRAIN = "builtin:terrain"


def grab(canvas: CanvasWidget) -> np.ndarray:
    """The widget as painted: (H, W, 3) uint8 in device px."""
    img = canvas.grab().toImage().convertToFormat(canvas.grab().toImage().Format.Format_RGB888)
    a = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())
    return a[:, : img.width() * 3].reshape(img.height(), img.width(), 3).copy()


def at(canvas: CanvasWidget, shot: np.ndarray, x: float, y: float) -> tuple[int, int, int]:
    p = canvas.to_widget(QPointF(x, y))
    dpr = canvas.devicePixelRatioF()
    return tuple(int(v) for v in shot[int(p.y() * dpr), int(p.x() * dpr)])


def solid(index: int) -> np.ndarray:
    rgb = np.empty((16, 16, 3), np.uint8)
    rgb[...] = tile_colour(index)
    return rgb


# -- the Seamless choice ------------------------------------------------------------------------


def test_the_mapping_carries_wrap_both_ways():
    info = describe_model(TERRAIN)
    for wrap in WRAPS:
        req = request_for(TERRAIN, width=384, height=256, seed=3, wrap=wrap)
        values = from_request(info, req)
        assert values.wrap == wrap
        assert to_request(info, values) == req


def test_the_seamless_choice_sets_request_wrap_and_shows_a_loaded_one(window):
    form = window.panel.coherence_form
    labels = [form.wrap.itemText(i).split(" ")[0] for i in range(form.wrap.count())]
    assert labels == ["Off", "Horizontal", "Vertical", "Both"]
    for wrap in ("x", "y", "xy", "none"):
        form.wrap.setCurrentIndex(form.wrap.findData(wrap))
        assert window.panel.request().wrap == wrap
    for wrap in ("y", "xy", "none"):
        window.panel.set_request(window.panel.request().replace(wrap=wrap))
        assert form.wrap.currentData() == wrap


def test_a_pictures_recipe_restores_its_seamless_choice(qtbot, window, tmp_path):
    req = request_for(TERRAIN, width=256, height=256, seed=8, steps=2, wrap="xy")
    save_png(tmp_path / "tiles.png", np.zeros((256, 256), np.uint16), req, describe_model(TERRAIN).plan(req), {})
    assert window.panel.request().wrap == "none"
    assert window.load_request(str(tmp_path / "tiles.png"))
    assert window.panel.coherence_form.wrap.currentData() == "xy"
    assert window.panel.request() == req


def test_the_seamless_choice_persists_with_the_other_settings(make_window, fake):
    w = make_window(fake)
    w.panel.coherence_form.wrap.setCurrentIndex(w.panel.coherence_form.wrap.findData("y"))
    w.close()
    assert make_window(fake).panel.request().wrap == "y"


def test_a_refused_combination_is_said_in_the_panel_and_generate_names_the_field(qtbot, window, fake):
    form = window.panel.coherence_form
    form.fusion.setCurrentIndex(form.fusion.findData("independent"))
    form.wrap.setCurrentIndex(form.wrap.findData("x"))
    qtbot.waitUntil(lambda: "wrap:" in window.panel.plan_info.text())
    assert "fusion independent" in window.panel.plan_info.text()
    assert not window.generate()
    assert window.last_error.startswith("wrap:") and "use another fusion" in window.last_error
    assert fake.calls == []


def test_the_plan_summary_says_when_a_plan_wraps(qtbot, window):
    form = window.panel.coherence_form
    qtbot.waitUntil(lambda: "tiles" in window.panel.plan_info.text())
    assert "seamless" not in window.panel.plan_info.text()
    form.wrap.setCurrentIndex(form.wrap.findData("x"))
    qtbot.waitUntil(lambda: "seamless left ↔ right" in window.panel.plan_info.text())


# -- tiles that pass the edge --------------------------------------------------------------------


def test_copies_place_a_rect_at_every_place_it_shows():
    assert copies((0, 0, 64, 64), 256, 128) == [(0, 0, 64, 64)]  # inside: itself only
    assert copies((192, 0, 320, 64), 256, 128) == [(192, 0, 320, 64), (-64, 0, 64, 64)]
    assert copies((300, 0, 400, 64), 256, 128) == [(44, 0, 144, 64)]  # wholly past the edge
    assert len(copies((192, 96, 320, 160), 256, 128)) == 4  # a corner, wrapped both ways
    assert copies((0, 0, 600, 64), 256, 128)[-1] == (-512, 0, 88, 64)  # wider than the canvas
    assert copies((192, 0, 320, 64), 0, 0) == [(192, 0, 320, 64)]  # no canvas yet: nothing wraps


# A 256 x 128 canvas, one row of tiles that wraps left-right: tile 2 passes the right edge by 64 px.
WRAPPED = [(0, 0, 128, 128), (96, 0, 224, 128), (192, 0, 320, 128)]


def test_a_preview_past_the_edge_is_drawn_at_both_edges(canvas):
    canvas.set_canvas_size(256, 128)
    canvas.set_plan(WRAPPED, total_steps=2)
    canvas.set_overlays(borders=False)
    canvas.start_previews()
    canvas.add_previews([TilePreview(0, 0, solid(0), WRAPPED[0])])
    canvas.add_previews([TilePreview(0, 2, solid(2), WRAPPED[2])])  # last: it covers tile 0 where they meet
    shot = grab(canvas)
    assert at(canvas, shot, 240, 64) == tile_colour(2)  # its own place, up to the right edge
    assert at(canvas, shot, 32, 64) == tile_colour(2)  # the 64 px past the edge, at the left edge
    assert at(canvas, shot, 96, 64) == tile_colour(0)  # beyond that: tile 0 again
    assert at(canvas, shot, 160, 64) not in (tile_colour(0), tile_colour(2))  # not previewed yet


def test_borders_overlaps_and_the_batch_in_flight_of_a_wrapped_tile_show_at_both_edges(canvas):
    canvas.set_canvas_size(256, 128)
    canvas.set_plan(WRAPPED, total_steps=2)
    canvas.zoom_to(QPointF(128, 64), 1.0)  # room around the picture, to see that nothing spills there
    canvas.set_overlays(borders=False, overlaps=True)
    # Overlap bands: tiles 0|1 at 96..128, 1|2 at 192..224, and 2|0 across the edge at 0..64.
    assert sorted(canvas.bands) == [(0, 0, 64, 128), (96, 0, 128, 128), (192, 0, 224, 128)]
    shot = grab(canvas)
    plain = at(canvas, shot, 160, 64)
    assert at(canvas, shot, 32, 64) != plain and at(canvas, shot, 200, 64) != plain
    assert at(canvas, shot, 80, 64) == plain
    # Grid lines: tile 2's right edge lands at x = 64 (320 mod 256), no line past the canvas.
    canvas.set_overlays(borders=True, overlaps=False)
    assert 64 in canvas._xs and max(canvas._xs) == 256
    shot = grab(canvas)
    line = canvas.to_widget(QPointF(64, 64))
    dpr = canvas.devicePixelRatioF()
    column = shot[int(line.y() * dpr), int((line.x() - 3) * dpr): int((line.x() + 3) * dpr)]
    assert len({tuple(c) for c in column}) > 1  # a line crosses this row at x = 64
    # The batch in flight: tile 2 is highlighted at both edges, tile 0's own part is not.
    canvas.set_overlays(borders=False)
    before = grab(canvas)
    canvas.set_in_flight((2,))
    after = grab(canvas)
    for x, changed in ((240, True), (32, True), (96, False), (160, False)):
        assert (at(canvas, after, x, 64) != at(canvas, before, x, 64)) == changed, x
    # Nothing is painted outside the picture (the copy at -64..64, tile 2 past 256).
    outside = canvas.to_widget(QPointF(-8, 64)), canvas.to_widget(QPointF(264, 64))
    for p in outside:
        assert tuple(after[int(p.y() * dpr), int(p.x() * dpr)]) == tuple(before[int(p.y() * dpr), int(p.x() * dpr)])


def test_rects_past_any_edge_never_break_the_canvas(canvas):
    canvas.set_canvas_size(256, 256)
    odd = [(192, 192, 320, 320), (300, 0, 400, 64), (-32, -32, 32, 32), (0, 0, 600, 64)]
    canvas.set_plan(odd)  # no step labels over the colours
    canvas.set_overlays(borders=False)
    canvas.start_previews()
    canvas.add_previews([TilePreview(0, i, solid(i), r) for i, r in enumerate(odd)])
    canvas.set_tiled(True)
    shot = grab(canvas)
    # Each shows where it wraps to, wherever a later preview does not cover it (tile 3, the
    # widest, is last: it covers the top 64 px); in the 2×2 view, in every copy.
    for dx, dy in ((0, 0), (256, 0), (0, 256), (256, 256)):
        assert at(canvas, shot, dx + 200, dy + 200) == tile_colour(0)  # the corner tile, at its place
        assert at(canvas, shot, dx + 40, dy + 200) == tile_colour(0)  # and wrapped left-right
        assert at(canvas, shot, dx + 250, dy + 250) == tile_colour(2)  # (-32, -32): the far corner
        assert at(canvas, shot, dx + 10, dy + 250) == tile_colour(2)
        assert at(canvas, shot, dx + 100, dy + 32) == tile_colour(3)  # wider than the canvas
    canvas.set_plan(odd, total_steps=1)
    canvas.set_overlays(borders=True, overlaps=True)
    canvas.set_in_flight(range(len(odd)))
    grab(canvas)
    canvas.set_tiled(False)
    grab(canvas)


# -- the 2×2 view --------------------------------------------------------------------------------


def test_the_2x2_view_shows_the_picture_four_times(canvas):
    yy, xx = np.mgrid[0:48, 0:64]
    image = np.stack([xx * 4, yy * 5, (xx * yy) % 256], axis=-1).astype(np.uint8)  # no symmetry to hide behind
    layer = Layer.from_levels(pyramid(to_display(image)))
    canvas.set_image(layer)
    canvas.set_overlays(borders=False)
    canvas.zoom_to(QPointF(64, 48), 2.0)  # whole device px per image px: copies compare exactly
    single = grab(canvas)
    canvas.set_tiled(True)
    shot = grab(canvas)
    dpr = canvas.devicePixelRatioF()
    side_x, side_y = int(64 * 2 * dpr), int(48 * 2 * dpr)

    def quadrant(a: np.ndarray, dx: int, dy: int) -> np.ndarray:
        p = canvas.to_widget(QPointF(dx, dy))
        x0, y0 = round(p.x() * dpr), round(p.y() * dpr)
        return a[y0: y0 + side_y, x0: x0 + side_x]

    first = quadrant(shot, 0, 0)
    assert len(np.unique(first.reshape(-1, 3), axis=0)) > 100  # the picture, not a flat fill
    for dx, dy in ((64, 0), (0, 48), (64, 48)):
        assert np.array_equal(quadrant(shot, dx, dy), first), (dx, dy)
    # Without it, only the first place holds the picture.
    assert not np.array_equal(quadrant(single, 64, 48), first)
    assert canvas.layer is layer and layer.width == 64  # drawn four times, never copied bigger


def test_the_2x2_view_fits_all_four_and_zoom_and_pan_keep_working(canvas):
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :100] = (200, 40, 40)
    image[:, 100:] = (40, 40, 200)
    canvas.set_image(Layer.from_levels(pyramid(to_display(image))))
    canvas.fit()
    canvas.set_tiled(True)
    vis_tl, vis_br = canvas.to_image(QPointF(0, 0)), canvas.to_image(QPointF(canvas.width(), canvas.height()))
    assert vis_tl.x() < 0 and vis_br.x() > 400 and vis_br.y() > 200  # fit: the 400 x 200 of four copies
    shot = grab(canvas)
    assert at(canvas, shot, 250, 150) == (200, 40, 40)  # the second copy's red half
    assert at(canvas, shot, 350, 150) == (40, 40, 200)
    canvas.zoom_by(4.0, canvas.to_widget(QPointF(300, 150)))
    canvas._set_view(canvas.scale, QPointF(canvas.center.x() + 20, canvas.center.y()))  # a pan
    shot = grab(canvas)
    assert at(canvas, shot, 290, 150) == (200, 40, 40) and at(canvas, shot, 310, 150) == (40, 40, 200)
    canvas.set_tiled(False)
    assert at(canvas, grab(canvas), 290, 150) != (200, 40, 40)  # nothing past the single picture


def test_the_view_menu_toggles_the_2x2_view_and_remembers_it(qtbot, make_window, fake):
    w = make_window(fake)
    assert not w.canvas.tiled
    w.act_tiled.trigger()
    assert w.canvas.tiled and w.act_tiled.isChecked()
    assert w.act_tiled in w.menuBar().actions()[1].menu().actions()  # View
    w.close()
    assert make_window(fake).canvas.tiled


def test_a_seamless_run_shows_its_wrapped_plan_and_scores_its_seams(qtbot, window, fake):
    window.panel.set_request(window.panel.request().replace(wrap="x"))
    qtbot.waitUntil(lambda: "seamless left ↔ right" in window.panel.plan_info.text())
    with qtbot.waitSignal(window.result_ready, timeout=20000) as blocker:
        window.generate()
    result = blocker.args[0]
    assert fake.calls[-1].wrap == "x"
    assert max(r[2] for r in window.canvas.tiles) == 320  # the last column runs 64 px past the edge...
    assert max(window.canvas._xs) == 256 and 64 in window.canvas._xs  # ...and its border lands at x = 64
    qtbot.waitUntil(lambda: result.report is not None, timeout=20000)
    assert window.last_error is None
    assert all(0 < s.position < 256 for s in result.report.seams)
    # The Seams tab also says how the picture repeats: scored where its copies meet.
    qtbot.waitUntil(lambda: result.tiling is not None, timeout=20000)
    assert window.seams.tiling.isVisible()
    assert window.seams.tiling.text().startswith(f"<b>Repeats left ↔ right: {result.tiling:.2f}</b>")
    # A picture that does not wrap says nothing of the kind.
    window.panel.set_request(window.panel.request().replace(wrap="none"))
    with qtbot.waitSignal(window.scored, timeout=20000):
        window.generate()
    assert not window.seams.tiling.isVisible() and window.current.tiling is None
