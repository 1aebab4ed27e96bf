"""The fused prediction is exactly Σ W_i·pred_i / Σ W_i for every blend mode, checked against
brute-force per-pixel formulas written independently of the engine's window code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fakes import FieldDenoiser, gaussian_1d

from paradiff_gui.engine.core import blend
from paradiff_gui.engine.core.cancel import CancelToken
from paradiff_gui.engine.core.plan import TilePlan
from paradiff_gui.engine.core.request import GenerationRequest
from paradiff_gui.engine.sampling.sampler import _Denoise, _Weights, predict_canvas


def fused(plan: TilePlan, mode: str, tile_batch: int = 4) -> tuple[np.ndarray, FieldDenoiser]:
    den = FieldDenoiser()
    req = GenerationRequest(model="test:field", fusion=mode, tile_batch=tile_batch)
    den.prepare(req, plan)
    run = _Denoise(den, req, plan, None, lambda e: None, CancelToken(), previews=False)
    x = torch.zeros(1, den.channels, plan.height, plan.width)
    out, _ = predict_canvas(run, plan, x, torch.tensor(500), _Weights.build(plan, mode, torch.device("cpu")))
    # Subtract the position field: what remains is the weighted mean of the tile indices.
    return (out[0] - den.full).numpy(), den


PLAN = TilePlan.create(29, 41, overlap=5, tile=14)


def covering(plan, y, x):
    return [t for t in plan.tiles if t.y0 <= y < t.y1 and t.x0 <= x < t.x1]


@pytest.mark.parametrize("tile_batch", [1, 3, 100])
def test_uniform_is_the_plain_mean_of_covering_tiles(tile_batch):
    got, den = fused(PLAN, "uniform", tile_batch)
    assert sorted(i for call in den.calls for i in call) == list(range(len(PLAN))), "every tile, once"
    assert max(len(c) for c in den.calls) == min(tile_batch, len(PLAN))
    for y in range(PLAN.height):
        for x in range(PLAN.width):
            expect = np.mean([t.index for t in covering(PLAN, y, x)])
            assert got[:, y, x] == pytest.approx([expect, expect], abs=1e-5)


def test_none_takes_exactly_the_nearest_centre_tile():
    got, _ = fused(PLAN, "none")
    for y in range(PLAN.height):
        for x in range(PLAN.width):
            d = [((y + 0.5 - t.center[0]) ** 2 + (x + 0.5 - t.center[1]) ** 2, t.index) for t in PLAN.tiles]
            assert got[0, y, x] == pytest.approx(min(d)[1], abs=1e-6)


def test_gaussian_matches_mixture_of_diffusers_weights():
    got, _ = fused(PLAN, "gaussian")
    gy, gx = gaussian_1d(PLAN.tile_h), gaussian_1d(PLAN.tile_w)
    for y in range(PLAN.height):
        for x in range(PLAN.width):
            ws = [(gy[y - t.y0] * gx[x - t.x0], t.index) for t in covering(PLAN, y, x)]
            expect = sum(w * i for w, i in ws) / sum(w for w, _ in ws)
            assert got[0, y, x] == pytest.approx(expect, abs=1e-4)


def test_cosine_cross_fades_neighbours_and_keeps_borders():
    plan = TilePlan.create(10, 40, overlap=6, tile=16)  # one row: tiles cross-fade along x only
    got, _ = fused(plan, "cosine")
    for x in range(plan.width):
        cov = covering(plan, 0, x)
        if len(cov) == 1:
            assert got[0, 0, x] == pytest.approx(cov[0].index, abs=1e-6)
        else:
            a, b = cov  # left, right
            overlap = a.x1 - b.x0
            i = x - b.x0 + 0.5
            w_right = 0.5 - 0.5 * math.cos(math.pi * i / overlap)
            assert got[0, 0, x] == pytest.approx(a.index * (1 - w_right) + b.index * w_right, abs=1e-5)


@pytest.mark.parametrize("mode", ["uniform", "gaussian", "cosine", "none"])
def test_every_covered_pixel_has_positive_weight(mode):
    for plan in (PLAN, TilePlan.create(64, 64, overlap=0, grid=(3, 3)), TilePlan.create(9, 9, overlap=2, tile=12)):
        wins = blend.windows(plan, mode)
        assert blend.weight_sum(plan, wins).min() > 0
        if mode != "none":
            assert wins.min() > 0, "every pixel of every tile counts, canvas borders included"
