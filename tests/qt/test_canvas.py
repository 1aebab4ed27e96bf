"""The canvas: previews land on their tiles, zoom/pan maths, mip levels, and paint cost at 8192²."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fake_engine import tile_colour
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core.events import TilePreview
from paradiff_gui.qt.imaging import Layer, downsample, heat_rgba, pyramid, to_display
from paradiff_gui.qt.widgets.canvas import CanvasWidget, overlap_bands

TILES = [(0, 0, 128, 128), (128, 0, 256, 128), (0, 128, 128, 256), (128, 128, 256, 256)]


def pixel(canvas: CanvasWidget, image_xy: tuple[float, float]) -> tuple[int, int, int]:
    img = canvas.grab().toImage()
    p = canvas.to_widget(QPointF(*image_xy))
    dpr = img.devicePixelRatio()
    c = QColor(img.pixel(int(p.x() * dpr), int(p.y() * dpr)))
    return c.red(), c.green(), c.blue()


def test_previews_land_on_their_tiles(canvas):
    canvas.set_canvas_size(256, 256)
    canvas.set_plan(TILES, total_steps=4)
    canvas.start_previews()
    previews = []
    for i, r in enumerate(TILES):
        rgb = np.empty((16, 16, 3), np.uint8)
        rgb[...] = tile_colour(i)
        previews.append(TilePreview(2, i, rgb, r))
    canvas.set_overlays(borders=False)
    canvas.add_previews(previews)
    for i, (x0, y0, x1, y1) in enumerate(TILES):
        assert pixel(canvas, ((x0 + x1) / 2, (y0 + y1) / 2)) == tile_colour(i)
    assert canvas.tile_steps == {0: 2, 1: 2, 2: 2, 3: 2}


def test_in_flight_tiles_are_highlighted(canvas):
    canvas.set_canvas_size(256, 256)
    canvas.set_plan(TILES)
    canvas.set_overlays(borders=False)
    before = pixel(canvas, (64, 64))
    canvas.set_in_flight((0,))
    assert pixel(canvas, (64, 64)) != before
    assert pixel(canvas, (192, 192)) == before


def test_fit_and_actual_size_and_wheel_keep_the_point_under_the_cursor(canvas, qtbot):
    canvas.set_canvas_size(8192, 4096)
    canvas.fit()
    # Fit: the whole image is visible and centred.
    vis = canvas.visible_image_rect()
    assert vis.width() == pytest.approx(8192) and vis.height() == pytest.approx(4096)
    canvas.actual_size()
    assert canvas.device_scale() == pytest.approx(1.0)
    canvas.zoom_to(QPointF(1000, 500), 2.0)
    assert canvas.device_scale() == pytest.approx(2.0)
    mid = canvas.to_widget(QPointF(1000, 500))
    assert (mid.x(), mid.y()) == pytest.approx((canvas.width() / 2, canvas.height() / 2))
    anchor = QPointF(100, 80)
    under = canvas.to_image(anchor)
    canvas.zoom_by(1.25, anchor)
    after = canvas.to_image(anchor)
    assert (after.x(), after.y()) == pytest.approx((under.x(), under.y()))
    # Dragging pans by exactly the mouse movement.
    centre = QPointF(canvas.center)
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=QPoint(300, 250))
    qtbot.mouseMove(canvas, QPoint(340, 250))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=QPoint(340, 250))
    assert canvas.center.x() == pytest.approx(centre.x() - 40 / canvas.scale)


def test_pyramid_levels_and_level_choice():
    img = np.random.default_rng(0).integers(0, 255, (1000, 600, 3), dtype=np.uint8)
    levels = pyramid(to_display(img))
    assert [lv.shape[:2] for lv in levels] == [(1000, 600), (500, 300), (250, 150)]
    # A 2x2 box average.
    small = downsample(np.array([[0, 4], [8, 12]], np.uint8))
    assert small.tolist() == [[6]]
    layer = Layer.from_levels(levels)
    assert layer.level_for(1.0) == 0 and layer.level_for(0.5) == 1 and layer.level_for(0.3) == 1
    assert layer.level_for(0.01) == 2
    # RGB32 byte order: B, G, R, 255.
    d = to_display(np.array([[[10, 20, 30]]], np.uint8))
    assert d.tolist() == [[[30, 20, 10, 255]]]


def test_heatmap_colours_only_seams():
    heat = np.array([[0.5, 1.4, 2.0, 5.0]], np.float32)
    rgba = heat_rgba(heat)
    assert rgba[0, 0, 3] == 0 and rgba[0, 1, 3] == 0  # ordinary texture: transparent
    assert 0 < rgba[0, 2, 3] < rgba[0, 3, 3]  # worse seams are more opaque
    assert rgba[0, 3, 2] == rgba[0, 3, 3] and rgba[0, 3, 1] == 0  # opaque red at the worst


def test_overlap_bands_are_where_neighbouring_columns_and_rows_overlap():
    assert overlap_bands([(0, 0, 96, 64), (64, 0, 160, 64)]) == [(64, 0, 96, 64)]
    grid = [(x, y, x + 96, y + 96) for y in (0, 64) for x in (0, 64, 128)]
    assert overlap_bands(grid) == [(64, 0, 96, 160), (128, 0, 160, 160), (0, 64, 224, 96)]
    assert overlap_bands([(0, 0, 64, 64), (64, 0, 128, 64)]) == []  # touching is not overlapping


def test_a_plan_of_8000_tiles_is_set_and_painted_quickly(canvas):
    from paradiff_gui.engine.models.info import describe_model


    req = request_for("builtin:terrain", width=8192, height=4096)
    plan = describe_model(req.model).plan(req)
    assert len(plan) > 8000
    canvas.set_canvas_size(8192, 4096)
    canvas.repaint()  # first paint: fonts and the like, not what is measured
    t0 = time.perf_counter()
    canvas.set_plan([plan.image_rect(t) for t in plan.tiles], total_steps=8)
    canvas.set_overlays(overlaps=True)
    canvas.set_in_flight(tuple(range(64)))
    canvas.repaint()
    # ~20 ms here; pairwise overlap tests (32 million) would take minutes. Generous for a busy CI.
    assert time.perf_counter() - t0 < 1.0
    assert len(canvas.bands) == (plan.rows - 1) + (plan.cols - 1)


def test_an_8192_canvas_paints_fast_at_every_zoom(canvas):
    # A real 8192² picture: 256 MiB at level 0. The canvas draws only what is visible, from
    # the level that matches the zoom, so each paint stays far below a frame budget.
    rng = np.random.default_rng(1)
    tile = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    big = np.tile(tile, (32, 32, 1))
    canvas.set_image(Layer.from_levels(pyramid(to_display(big))))
    canvas.set_plan([(x, y, x + 1024, y + 1024) for y in range(0, 8192, 768) for x in range(0, 8192, 768)])
    canvas.set_overlays(overlaps=True)
    canvas.repaint()  # first paint: fonts and the like, not what is measured
    worst = 0.0
    for action in (canvas.fit, lambda: canvas.zoom_to(QPointF(4000, 4000), 0.25), canvas.actual_size,
                   lambda: canvas.zoom_to(QPointF(7000, 100), 4.0)):
        action()
        t0 = time.perf_counter()
        canvas.repaint()
        worst = max(worst, time.perf_counter() - t0)
    # 2-11 ms measured (docs/PERFORMANCE.md); a whole-picture rescale would take seconds.
    assert worst < 0.25, f"slowest paint {worst * 1000:.0f} ms"
