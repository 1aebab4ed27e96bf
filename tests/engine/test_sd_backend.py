"""The SD backend on tiny models loaded through the real loader (save_pretrained → folder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.core.request import SAMPLERS
from paradiff_gui.engine.models.registry import clear_cache
from paradiff_gui.engine.models.sd.schedulers import make_scheduler

W, H = 128, 96  # image px → 16x12 latent px, smaller than the tiny UNet's 16 px native tile
STEPS = 4


def pipeline_latents(pipe_cls, folder, sampler, prompt, negative, noise, generator, guidance=7.5, **kw):
    pipe = pipe_cls.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config)
    return pipe(
        prompt=prompt, negative_prompt=negative, height=H, width=W, num_inference_steps=STEPS,
        guidance_scale=guidance, latents=noise, generator=generator, output_type="latent", **kw,
    ).images


def paradiff_latents(folder, sampler, prompt, negative, seed, guidance=7.5):
    req = GenerationRequest(
        model=str(folder), prompt=prompt, negative_prompt=negative, width=W, height=H, tile=512,
        steps=STEPS, sampler=sampler, seed=seed, guidance=guidance, device="cpu", fusion="gaussian",
    )
    result = generate(req)
    assert len(result.plan) == 1, "one tile covers the whole canvas"
    return result


def same_noise(seed, shape=(1, 4, H // 8, W // 8)):
    g = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=g), g


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_one_tile_equals_plain_diffusers_pipeline(sd_folder, sampler):
    noise, g = same_noise(3)
    # The pipeline's generator continues after the noise draw, as Paradiff's does, so ancestral
    # samplers draw the same step noise too.
    expect = pipeline_latents(StableDiffusionPipeline, sd_folder, sampler, "a red castle", "blue", noise, g)
    got = paradiff_latents(sd_folder, sampler, "a red castle", "blue", seed=3)
    torch.testing.assert_close(got.latents, expect, rtol=1e-4, atol=1e-4)


def test_v_prediction_sd2_style_equals_pipeline(sd_v_folder):
    noise, g = same_noise(5)
    expect = pipeline_latents(StableDiffusionPipeline, sd_v_folder, "ddim", "a green forest", "", noise, g)
    got = paradiff_latents(sd_v_folder, "ddim", "a green forest", "", seed=5)
    torch.testing.assert_close(got.latents, expect, rtol=1e-4, atol=1e-4)


def test_guidance_one_skips_the_unconditional_half(sd_folder):
    noise, g = same_noise(2)
    expect = pipeline_latents(StableDiffusionPipeline, sd_folder, "euler", "a cat", "", noise, g, guidance=1.0)
    got = paradiff_latents(sd_folder, "euler", "a cat", "", seed=2, guidance=1.0)
    torch.testing.assert_close(got.latents, expect, rtol=1e-4, atol=1e-4)


def test_sdxl_one_tile_equals_pipeline(sdxl_folder):
    noise, g = same_noise(4)
    expect = pipeline_latents(StableDiffusionXLPipeline, sdxl_folder, "euler", "a blue sky", "night", noise, g)
    got = paradiff_latents(sdxl_folder, "euler", "a blue sky", "night", seed=4)
    torch.testing.assert_close(got.latents, expect, rtol=1e-4, atol=1e-4)


def test_sdxl_micro_conditioning_is_the_tiles_position(sdxl_folder, monkeypatch):
    clear_cache()
    req = GenerationRequest(model=str(sdxl_folder), prompt="a sea", width=256, height=192, grid=(2, 3),
                            overlap=16, steps=1, sampler="euler", device="cpu", tile_batch=6)
    seen = []
    from diffusers import UNet2DConditionModel

    original = UNet2DConditionModel.forward

    def spy(self, sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=None, **kw):
        seen.append(added_cond_kwargs["time_ids"].clone())
        return original(self, sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=added_cond_kwargs, **kw)

    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    result = generate(req, previews=False)
    (time_ids,) = seen
    plan = result.plan
    assert time_ids.shape == (2 * len(plan), 6), "both guidance halves of every tile in one batch"
    for half in (0, 1):
        for k, tile in enumerate(plan.tiles):
            x0, y0, x1, y1 = plan.image_rect(tile)
            assert time_ids[half * len(plan) + k].tolist() == [192, 256, y0, x0, y1 - y0, x1 - x0]
    clear_cache()


def test_compile_wraps_the_unet_and_keeps_the_picture(sd_folder, monkeypatch):
    # torch.compile itself is replaced by a recorder (compiling on a CPU takes minutes); what is
    # checked is that the request reaches the backend, the UNet is what gets compiled, the
    # compiled model is the one used, and the picture is unchanged.
    compiled: list = []

    def fake_compile(module, **kwargs):
        compiled.append((type(module).__name__, kwargs))
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    req = GenerationRequest(model=str(sd_folder), prompt="a castle", width=128, height=128, steps=2, seed=4,
                            device="cpu")
    clear_cache()
    plain = generate(req).image
    fast = generate(req.replace(compile=True)).image
    clear_cache()
    assert compiled == [("UNet2DConditionModel", {"mode": "max-autotune-no-cudagraphs"})]
    assert np.array_equal(plain, fast)


def test_loading_sdxl_says_nothing_about_low_cpu_memory_usage(sdxl_folder):
    # accelerate is a dependency: diffusers loads with low host memory and does not warn.
    import io
    import logging

    from paradiff_gui.engine.models.sd.backend import load_sd

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        load_sd(str(sdxl_folder), torch.device("cpu"), torch.float32)
    finally:
        logger.removeHandler(handler)
    assert "low cpu memory usage" not in out.getvalue()
