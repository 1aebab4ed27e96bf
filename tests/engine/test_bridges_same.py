"""Same-step bridges and pooled statistics (engine.sampling.bridges, issue 24).

The statistics tests use a lone GroupNorm on hand-made tiles (what pooling does, exactly); the
generation tests run the built-in terrain model's real weights (mechanics and invariants, not looks:
docs/QUALITY.md has the measured trade-off)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from paradiff_gui.engine.core.plan import TilePlan
from paradiff_gui.engine.sampling.bridges import Bridge, BridgeConfig

TILE = 16


def _norm_tiles(config: BridgeConfig, crops: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    norm = nn.GroupNorm(1, crops.shape[1], affine=False)
    bridge = Bridge(nn.Sequential(norm), plan, config)
    with torch.inference_mode(), bridge.installed(), bridge.tiles(list(plan.tiles)):
        return norm(crops)


def _offset_tiles(plan: TilePlan, offsets: list[float]) -> torch.Tensor:
    """Every tile the same content (one random pattern), each shifted by its own offset."""
    pattern = torch.randn(1, 2, TILE, TILE, generator=torch.Generator().manual_seed(0))
    return torch.cat([pattern + o for o in offsets])


def test_within_tile_pooling_keeps_each_tiles_variance_when_tiles_differ_by_an_offset():
    plan = TilePlan.create(4 * TILE, TILE, overlap=0, tile=TILE)  # 4 tiles in a row
    crops = _offset_tiles(plan, [0.0, 3.0, -2.0, 6.0])
    alone = _norm_tiles(BridgeConfig(halos=False, attention=False, norms="off"), crops, plan)
    within = _norm_tiles(BridgeConfig(halos=False, attention=False, pool="within"), crops, plan)
    total = _norm_tiles(BridgeConfig(halos=False, attention=False, pool="total"), crops, plan)
    # Within: the pooled variance is the tiles' own (equal content), so every tile keeps its spread
    # (the unbridged GroupNorm's unit variance) and the shared mean keeps the offsets between tiles.
    for i in range(4):
        assert within[i].std(unbiased=False).item() == pytest.approx(alone[i].std(unbiased=False).item(), rel=1e-4)
    gaps = within.mean((1, 2, 3))
    assert torch.allclose(gaps - gaps[0], torch.tensor([0.0, 3.0, -2.0, 6.0]) / crops[0].std(unbiased=False),
                          atol=1e-4)
    # Total (raw second moments): the offsets count as variance, and every tile is flattened.
    assert all(total[i].std(unbiased=False).item() < 0.5 for i in range(4))


def test_shares_mix_the_pooled_and_the_own_statistics():
    plan = TilePlan.create(2 * TILE, TILE, overlap=0, tile=TILE)
    crops = _offset_tiles(plan, [0.0, 4.0])
    common = dict(halos=False, attention=False, pool="within")
    own = _norm_tiles(BridgeConfig(**common, norms="off"), crops, plan)
    assert torch.allclose(_norm_tiles(BridgeConfig(**common, mean_share=0.0), crops, plan), own, atol=1e-5)
    half = _norm_tiles(BridgeConfig(**common, mean_share=0.5), crops, plan)
    full = _norm_tiles(BridgeConfig(**common, mean_share=1.0), crops, plan)
    # Half the shared mean: each tile half-way between its own centring and the shared one.
    assert torch.allclose(half, (own + full) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="mean_share must be from 0 to 1"):
        BridgeConfig(mean_share=1.5)
    with pytest.raises(ValueError, match="pool must be one of"):
        BridgeConfig(pool="raw")


def test_min_factor_and_first_step_leave_layers_and_steps_unbridged():
    from paradiff_gui.engine.models.terrain.unet import TerrainUNet

    torch.manual_seed(0)
    unet = TerrainUNet().eval().requires_grad_(False)
    plan = TilePlan.create(96, 96, overlap=0, tile=32)
    tiles = list(plan.tiles)
    x = torch.randn(9, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    sigma, label = torch.full((9,), 5.0), torch.full((9,), 0.3)

    def call(config, steps=0):
        bridge = Bridge(unet, plan, config)
        bridge.step = steps
        with torch.inference_mode(), bridge.installed(), bridge.tiles(tiles):
            return unet(x, sigma, label)

    with torch.inference_mode():
        alone = unet(x, sigma, label)
    norms = dict(halos=False, attention=False, pool="within")
    every = call(BridgeConfig(**norms))
    deep = call(BridgeConfig(**norms, min_factor=4))  # only the layers 4x and 8x smaller
    assert (every - alone).abs().max() > 1e-3 and (deep - alone).abs().max() > 1e-3
    assert (deep - every).abs().max() > 1e-3
    assert torch.allclose(call(BridgeConfig(**norms, min_factor=64)), alone, atol=1e-6)  # no layer that deep
    assert torch.allclose(call(BridgeConfig(**norms, first_step=2), steps=1), alone, atol=1e-6)  # warm-up
    assert torch.allclose(call(BridgeConfig(**norms, first_step=2), steps=2), every, atol=1e-6)


# -- in generation, on the real terrain weights --------------------------------------------------

def _generate(on_event=None, **fields):
    from paradiff_gui.engine import generate
    from paradiff_gui.engine.api.requests import request_for

    fields = {"width": 192, "height": 192, "steps": 3, "seed": 1, "overlap": 64, "device": "cpu", **fields}
    return generate(request_for("builtin:terrain", **fields), on_event, previews=False)


def test_same_step_generation_runs_every_tile_in_one_call_and_differs_from_previous_step():
    from paradiff_gui.engine import events
    from paradiff_gui.engine.models.registry import _CACHE

    seen = []
    same = _generate(bridges="norms", bridge_step="same",
                     on_event=lambda e: seen.append(e) if isinstance(e, (events.BatchStarted, events.Notice)) else None)
    batches = [e.tiles for e in seen if isinstance(e, events.BatchStarted)]
    assert batches == [(0, 1, 2, 3)] * 3  # every step: all four tiles, one call (no CPU chunking)
    assert any(isinstance(e, events.Notice) and e.message.startswith("same-step bridges: the 4 tiles") for e in seen)
    previous = _generate(bridges="norms")
    plain = _generate(bridges="off")
    img = same.image.astype(np.int64)
    assert np.abs(img - previous.image.astype(np.int64)).mean() > 20
    assert np.abs(img - plain.image.astype(np.int64)).mean() > 20
    assert same.request.bridge_step == "same" and same.info["tile_batch"] == 4
    (den,) = _CACHE.values()
    assert den.bridge is None and not any("forward" in m.__dict__ for m in den.bridge_module.modules())


def test_same_step_refusals_name_the_field():
    from paradiff_gui.engine.api.requests import request_for
    from paradiff_gui.engine.core.request import RequestError

    with pytest.raises(RequestError, match=r"^bridge_step: must be one of previous, same"):
        request_for("builtin:terrain", bridges="norms", bridge_step="now")
    with pytest.raises(RequestError, match=r"^bridge_step: says where bridges take .* bridges halos, norms"):
        request_for("builtin:terrain", bridge_step="same")
    with pytest.raises(RequestError, match=r"^tile_batch: same-step bridges run every tile .* \(got 2\)"):
        request_for("builtin:terrain", bridges="norms", bridge_step="same", tile_batch=2)
    # A plan whose tiles cannot be held in one call: refused up front, nothing run.
    with pytest.raises(RequestError, match=r"^bridge_step: same-step bridges run this process's \d+ tiles in one "
                                           r"call, which the host-memory budget holds at most"):
        _generate(bridges="norms", bridge_step="same", width=1024, height=1024, host_memory=1.0)


def test_two_gloo_ranks_give_the_same_step_picture_of_one_process(tmp_path):
    # Same-step bridges with two processes: each runs its own tiles in one call and the ranks sum
    # every bridged layer's values at that layer (GroupNorm statistics here). The same picture as
    # one process, up to float summation order.
    import os
    import subprocess
    import sys

    from PIL import Image

    from paradiff_gui.cli import main

    args = ["generate", "--model", "builtin:terrain", "--size", "192x192", "--overlap", "64", "--steps", "3",
            "--seed", "4", "--bridges", "norms", "--bridge-step", "same", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    assert main([*args, "--device", "cpu", "-o", str(tmp_path / "one.png")]) == 0
    done = subprocess.run([sys.executable, "-m", "paradiff_gui", *args, "--devices", "cpu,cpu", "-o",
                           str(tmp_path / "two.png")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    runs = {}
    for name in ("one", "two"):
        with Image.open(tmp_path / f"{name}.png") as im:
            runs[name] = np.asarray(im).astype(np.int64)
    diff = np.abs(runs["one"] - runs["two"])
    assert diff.max() <= 32 and diff.mean() < 0.5, (diff.max(), diff.mean())  # of 65535 (see test_bridges)
    previous = _generate(bridges="norms", seed=4)
    assert np.abs(runs["two"] - previous.image.astype(np.int64)).mean() > 20  # the ranks bridged the same step


def test_out_of_memory_in_a_same_step_call_names_bridge_step_and_does_not_halve(monkeypatch):
    # Halving the batch would change a same-step picture (each half would see only its own tiles).
    from paradiff_gui.engine import events
    from paradiff_gui.engine.core.request import RequestError
    from paradiff_gui.engine.models.registry import _CACHE

    _generate(bridges="off", steps=1)  # the model, loaded and kept
    (den,) = _CACHE.values()
    plain = den.predict
    sizes = []

    def tight(x, t, tiles, cond):
        sizes.append(len(tiles))
        if den.bridge is not None:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return plain(x, t, tiles, cond)

    monkeypatch.setattr(den, "predict", tight)
    notices = []
    with pytest.raises(RequestError, match=r"^bridge_step: same-step bridges run 4 tiles in one call, which does not "
                                           r"fit in the memory of cpu: use bridge_step previous"):
        _generate(bridges="norms", bridge_step="same",
                  on_event=lambda e: notices.append(e.message) if isinstance(e, events.Notice) else None)
    assert sizes == [4] and not any(n.startswith("out of memory") for n in notices)
