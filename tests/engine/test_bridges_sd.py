"""Bridges on the SD family (diffusers UNets: SD 1.x/2.x, SDXL; ``models/sd/bridging.py``).

Tiny random-weight UNets built from config (``tests/tiny.py``, no downloads): these prove the
mechanics — a fully bridged tiled call of a diffusers UNet equals the whole-canvas call, the
bridges reach through the real generation loop, the picture does not depend on the tile batch,
and the kept model comes back plain — not image quality.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention
from tiny import tiny_sd, tiny_sdxl

from paradiff_gui.engine import Cancelled, CancelToken, GenerationRequest, events, generate
from paradiff_gui.engine.core.plan import TilePlan
from paradiff_gui.engine.models.sd.backend import load_sd
from paradiff_gui.engine.models.sd.bridging import BridgeableAttnProcessor, bridgeable, plain_attend
from paradiff_gui.engine.sampling.bridges import Bridge, BridgeConfig

# Latent px. The tiny UNets downsample once (their deepest level, with the self-attention, is
# 4x4 per tile): every tile start is a multiple of 2, so each layer's tile rects are exact.
CANVAS, TILE = 24, 8
FULL = BridgeConfig(halos=True, norms="canvas", attention=True, fresh=True)


@pytest.fixture(scope="module")
def unets():
    return {"sd": tiny_sd().unet.eval().requires_grad_(False),
            "sdxl": tiny_sdxl().unet.eval().requires_grad_(False)}


def _inputs(unet, xl):
    """A canvas and two guidance halves' conditioning ([unconditional, conditional]), the same
    for every tile (SDXL: one set of time ids for all rows, those of the whole canvas)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, CANVAS, CANVAS, generator=g)
    cond = {"encoder_hidden_states": torch.randn(2, 7, unet.config.cross_attention_dim, generator=g)}
    if xl:
        side = CANVAS * 8
        cond["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, 32, generator=g),
            "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * 2, dtype=torch.float32)}
    return x, cond


def _call(unet, x, cond, n):
    """The UNet on ``x`` (both halves: [x; x]) with each half's conditioning repeated ``n`` times."""
    def rep(v):
        return {k: rep(w) for k, w in v.items()} if isinstance(v, dict) else v.repeat_interleave(n, dim=0)

    return unet(torch.cat([x, x]), torch.tensor(500.0), **rep(cond), return_dict=False)[0]


def _stitch(out, plan, like):
    canvas = torch.zeros_like(like)
    n = len(plan.tiles)
    for i, t in enumerate(plan.tiles):
        canvas[..., t.y0:t.y1, t.x0:t.x1] = out[i::n]  # row i of each half
    return canvas


def _tiled(unet, x, cond, plan, config):
    tiles = list(plan.tiles)
    crops = torch.cat([x[..., t.y0:t.y1, t.x0:t.x1] for t in tiles])
    bridge = Bridge(unet, plan, config)
    with torch.inference_mode(), bridgeable(unet), bridge.installed(), bridge.tiles(tiles):
        out = _call(unet, crops, cond, len(tiles))
    return _stitch(out, plan, torch.cat([x, x]))


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_a_fully_bridged_tiled_call_equals_the_whole_canvas_call(unets, kind):
    unet = unets[kind]
    x, cond = _inputs(unet, kind == "sdxl")
    plan = TilePlan.create(CANVAS, CANVAS, overlap=0, tile=TILE)
    assert len(plan.tiles) == 9
    with torch.inference_mode():
        whole = _call(unet, x, cond, 1)
        with bridgeable(unet) as opened:  # opened but not bridged: the model computes what it did
            assert (_call(unet, x, cond, 1) - whole).abs().max().item() < 1e-6
    # Every self-attention (attn1) and no cross-attention (attn2) was opened.
    attn = {name: m for name, m in unet.named_modules() if isinstance(m, Attention)}
    assert opened and {id(m) for m in opened} == {id(m) for n, m in attn.items() if n.endswith("attn1")}
    bridged = _tiled(unet, x, cond, plan, FULL)
    assert (bridged - whole).abs().max().item() < 1e-4
    # Each channel carries something the others don't: without any one, the tiles disagree.
    for off in (BridgeConfig(halos=False), BridgeConfig(norms="off"), BridgeConfig(attention=False)):
        assert (_tiled(unet, x, cond, plan, off) - whole).abs().max().item() > 1e-2, off


def _steps(unet, bridge, x, cond, plan, batch, fresh=None):
    """One step of tile calls in batches of ``batch`` tiles (both halves); the tiles' outputs
    in plan order, [all unconditional; all conditional]."""
    tiles = list(plan.tiles)
    outs = []
    with torch.inference_mode():
        for i in range(0, len(tiles), batch):
            part = tiles[i:i + batch]
            crops = torch.cat([x[..., t.y0:t.y1, t.x0:t.x1] for t in part])
            with bridge.tiles(part, fresh=fresh):
                outs.append(_call(unet, crops, cond, len(part)).view(2, len(part), 4, TILE, TILE))
    bridge.end_step()
    return torch.cat(outs, dim=1).flatten(0, 1)


def test_previous_step_values_reproduce_the_fresh_call_when_the_canvas_did_not_change(unets):
    # A filling pass at step 0 leaves exact values; at step 1 every other tile's values are
    # step 0's, which with the same canvas equal this step's: in batches of 2 tiles the call
    # equals the whole-canvas one. Each self-attention layer must keep its own keys and values.
    unet = unets["sd"]
    x, cond = _inputs(unet, False)
    plan = TilePlan.create(CANVAS, CANVAS, overlap=0, tile=TILE)
    with torch.inference_mode():
        whole = _call(unet, x, cond, 1)
    bridge = Bridge(unet, plan, BridgeConfig(fresh=False))
    with bridgeable(unet), bridge.installed():
        _steps(unet, bridge, x, cond, plan, batch=len(plan.tiles), fresh=True)  # the filling pass
        step1 = _steps(unet, bridge, x, cond, plan, batch=2)
    assert (_stitch(step1, plan, whole) - whole).abs().max().item() < 1e-4


# -- in generation, through the real loop ---------------------------------------------------------

@pytest.fixture(scope="module")
def den(sd_folder):
    return load_sd(str(sd_folder), torch.device("cpu"), torch.float32)


def _generate(den, sd_folder, on_event=None, cancel=None, **fields):
    fields = {"width": 192, "height": 192, "steps": 3, "seed": 2, "sampler": "euler", "prompt": "a red castle",
              "negative_prompt": "blue", "device": "cpu", "dtype": "fp32", **fields}
    req = GenerationRequest(model=str(sd_folder), **fields)
    return generate(req, on_event, cancel, denoiser=den, previews=False)


def test_one_tile_is_unchanged_by_bridges(den, sd_folder):
    plain = _generate(den, sd_folder, width=128, height=128, bridges="off")
    bridged = _generate(den, sd_folder, width=128, height=128, bridges="full")
    assert len(bridged.plan) == 1
    # Float rounding only (measured: 5.2e-6 with latents up to |11|, from the canvas GroupNorm's
    # sum / sum-of-squares statistics; halos and attention alone: 0).
    assert (bridged.latents - plain.latents).abs().max().item() < 1e-5


@pytest.mark.parametrize("bridges", ["full", "attention"])
def test_previous_step_bridges_do_not_depend_on_the_tile_batch(den, sd_folder, bridges):
    # 192 px with 16-latent-px tiles and the default overlap: 2x2 tiles at starts 0 and 8.
    one = _generate(den, sd_folder, bridges=bridges, tile_batch=1)
    assert len(one.plan) == 4
    four = _generate(den, sd_folder, bridges=bridges, tile_batch=4)
    plain = _generate(den, sd_folder, bridges="off", tile_batch=4)
    # Float rounding only: the latents reach |12| (Euler's scale) and the CPU kernels already
    # round differently for other batch sizes without bridges (measured: 2.3e-5 = 1.9e-6 of the
    # scale; bridged 1.8-2.2e-5).
    scale = plain.latents.abs().max().item()
    assert (one.latents - four.latents).abs().max().item() < 1e-5 * scale
    # …and the bridges reached the UNet (for "attention": through the opened self-attention).
    # (Measured: full 4.3e-2 of the scale, attention alone 1.3e-3; step 0 runs unbridged.)
    assert (one.latents - plain.latents).abs().max().item() > 1e-4 * scale


def _plain(unet):
    """Every self-attention with its own processor, no ``attend``, no instance-patched forward."""
    return not any("attend" in m.__dict__ or "forward" in m.__dict__ or isinstance(getattr(m, "processor", None),
                                                                                    BridgeableAttnProcessor)
                   for m in unet.modules())


def test_the_unet_is_restored_after_a_run_and_after_a_cancel(den, sd_folder):
    unet = den.bridge_module
    processors = {name: m.processor for name, m in unet.named_modules() if isinstance(m, Attention)}
    seen = []

    def spy(cancel=None):
        def on_event(e):
            if isinstance(e, events.StepFinished) and e.step == 1:  # mid-run: opened and bridged
                seen.append(sum(isinstance(m.processor, BridgeableAttnProcessor) and "attend" in m.__dict__
                                and m.attend.__qualname__ != plain_attend().__qualname__  # the bridge's
                                for m in unet.modules() if isinstance(m, Attention)))
                seen.append(any("forward" in m.__dict__ for m in unet.modules()) and den.bridge is not None)
                if cancel is not None:
                    cancel.cancel()
        return on_event

    def restored():
        return den.bridge is None and _plain(unet) and all(
            m.processor is processors[name] for name, m in unet.named_modules() if isinstance(m, Attention))

    _generate(den, sd_folder, spy(), bridges="full")
    assert restored()
    cancel = CancelToken()
    with pytest.raises(Cancelled):
        _generate(den, sd_folder, spy(cancel), cancel, bridges="full")
    assert restored()
    assert seen == [4, True, 4, True]  # both runs had the tiny UNet's four attn1 modules bridged


def test_bridgeable_restores_after_an_error(unets):
    unet = unets["sd"]
    processors = [m.processor for m in unet.modules() if isinstance(m, Attention)]
    with pytest.raises(RuntimeError, match="boom"), bridgeable(unet):
        assert not _plain(unet)
        raise RuntimeError("boom")
    assert _plain(unet)
    assert [m.processor for m in unet.modules() if isinstance(m, Attention)] == processors


def test_same_step_generation_at_overlap_0_with_every_channel_equals_the_whole_canvas(den, sd_folder, monkeypatch):
    # bridge_step same, every channel over the whole canvas with raw second moments (the exact
    # configuration): the tiled generation is the whole canvas's, step by step, through the loop.
    from paradiff_gui.engine.sampling import sampler

    monkeypatch.setattr(sampler, "config_for", lambda *_: BridgeConfig())
    calls = []
    bridged = _generate(den, sd_folder, tile=64, overlap=0, bridges="full", bridge_step="same",
                        on_event=lambda e: calls.append(len(e.tiles)) if type(e).__name__ == "BatchStarted" else None)
    assert len(bridged.plan) == 9 and calls == [9, 9, 9]  # 3x3 tiles meeting edge to edge, every step one call
    whole = _generate(den, sd_folder, tile=256, overlap=0)  # one tile: the canvas (192 px)
    assert len(whole.plan) == 1
    scale = whole.latents.abs().max().item()
    assert (bridged.latents - whole.latents).abs().max().item() < 1e-4 * scale
    plain = _generate(den, sd_folder, tile=64, overlap=0)
    assert (plain.latents - whole.latents).abs().max().item() > 1e-2 * scale  # tiles alone are not it
