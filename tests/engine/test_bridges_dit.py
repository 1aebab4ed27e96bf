"""Bridges on the diffusion transformers (FLUX.1, SD3): the attention channel carries the neighbours'
image tokens — keys as the neighbours computed them, with their canvas positions — into each block's
joint attention (``models/flux/attention.py``, ``models/sd3/attention.py``).

Tiny random-weight transformers built from config (``tests/tiny_dit.py``, no downloads): they prove
the mechanics — with canvas positions, every tile bridged and overlap 0, a tiled call equals one
call on the whole canvas; a bridged generation does not depend on the tile batch; the kept model
comes back plain; what cannot work is refused by name — not image quality.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import JointAttnProcessor2_0
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.core.plan import TilePlan
from paradiff_gui.engine.core.request import RequestError
from paradiff_gui.engine.models.flux import attention as flux_attention
from paradiff_gui.engine.models.flux.backend import FluxDenoiser
from paradiff_gui.engine.models.sd3 import attention as sd3_attention
from paradiff_gui.engine.models.sd3.backend import SD3Denoiser
from paradiff_gui.engine.sampling.bridges import Bridge, BridgeConfig

CANVAS, TILE = 32, 16  # latent px: 2x2 tiles of 8x8 tokens
ATTENTION = BridgeConfig(halos=False, norms="off", attention=True, fresh=True)  # reach None: everything


@pytest.fixture(scope="module")
def dens():
    from tiny_dit import tiny_flux, tiny_sd3

    def ready(pipe):  # as from_pretrained leaves them: no dropout in the text encoders
        for part in pipe.components.values():
            if isinstance(part, torch.nn.Module):
                part.eval()
        return pipe

    cpu = torch.device("cpu")
    return {"flux": FluxDenoiser(ready(tiny_flux(guidance_embeds=True)), "tiny FLUX", cpu, torch.float32),
            "sd3": SD3Denoiser(ready(tiny_sd3()), "tiny SD3", cpu, torch.float32)}


def _request(**kw):
    fields = dict(model="tiny", prompt="a red castle", width=CANVAS * 8, height=CANVAS * 8, tile=TILE * 8,
                  overlap=0, steps=2, sampler="euler", seed=3, guidance=3.5, device="cpu", fusion="gaussian",
                  positions="canvas")
    return GenerationRequest(**{**fields, **kw})


def _tiled(den, x, t, plan, cond, config):
    tiles = list(plan.tiles)
    crops = torch.cat([x[..., tl.y0:tl.y1, tl.x0:tl.x1] for tl in tiles])
    bridge = Bridge(den.bridge_module, plan, config)
    with torch.inference_mode(), den.bridgeable(), bridge.installed():
        den.bridge = bridge
        try:
            out = den.predict(crops, t, tiles, cond)
        finally:
            den.bridge = None
    canvas = torch.zeros_like(x)
    for i, tl in enumerate(tiles):
        canvas[..., tl.y0:tl.y1, tl.x0:tl.x1] = out[i]
    return canvas


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_a_bridged_tiled_call_with_canvas_positions_equals_the_whole_canvas_call(dens, kind):
    den = dens[kind]
    whole_plan = TilePlan.create(CANVAS, CANVAS, overlap=0, tile=CANVAS)
    plan = TilePlan.create(CANVAS, CANVAS, overlap=0, tile=TILE)
    assert len(plan.tiles) == 4
    req = _request(bridges="attention")
    cond = den.prepare(req, plan)
    whole_cond = den.prepare(_request(tile=CANVAS * 8), whole_plan)
    x = torch.randn(1, den.channels, CANVAS, CANVAS, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(700.0)
    with torch.inference_mode():
        whole = den.predict(x, t, list(whole_plan.tiles), whole_cond)
        with den.bridgeable():  # opened but not bridged: the model computes what it did
            opened = den.predict(x, t, list(whole_plan.tiles), whole_cond)
    assert (opened - whole).abs().max().item() < 1e-5
    bridged = _tiled(den, x, t, plan, cond, ATTENTION)
    diff = (bridged - whole).abs().max().item()
    print(f"{kind}: bridged 2x2 tiles vs the whole canvas: max |diff| {diff:.1e} (output spread "
          f"{whole.std().item():.2f})")
    assert diff < 1e-4
    # Without the bridge the tiles are pictures of their own: far from the whole canvas.
    crops = torch.cat([x[..., tl.y0:tl.y1, tl.x0:tl.x1] for tl in plan.tiles])
    with torch.inference_mode():
        alone = den.predict(crops, t, list(plan.tiles), cond)
    unbridged = torch.zeros_like(x)
    for i, tl in enumerate(plan.tiles):
        unbridged[..., tl.y0:tl.y1, tl.x0:tl.x1] = alone[i]
    assert (unbridged - whole).abs().max().item() > 1e-2
    # A strip of 2 tokens along each border carries less than the whole canvas.
    narrow = _tiled(den, x, t, plan, cond, BridgeConfig(halos=False, norms="off", attention=True, fresh=True,
                                                        reach=4))
    assert (narrow - whole).abs().max().item() > 1e-4


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_a_bridged_generation_does_not_depend_on_the_tile_batch_and_leaves_the_model_plain(dens, kind):
    den = dens[kind]
    kw = dict(width=192, height=128, tile=96, overlap=32, steps=3, bridges="full",
              guidance=3.5 if kind == "flux" else 4.0)
    one = generate(_request(tile_batch=1, **kw), denoiser=den, previews=False)
    assert len(one.plan) >= 4
    every = generate(_request(tile_batch=len(one.plan), **kw), denoiser=den, previews=False)
    diff = (one.latents - every.latents).abs().max().item()
    print(f"{kind} bridged: tile_batch 1 vs all: max |diff| {diff:.1e}")
    assert diff < 1e-5
    off = generate(_request(tile_batch=len(one.plan), **{**kw, "bridges": "off"}), denoiser=den, previews=False)
    assert (off.latents - every.latents).abs().max().item() > 1e-3  # the bridges carried something
    # Every attention layer has its own processor back and no `attend`.
    layers = flux_attention.attention_modules(den.transformer) if kind == "flux" else \
        sd3_attention.attention_modules(den.transformer)
    own = FluxAttnProcessor if kind == "flux" else JointAttnProcessor2_0
    assert layers and all(type(m.processor) is own and "attend" not in m.__dict__ for m in layers)


@pytest.mark.parametrize(("kw", "field", "says"), [
    (dict(bridges="halos"), "bridges", "only in attention"),
    (dict(bridges="norms"), "bridges", "only in attention"),
    (dict(bridges="attention", positions="local"), "positions", "positions canvas"),
    (dict(bridges="full", positions="local"), "positions", "positions canvas"),
])
def test_bridges_a_transformer_cannot_carry_are_refused_by_name(dens, kw, field, says):
    for den in dens.values():
        with pytest.raises(RequestError) as err:
            generate(_request(**kw), denoiser=den, previews=False)
        assert err.value.field == field and says in err.value.message, err.value


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_same_step_generation_runs_every_tile_in_one_call_and_leaves_the_model_plain(dens, kind):
    # The generation-level check (the exactness of a same-step call is the test above: a whole-
    # canvas generation is not the oracle here, its schedule's shift is the one for the canvas's
    # size, not the tile's).
    den = dens[kind]
    kw = dict(guidance=3.5 if kind == "flux" else 4.0, bridges="attention")
    calls = []
    same = generate(_request(bridge_step="same", **kw), lambda e: calls.append(len(e.tiles))
                    if type(e).__name__ == "BatchStarted" else None, denoiser=den, previews=False)
    assert len(same.plan) == 4 and calls == [4, 4]  # each of the 2 steps: one call with the 4 tiles
    previous = generate(_request(tile_batch=1, **kw), denoiser=den, previews=False)
    off = generate(_request(**{**kw, "bridges": "off"}), denoiser=den, previews=False)
    assert (same.latents - previous.latents).abs().max().item() > 1e-4  # step 1 saw this step's keys
    assert (same.latents - off.latents).abs().max().item() > 1e-3
    layers = flux_attention.attention_modules(den.transformer) if kind == "flux" else \
        sd3_attention.attention_modules(den.transformer)
    assert layers and all("attend" not in m.__dict__ for m in layers)
