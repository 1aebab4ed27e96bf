"""FLUX and SD3 described without loading (configs only), their request defaults, the CLI flags,
previews and the 16-channel decode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core.plan import TilePlan
from paradiff_gui.engine.models.info import describe_model
from paradiff_gui.engine.runtime.estimate import estimate


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from tiny import save
    from tiny_dit import tiny_flux, tiny_sd3

    root = tmp_path_factory.mktemp("models")
    return {"dev": save(tiny_flux(), root / "flux-dev"), "schnell": save(tiny_flux(False), root / "flux-schnell"),
            "sd3": save(tiny_sd3(), root / "sd3")}


def test_flux_and_sd3_are_described_from_their_configs(folders):
    dev, schnell, sd3 = (describe_model(str(folders[k])) for k in ("dev", "schnell", "sd3"))
    assert dev.label == "flux-dev (FLUX.1 dev)" and schnell.label == "flux-schnell (FLUX.1 schnell)"
    assert sd3.label == "sd3 (SD3)"
    for info in (dev, schnell, sd3):
        assert (info.scale, info.channels, info.tile_multiple, info.text) == (8, 16, 16, True)
    assert dev.native_tile == schnell.native_tile == 1024
    assert sd3.native_tile == 16 * 8  # the tiny transformer's sample_size × the VAE factor
    assert dev.samplers == ("euler",)  # a dynamic shift: no Heun
    assert schnell.samplers == sd3.samplers == ("euler", "heun")
    # Guidance: an embedding of dev (one view per tile), nothing for schnell, classifier-free for SD3.
    assert (dev.guidance, dev.guidance_embedded, dev.views_per_tile) == (True, True, 1)
    assert not schnell.guidance and schnell.views_per_tile == 1
    assert (sd3.guidance, sd3.views_per_tile) == (True, 2)


def test_request_defaults_are_the_pipelines(folders):
    dev = request_for(str(folders["dev"]))
    assert (dev.steps, dev.guidance, dev.sampler) == (28, 3.5, "euler")
    schnell = request_for(str(folders["schnell"]))
    assert (schnell.steps, schnell.guidance, schnell.sampler) == (4, 1.0, "euler")
    sd3 = request_for(str(folders["sd3"]))
    assert (sd3.steps, sd3.guidance, sd3.sampler) == (28, 7.0, "euler")


def test_the_estimate_counts_one_view_per_tile_for_flux_dev_and_two_for_sd3(folders):
    for key, views in (("dev", 1), ("sd3", 2)):
        req = request_for(str(folders[key]), width=256, height=128, tile=128, overlap=0, device="cpu")
        est = estimate(req, describe_model(req.model))
        assert est.tiles == 2 and est.views_per_step == 2 * views


def test_cli_flags_reach_the_request(folders):
    from paradiff_gui.cli import build_parser, request_from_args

    args = build_parser().parse_args(["generate", "--model", str(folders["dev"]), "--seed", "1", "--positions",
                                      "canvas", "--transformer", "/x/flux1-dev.safetensors"])
    req = request_from_args(args)
    assert (req.positions, req.transformer, req.sampler, req.steps) == ("canvas", "/x/flux1-dev.safetensors",
                                                                        "euler", 28)
    assert type(req).from_json(req.to_json()) == req  # the recipe keeps them


def test_positions_are_validated():
    from paradiff_gui.engine.core.request import GenerationRequest, RequestError

    with pytest.raises(RequestError) as err:
        GenerationRequest(positions="global")
    assert err.value.field == "positions" and "local, canvas" in err.value.message
    with pytest.raises(RequestError) as err:
        GenerationRequest(transformer="")
    assert err.value.field == "transformer"


@torch.no_grad()
def test_the_16_channel_decode_equals_the_vaes_and_the_staged_decoder_works_unchanged(folders):
    from paradiff_gui.engine import GenerationRequest
    from paradiff_gui.engine.models.registry import load_denoiser
    from paradiff_gui.engine.models.sd.vae import decode_synced

    den = load_denoiser(GenerationRequest(model=str(folders["dev"]), sampler="euler", device="cpu"),
                        torch.device("cpu"), torch.float32)
    z = torch.randn(1, 16, 12, 16, generator=torch.Generator().manual_seed(0))
    cfg = den.vae.config
    expect = den.vae.decode(z / cfg.scaling_factor + cfg.shift_factor).sample
    expect = ((expect[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    got = den.decode(z, lambda d, n: None)
    assert den.decode_method == "whole"
    assert np.abs(got.astype(int) - expect.astype(int)).max() <= 1
    # The staged (exact tiled) decoder on the 16-channel VAE: shift and scale applied outside, as SD's.
    staged = decode_synced(den.vae, z / cfg.scaling_factor + cfg.shift_factor, lambda d, n: None)
    assert np.abs(staged.astype(int) - expect.astype(int)).max() <= 1


@torch.no_grad()
def test_previews_map_the_flow_x0_estimate_through_the_fitted_colours(folders):
    from paradiff_gui.engine import GenerationRequest
    from paradiff_gui.engine.models.registry import load_denoiser

    req = GenerationRequest(model=str(folders["dev"]), sampler="euler", device="cpu", width=128, height=128)
    den = load_denoiser(req, torch.device("cpu"), torch.float32)
    plan = TilePlan.for_request(req, den.scale, den.native_tile)
    den.prepare(req, plan)
    assert den._rgb.shape == (17, 3)
    # A colour picture encoded by the VAE, noised to σ 0.6 with v = ε − x0: the preview of (x, v)
    # is the preview of x0 itself, and it looks like the picture.
    y, x = torch.meshgrid(torch.linspace(-1, 1, 128), torch.linspace(-1, 1, 128), indexing="ij")
    img = torch.stack([x, y, -x])[None]
    x0 = den.encode(((img[0].permute(1, 2, 0) + 1) / 2).numpy(), lambda d, n: None)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    sigma = 0.6
    noisy = (1 - sigma) * x0 + sigma * eps
    rgb = den.preview(noisy, eps - x0, sigma * 1000)
    torch.testing.assert_close(rgb, den.preview(x0, torch.zeros_like(x0), 0.0), atol=1, rtol=0)
    assert len(plan) == 1 and rgb.shape == (1, 16, 16, 3)
