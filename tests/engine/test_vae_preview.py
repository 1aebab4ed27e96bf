"""Tiled decode and the fitted preview map, on the tiny VAE."""

from __future__ import annotations

import numpy as np
import torch
from tiny import tiny_sd

from paradiff_gui.engine.models.sd import preview
from paradiff_gui.engine.models.sd.vae import (
    decode_latents,
    decode_synced,
    encode_synced,
    synced_decode_supported,
    synced_host_bytes,
    to_uint8,
)

torch.manual_seed(0)
PIPE = tiny_sd()
VAE = PIPE.vae


def decode_fn(z):
    return VAE.decode(z / VAE.config.scaling_factor, return_dict=False)[0]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return 10 * np.log10(4.0 / mse)  # values in [-1, 1]: peak-to-peak 2


@torch.no_grad()
def test_tiled_decode_matches_whole_decode_and_reports_progress():
    # A smooth latent, as finished canvases are (white noise would exaggerate tile-edge effects).
    g = torch.Generator().manual_seed(1)
    z = torch.nn.functional.interpolate(torch.randn(1, 4, 12, 20, generator=g), size=(96, 160), mode="bicubic")
    whole = decode_latents(decode_fn, z, 8, lambda d, n: None, threshold=1000)
    ticks: list[tuple[int, int]] = []
    tiled = decode_latents(decode_fn, z, 8, lambda d, n: ticks.append((d, n)), tile=64, overlap=32, threshold=40)
    assert tiled.shape == whole.shape == (768, 1280, 3)
    n = ticks[-1][1]
    # ceil((96-32)/32) x ceil((160-32)/32) decode tiles, one progress tick each
    assert n == 2 * 4 and ticks == [(i, n) for i in range(n + 1)]
    # GroupNorm statistics are per tile here (exact whole-canvas statistics come later), so the
    # match is close, not exact: 26.0 dB on this random VAE (23.4 dB with 48/16 tiles, 28.4 with
    # 80/40 — the gap is normalisation, shrinking as tiles grow).
    assert psnr(tiled, whole) > 24


def _smooth_latent(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.randn(1, 4, 12, 20, generator=g), size=(96, 160), mode="bicubic")


@torch.no_grad()
def test_exact_tiled_decode_equals_the_whole_decode():
    # 96x160 latent px in 64 px tiles (6 tiles a stage), every GroupNorm on whole-canvas
    # statistics; the canvas is small enough for whole-canvas attention, so the only difference
    # to a whole decode is float rounding (125 dB measured).
    z = _smooth_latent()
    whole = decode_latents(decode_fn, z, 8, lambda d, n: None, threshold=1000)
    ticks: list[tuple[int, int]] = []
    tiled = decode_synced(VAE, z / VAE.config.scaling_factor, lambda d, n: ticks.append((d, n)), core=64)
    assert synced_decode_supported(VAE)
    assert tiled.shape == whole.shape == (768, 1280, 3) and tiled.dtype == np.uint8
    exact = decode_synced(VAE, z / VAE.config.scaling_factor, lambda d, n: None, core=64, convert=lambda a: a)
    reference = decode_fn(z)[0].permute(1, 2, 0).numpy()
    assert psnr(exact, reference) > 100
    assert np.abs(tiled.astype(int) - to_uint8(whole).astype(int)).max() <= 1
    n = ticks[-1][1]
    assert ticks == [(i, n) for i in range(n + 1)]
    # The peak is the last block's resnets at full size: input + hidden + output, 8 channels each.
    assert synced_host_bytes(VAE, 96, 160, torch.float32) == (8 + 2 * 8) * 768 * 1280 * 4


@torch.no_grad()
def test_the_exact_decode_stays_exact_on_large_canvases():
    # 144x176 latent px: more than the 128² up to which the attention used to span the whole
    # canvas (tile-local beyond: 24 dB on this VAE at 2048²). Every query tile now attends to every
    # key, so only float rounding remains.
    g = torch.Generator().manual_seed(4)
    z = torch.nn.functional.interpolate(torch.randn(1, 4, 18, 22, generator=g), size=(144, 176), mode="bicubic")
    exact = decode_synced(VAE, z / VAE.config.scaling_factor, lambda d, n: None, convert=lambda a: a)
    assert psnr(exact, decode_fn(z)[0].permute(1, 2, 0).numpy()) > 100


@torch.no_grad()
def test_tile_local_attention_is_the_only_approximation_of_the_cheaper_option():
    # With attention_whole_px=0 the middle block's attention sees a tile and a 16 px halo:
    # 35.8 dB here, against 26.0 dB for per-tile statistics (the fallback above).
    z = _smooth_latent()
    reference = decode_fn(z)[0].permute(1, 2, 0).numpy()
    local = decode_synced(VAE, z / VAE.config.scaling_factor, lambda d, n: None, core=64, attention_whole_px=0,
                          convert=lambda a: a)
    per_tile = decode_latents(decode_fn, z, 8, lambda d, n: None, tile=64, overlap=32, threshold=40)
    assert psnr(local, reference) > 34 > 27 > psnr(per_tile, reference)


class LinearVAE(torch.nn.Module):
    """A VAE whose encoder is a known linear map of the 8x-pooled image: the fit must invert it."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([[0.8, -0.3, 0.1], [0.2, 0.9, -0.4], [-0.5, 0.3, 0.7],
                                                  [0.1, 0.1, 0.1]]), requires_grad=False)

    def encode(self, img):
        pooled = torch.nn.functional.avg_pool2d(img, 8)
        mean = torch.einsum("ck,bkhw->bchw", self.a, pooled) + 0.05

        class Dist:
            latent_dist = type("D", (), {"mean": mean})

        return Dist


@torch.no_grad()
def test_fitted_preview_map_inverts_a_known_linear_vae():
    vae = LinearVAE()
    m = preview.fit_linear_rgb(vae, 0.5, 8)
    assert m.shape == (5, 3)
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    z = vae.encode(img).latent_dist.mean * 0.5
    rgb = preview.apply_linear_rgb(z, m)
    assert rgb.dtype == torch.uint8 and rgb.shape == (1, 8, 8, 3)
    target = (torch.nn.functional.avg_pool2d(img, 8)[0].permute(1, 2, 0) + 1) * 127.5
    assert (rgb[0].float() - target).abs().max() <= 1.0


def test_preview_is_capped_in_size():
    m = torch.zeros(5, 3)
    assert preview.apply_linear_rgb(torch.zeros(2, 4, 512, 300), m).shape == (2, 128, 75, 3)


def test_x0_estimate_inverts_the_forward_process():
    x0 = torch.randn(2, 4, 8, 8)
    eps = torch.randn(2, 4, 8, 8)
    ab = 0.3
    xt = ab**0.5 * x0 + (1 - ab) ** 0.5 * eps
    v = ab**0.5 * eps - (1 - ab) ** 0.5 * x0
    torch.testing.assert_close(preview.x0_from_vp(xt, eps, ab, "epsilon"), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(preview.x0_from_vp(xt, v, ab, "v_prediction"), x0, atol=1e-5, rtol=0)


@torch.no_grad()
def test_exact_tiled_encode_equals_the_whole_encode():
    # 768x1280 px in 512 px tiles (the same stages, downsampling): the latent moments match
    # vae.encode's to float rounding (140 dB measured; 48 dB with tile-local attention).
    g = torch.Generator().manual_seed(2)
    img = torch.nn.functional.interpolate(torch.rand(1, 3, 24, 40, generator=g) * 2 - 1, size=(768, 1280),
                                          mode="bicubic").clamp(-1, 1)
    whole = VAE.encode(img).latent_dist.parameters
    tiled = encode_synced(VAE, img, lambda d, n: None)
    assert tiled.shape == whole.shape == (1, 8, 96, 160)
    spread = float(whole.max() - whole.min())
    assert 10 * np.log10(spread**2 / float(((tiled - whole) ** 2).mean())) > 100
    local = encode_synced(VAE, img, lambda d, n: None, attention_whole_px=0)
    assert 10 * np.log10(spread**2 / float(((local - whole) ** 2).mean())) > 40


def test_generate_decodes_large_canvases_with_whole_canvas_statistics():
    from paradiff_gui.engine import GenerationRequest, generate
    from paradiff_gui.engine.models.sd.backend import SDDenoiser

    den = SDDenoiser(tiny_sd(), "tiny-sd", torch.device("cpu"), torch.float32)
    big = generate(GenerationRequest(model="tiny", prompt="x", width=1024, height=512, tile=256, overlap=64, steps=1,
                                     seed=3, device="cpu"), denoiser=den)
    assert big.info["decode"] == "tiled, whole-canvas GroupNorm" and big.image.shape == (512, 1024, 3)
    small = generate(GenerationRequest(model="tiny", prompt="x", width=256, height=256, steps=1, seed=3,
                                       device="cpu"), denoiser=den)
    assert small.info["decode"] == "whole"


def test_a_decode_the_host_cannot_hold_is_announced_before_any_work(monkeypatch):
    from paradiff_gui.engine import GenerationRequest, events, generate
    from paradiff_gui.engine.models.sd import vae
    from paradiff_gui.engine.models.sd.backend import SDDenoiser

    den = SDDenoiser(tiny_sd(), "tiny-sd", torch.device("cpu"), torch.float32)
    monkeypatch.setattr(vae, "host_budget", lambda: 1 << 20)  # 1 MiB "free"
    seen = []
    res = generate(GenerationRequest(model="tiny", prompt="x", width=1024, height=512, tile=256, overlap=64, steps=1,
                                     seed=3, device="cpu"), seen.append, denoiser=den)
    notices = [i for i, e in enumerate(seen) if isinstance(e, events.Notice) and "exact tiled decode" in e.message]
    first_step = next(i for i, e in enumerate(seen) if isinstance(e, events.StepStarted))
    assert notices and notices[0] < first_step  # said up front, not discovered at the end
    assert res.info["decode"].startswith("tiled, per-tile GroupNorm")  # and in the recipe
    monkeypatch.setattr(vae, "host_budget", lambda: 1 << 40)
    seen.clear()
    generate(GenerationRequest(model="tiny", prompt="x", width=1024, height=512, tile=256, overlap=64, steps=1,
                               seed=3, device="cpu"), seen.append, denoiser=den)
    assert not any(isinstance(e, events.Notice) and "exact tiled decode" in e.message for e in seen)
