"""Jitter, global context and the overlap consensus error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fakes import FieldDenoiser

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core import events
from paradiff_gui.engine.core.plan import TilePlan
from paradiff_gui.engine.sampling.sampler import jitter_offsets

REQ = GenerationRequest(model="test:field", width=256, height=192, tile=96, overlap=32, steps=4, sampler="ddim")


def run(req, den=None):
    seen: list = []
    res = generate(req, seen.append, denoiser=den or FieldDenoiser(), previews=True)
    return res, seen


def test_jitter_moves_the_grid_every_step_deterministically():
    res, seen = run(REQ.replace(jitter=True, seed=3))
    plans = [e.plan for e in seen if isinstance(e, events.StepStarted)]
    assert len({p.tiles for p in plans}) > 1, "the grid moves"
    again = [e.plan for e in run(REQ.replace(jitter=True, seed=3))[1] if isinstance(e, events.StepStarted)]
    assert plans == again, "the same seed moves it the same way"
    assert jitter_offsets(res.plan, 3, 4) != jitter_offsets(res.plan, 4, 4)
    # Previews say where their tile sat in that step's grid.
    for e in seen:
        if isinstance(e, events.TilePreview):
            step_plan = plans[e.step]
            assert e.rect == step_plan.image_rect(step_plan.tiles[e.tile])


class Agreeing(FieldDenoiser):
    """Every tile predicts the same absolute field: a shifted or misplaced crop would show."""

    def predict(self, x, t, tiles, cond):
        return torch.stack([self.full[:, tl.y0 : tl.y1, tl.x0 : tl.x1] for tl in tiles])


def test_jitter_never_shifts_the_canvas():
    res, _ = run(REQ.replace(jitter=True, seed=5), Agreeing())
    torch.testing.assert_close(res.latents[0], FieldDenoiser.field(192, 256), atol=1e-4, rtol=0)


def test_consensus_error_is_recorded_and_zero_when_tiles_agree():
    _, seen = run(REQ, Agreeing())
    agree = [e.consensus for e in seen if isinstance(e, events.StepFinished)]
    _, seen = run(REQ)  # FieldDenoiser adds the tile index: neighbours disagree by ≥ 1
    disagree = [e.consensus for e in seen if isinstance(e, events.StepFinished)]
    assert all(c is not None and c < 1e-5 for c in agree)
    assert all(c > 0.4 for c in disagree)


def test_global_context_runs_a_small_pass_first_and_counts_its_steps():
    den = FieldDenoiser()
    res, seen = run(REQ.replace(global_context=0.5, seed=1), den)
    planned = seen[0]
    assert isinstance(planned, events.Planned) and planned.total_steps == 8
    starts = [e for e in seen if isinstance(e, events.StepStarted)]
    assert [e.step for e in starts] == list(range(8))
    assert starts[0].plan.height == 16 and starts[0].plan.width < 256, "first pass: short side = one tile"
    assert all(e.plan == res.plan for e in starts[4:])
    assert not any(isinstance(e, events.TilePreview) and e.step < 4 for e in seen), "no previews off the canvas"
    a = generate(REQ.replace(global_context=0.5, seed=1), denoiser=FieldDenoiser()).latents
    assert torch.equal(a, res.latents), "deterministic for a seed"


def test_global_context_changes_the_real_terrain_and_is_deterministic():
    req = request_for("builtin:terrain", width=256, height=256, steps=3, seed=2, device="cpu")
    plain = generate(req, previews=False).image
    ctx1 = generate(req.replace(global_context=0.6), previews=False).image
    ctx2 = generate(req.replace(global_context=0.6), previews=False).image
    assert np.array_equal(ctx1, ctx2)
    assert np.abs(ctx1.astype(float) - plain.astype(float)).mean() > 10


def test_independent_ignores_jitter_with_a_notice():
    _, seen = run(REQ.replace(fusion="independent", jitter=True))
    assert any(isinstance(e, events.Notice) and "ignored" in e.message for e in seen)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True])
def test_global_context_is_validated(bad):
    from paradiff_gui.engine import RequestError

    with pytest.raises(RequestError, match=r"^global_context: must be a number from 0 \(off\) to 1"):
        GenerationRequest(global_context=bad)


def test_shifted_plan_example():
    plan = TilePlan.create(40, 40, overlap=4, tile=16)
    assert plan.row_starts == [0, 12, 24] and plan.stride == (12, 12)
    assert plan.shifted(5, 0).row_starts == [0, 7, 19, 24]


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m_karras", "ddim", "unipc"])
def test_global_context_and_jitter_work_with_diffusers_schedulers(sd_folder, sampler):
    req = GenerationRequest(model=str(sd_folder), prompt="a castle", width=384, height=256, tile=128, overlap=32,
                            steps=3, seed=1, device="cpu", sampler=sampler)
    plain = generate(req, previews=False).latents
    both = generate(req.replace(jitter=True, global_context=0.5), previews=False).latents
    assert torch.isfinite(both).all() and both.shape == plain.shape
    assert (both - plain).abs().mean() > 1e-3
