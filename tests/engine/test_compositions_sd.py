"""Compositions on the tiny SD pipeline, through the real loader: image-to-image against diffusers'
own image-to-image pipeline, the strength limits, a region that changes nothing, the VAE's
circular padding. (Random weights: these prove mechanics, not looks.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.models.registry import load_denoiser
from paradiff_gui.engine.models.sd.schedulers import make_scheduler
from paradiff_gui.engine.models.sd.vae import decode_synced

W, H = 128, 96  # one tile: the tiny UNet's native tile is 128 px
STEPS = 4


@pytest.fixture(scope="module")
def init_png(tmp_path_factory):
    g = np.random.default_rng(4)
    small = (g.random((6, 8, 3)) * 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("init") / "init.png"
    Image.fromarray(small).resize((W, H), Image.Resampling.BICUBIC).save(path)
    return path


def read(path):
    with Image.open(path) as im:
        return np.asarray(im, dtype=np.float32) / 255


def request(folder, **kw):
    fields = dict(model=str(folder), prompt="a red castle", negative_prompt="blue", width=W, height=H, tile=512,
                  steps=STEPS, sampler="ddim", seed=7, guidance=7.5, device="cpu", fusion="gaussian")
    return GenerationRequest(**{**fields, **kw})


def test_image_to_image_equals_diffusers_img2img_pipeline(sd_folder, init_png):
    got = generate(request(sd_folder, init_image=str(init_png), strength=0.5))
    den = load_denoiser(request(sd_folder), torch.device("cpu"), torch.float32)
    pixels = read(init_png)
    init = den.encode(pixels, lambda d, n: None)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(sd_folder), local_files_only=True,
                                                          safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)
    # Four-channel "images" are taken as latents by the pipeline; its noise comes from the same seed.
    expect = pipe(prompt="a red castle", negative_prompt="blue", image=init, strength=0.5, num_inference_steps=STEPS,
                  guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(7), output_type="latent").images
    torch.testing.assert_close(got.latents, expect, rtol=1e-4, atol=1e-4)
    assert got.info["strength"] == 0.5 and len(got.info["init_image_sha256"]) == 64


def test_strength_limits(sd_folder, init_png):
    den = load_denoiser(request(sd_folder), torch.device("cpu"), torch.float32)
    # Strength -> 0 (no step left): the init image back, through the VAE once.
    faint = generate(request(sd_folder, init_image=str(init_png), strength=0.1), denoiser=den)
    pixels = read(init_png)
    roundtrip = den.decode(den.encode(pixels, lambda d, n: None), lambda d, n: None)
    assert np.abs(faint.image.astype(int) - roundtrip.astype(int)).max() <= 1
    # Strength 1: exactly text-to-image with the same seed.
    events = []
    full = generate(request(sd_folder, init_image=str(init_png), strength=1.0), events.append, denoiser=den)
    text = generate(request(sd_folder), denoiser=den)
    torch.testing.assert_close(full.latents, text.latents)
    assert any("strength 1" in getattr(e, "message", "") for e in events)


def test_a_region_over_everything_with_the_main_prompt_changes_nothing(sd_folder):
    den = load_denoiser(request(sd_folder), torch.device("cpu"), torch.float32)
    plain = generate(request(sd_folder, width=256, tile=128, overlap=32), denoiser=den)
    same = generate(request(sd_folder, width=256, tile=128, overlap=32, regions=[
        {"rect": [0, 0, 256, H], "prompt": "a red castle", "negative_prompt": "blue", "feather": 0}]), denoiser=den)
    torch.testing.assert_close(same.latents, plain.latents, rtol=1e-5, atol=1e-5)
    other = generate(request(sd_folder, width=256, tile=128, overlap=32, regions=[
        {"rect": [128, 0, 256, H], "prompt": "green fog", "feather": 16}]), denoiser=den)
    diff = (other.latents - plain.latents).abs().mean(dim=(0, 1, 2))
    assert diff[: 128 // 8 - 2].max() < diff[128 // 8 + 2 :].min()  # the region's half moved, the other less


@torch.no_grad()
def test_wrapped_decode_pads_circularly(sd_folder):
    den = load_denoiser(request(sd_folder), torch.device("cpu"), torch.float32)
    vae = den.vae
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 4, 12, 16, generator=g)
    a = decode_synced(vae, z, lambda d, n: None, convert=lambda x: x, wrap="xy")
    b = decode_synced(vae, torch.roll(z, (3, 5), dims=(-2, -1)), lambda d, n: None, convert=lambda x: x, wrap="xy")
    # On a torus, moving the latents moves the picture: no edge is special.
    np.testing.assert_allclose(b, np.roll(a, (24, 40), axis=(0, 1)), atol=1e-4)
    plain = decode_synced(vae, z, lambda d, n: None, convert=lambda x: x)
    moved = decode_synced(vae, torch.roll(z, (3, 5), dims=(-2, -1)), lambda d, n: None, convert=lambda x: x)
    assert np.abs(moved - np.roll(plain, (24, 40), axis=(0, 1))).max() > 1e-2


def test_a_wrapped_sd_generation_decodes_circularly(sd_folder):
    res = generate(request(sd_folder, width=256, height=256, tile=128, overlap=32, wrap="xy", steps=1))
    assert res.plan.wrap == "xy" and res.info["decode"].endswith("wraps xy")
    assert res.image.shape == (256, 256, 3)
