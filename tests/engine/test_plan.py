from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from paradiff_gui.engine.core.plan import TilePlan
from paradiff_gui.engine.core.request import GenerationRequest, RequestError


def check_invariants(plan: TilePlan, requested_overlap: int) -> None:
    cover = np.zeros((plan.height, plan.width), dtype=int)
    for t in plan.tiles:
        assert (t.height, t.width) == (plan.tile_h, plan.tile_w), "all tiles have one size"
        assert t.y0 >= 0 and t.y1 <= plan.height and t.x0 >= 0 and t.x1 <= plan.width
        cover[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert cover.min() >= 1, "every latent pixel is covered"
    oy, ox = plan.actual_overlap
    if plan.rows > 1:
        assert oy >= requested_overlap
    if plan.cols > 1:
        assert ox >= requested_overlap
    # Starts are spread evenly: consecutive strides differ by at most one pixel.
    for starts in (plan.row_starts, plan.col_starts):
        strides = np.diff(starts)
        if len(strides):
            assert strides.max() - strides.min() <= 1
            assert strides.min() >= 1
    assert plan.row_starts[0] == 0 and plan.row_starts[-1] == plan.height - plan.tile_h
    assert plan.col_starts[0] == 0 and plan.col_starts[-1] == plan.width - plan.tile_w
    assert plan.overhead == pytest.approx(cover.sum() / cover.size)


@given(st.integers(1, 600), st.integers(1, 600), st.integers(8, 128), st.integers(0, 64))
def test_tile_mode_invariants(h, w, tile, overlap):
    assume(overlap < tile)
    plan = TilePlan.create(h, w, overlap=overlap, tile=tile)
    check_invariants(plan, overlap)
    if h <= tile:
        assert plan.rows == 1 and plan.tile_h == h, "a canvas smaller than a tile gives one tile of its size"
    else:
        assert plan.tile_h == tile


@given(st.integers(8, 600), st.integers(8, 600), st.integers(1, 12), st.integers(1, 12), st.integers(0, 32))
def test_grid_mode_invariants_or_a_clear_error(h, w, rows, cols, overlap):
    try:
        plan = TilePlan.create(h, w, overlap=overlap, grid=(rows, cols))
    except RequestError as exc:
        assert exc.field == "grid"
        assert "use fewer tiles or a smaller overlap" in str(exc)
        return
    assert (plan.rows, plan.cols) == (rows, cols)
    check_invariants(plan, overlap)


def test_worked_example_and_image_units():
    # 4096x2048 image, SD factor 8 → 512x256 latent; 512 px tiles (64 latent), 64 px overlap (8 latent).
    plan = TilePlan.for_request(GenerationRequest(width=4096, height=2048, tile=512, overlap=64), 8, 512)
    assert (plan.rows, plan.cols) == (5, 9)  # ceil((256-8)/56) = 5, ceil((512-8)/56) = 9
    assert plan.image_rect(plan.tiles[0]) == (0, 0, 512, 512)
    assert plan.image_rect(plan.tiles[-1]) == (4096 - 512, 2048 - 512, 4096, 2048)
    assert plan.image_size == (4096, 2048)
    assert min(o for o in plan.actual_overlap) * 8 >= 64
    d = plan.to_dict()
    assert len(d["tiles"]) == 45 and d["tiles"][0] == [0, 0, 512, 512]


def test_one_tile_when_canvas_is_smaller_than_tile():
    plan = TilePlan.for_request(GenerationRequest(width=256, height=128, tile=512), 8, 512)
    assert len(plan) == 1 and (plan.tile_h, plan.tile_w) == (16, 32)
    assert plan.overhead == 1.0 and plan.actual_overlap == (None, None)


def test_default_tile_is_the_models_native_tile_and_overlap_a_quarter():
    plan = TilePlan.for_request(GenerationRequest(width=2048, height=2048), 8, 1024)
    assert plan.tile_h * 8 == 1024 and plan.overlap * 8 == 256


def test_model_factor_must_divide_sizes():
    with pytest.raises(RequestError, match=r"^overlap: must be a multiple of 16"):
        TilePlan.for_request(GenerationRequest(width=512, height=512, overlap=8), 16, 256)


def test_owner_is_nearest_centre_brute_force():
    plan = TilePlan.create(37, 53, overlap=5, tile=16)
    owner = np.asarray(plan.owner_index())
    for y in range(plan.height):
        for x in range(plan.width):
            d = [((y + 0.5 - t.center[0]) ** 2 + (x + 0.5 - t.center[1]) ** 2, t.index) for t in plan.tiles]
            assert owner[y, x] == min(d)[1]
            t = plan.tiles[owner[y, x]]
            assert t.y0 <= y < t.y1 and t.x0 <= x < t.x1, "the owner covers the pixel"


@given(st.integers(40, 400), st.integers(40, 400), st.integers(8, 64), st.integers(0, 16), st.data())
def test_shifted_plans_keep_size_coverage_and_overlap(h, w, tile, overlap, data):
    assume(overlap < tile)
    plan = TilePlan.create(h, w, overlap=overlap, tile=tile)
    sy, sx = plan.stride
    dy, dx = data.draw(st.integers(0, sy - 1)), data.draw(st.integers(0, sx - 1))
    shifted = plan.shifted(dy, dx)
    check_invariants_shifted(shifted, overlap)
    if plan.rows > 1 and dy > 0 and shifted.row_starts[1] < plan.tile_h:
        assert shifted.row_starts[1] == sy - dy, "the grid really moved"


def check_invariants_shifted(plan: TilePlan, requested_overlap: int) -> None:
    cover = np.zeros((plan.height, plan.width), dtype=int)
    for t in plan.tiles:
        assert (t.height, t.width) == (plan.tile_h, plan.tile_w)
        assert t.y0 >= 0 and t.y1 <= plan.height and t.x0 >= 0 and t.x1 <= plan.width
        cover[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert cover.min() >= 1
    oy, ox = plan.actual_overlap
    assert plan.rows == 1 or oy >= requested_overlap
    assert plan.cols == 1 or ox >= requested_overlap
