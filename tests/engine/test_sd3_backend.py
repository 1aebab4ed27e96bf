"""The SD3 backend on tiny models through the real loader: one tile equals diffusers'
StableDiffusion3Pipeline (with and without T5, Euler and Heun), image-to-image equals
StableDiffusion3Img2ImgPipeline, canvas positions crop the position table under each tile, fused
runs do not depend on the tile batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchHeunDiscreteScheduler, StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline
from PIL import Image

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.core.request import RequestError
from paradiff_gui.engine.models.registry import load_denoiser

W, H = 128, 96  # image px: one tile of 16x12 latent px, 8x6 tokens
STEPS = 3


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    from tiny import save
    from tiny_dit import tiny_sd3

    return save(tiny_sd3(), tmp_path_factory.mktemp("models") / "tiny-sd3")


@pytest.fixture(scope="module")
def sd3_no_t5_folder(tmp_path_factory):
    from tiny import save
    from tiny_dit import tiny_sd3

    return save(tiny_sd3(with_t5=False, seed=2), tmp_path_factory.mktemp("models") / "tiny-sd3-no-t5")


def request(folder, **kw):
    fields = dict(model=str(folder), prompt="a red castle", negative_prompt="blue", width=W, height=H, tile=512,
                  steps=STEPS, sampler="euler", seed=7, guidance=5.0, device="cpu", fusion="gaussian")
    return GenerationRequest(**{**fields, **kw})


def pipe_of(cls, folder, sampler="euler"):
    without_t5 = {"text_encoder_3": None, "tokenizer_3": None} if "no-t5" in folder.name else {}
    pipe = cls.from_pretrained(str(folder), local_files_only=True, **without_t5)
    pipe.set_progress_bar_config(disable=True)
    if sampler == "heun":
        pipe.scheduler = FlowMatchHeunDiscreteScheduler(shift=pipe.scheduler.config.shift)
    return pipe


@pytest.mark.parametrize(("which", "sampler", "guidance"), [
    ("t5", "euler", 5.0), ("t5", "heun", 5.0), ("no-t5", "euler", 5.0), ("no-t5", "euler", 1.0),
])
def test_one_tile_equals_sd3_pipeline(which, sampler, guidance, sd3_folder, sd3_no_t5_folder):
    folder = sd3_folder if which == "t5" else sd3_no_t5_folder
    pipe = pipe_of(StableDiffusion3Pipeline, folder, sampler)
    g = torch.Generator("cpu").manual_seed(7)
    noise = torch.randn((1, 16, H // 8, W // 8), generator=g)
    expect = pipe(prompt="a red castle", negative_prompt="blue", height=H, width=W, num_inference_steps=STEPS,
                  guidance_scale=guidance, latents=noise, generator=g, output_type="latent").images
    got = generate(request(folder, sampler=sampler, guidance=guidance))
    assert len(got.plan) == 1
    diff = (got.latents - expect).abs().max().item()
    print(f"sd3 {which} {sampler} guidance {guidance}: max |diff| {diff:.2e}")
    assert diff < 1e-4
    if sampler == "euler" and guidance > 1:  # the decoded picture too, once
        z = expect / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        with torch.no_grad():
            image = pipe.image_processor.postprocess(pipe.vae.decode(z, return_dict=False)[0], output_type="np")[0]
        assert np.abs(got.image.astype(int) - np.round(image * 255).astype(int)).max() <= 1


def test_image_to_image_equals_sd3_img2img_pipeline(sd3_folder, tmp_path):
    g = np.random.default_rng(4)
    path = tmp_path / "init.png"
    Image.fromarray((g.random((6, 8, 3)) * 255).astype(np.uint8)).resize((W, H), Image.Resampling.BICUBIC).save(path)
    got = generate(request(sd3_folder, init_image=str(path), strength=0.5, steps=4))
    den = load_denoiser(request(sd3_folder), torch.device("cpu"), torch.float32)
    with Image.open(path) as im:
        init = den.encode(np.asarray(im, dtype=np.float32) / 255, lambda d, n: None)
    pipe = pipe_of(StableDiffusion3Img2ImgPipeline, sd3_folder)
    # 16-channel "images" are taken as latents by the pipeline; its noise comes from the same seed.
    expect = pipe(prompt="a red castle", negative_prompt="blue", image=init, strength=0.5, num_inference_steps=4,
                  guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(7), output_type="latent").images
    diff = (got.latents - expect).abs().max().item()
    print(f"sd3 img2img: max |diff| {diff:.2e}")
    assert diff < 1e-4


def _spy_positions(den):
    """What the transformer's first block receives minus the projected patches: the positions added.
    (Hooks on the model itself: a spy on PatchEmbed.forward would run before Paradiff's hook.)"""
    seen, inputs = [], []
    pe = den.patch_embed

    def block_input(module, args, kwargs):
        tokens = kwargs["hidden_states"]
        seen.append(tokens - pe.proj(inputs.pop()).flatten(2).transpose(1, 2))

    handles = [pe.register_forward_pre_hook(lambda m, args: inputs.append(args[0])),
               den.transformer.transformer_blocks[0].register_forward_pre_hook(block_input, with_kwargs=True)]
    return seen, handles


def test_canvas_positions_crop_the_table_under_each_tile(sd3_folder):
    den = load_denoiser(request(sd3_folder), torch.device("cpu"), torch.float32)
    # A 256x256 canvas (16x16 tokens) in 2x2 tiles of 128 px (8x8 tokens), overlap 0, in the tiny
    # model's 32x32 table: the canvas sits at tokens 8..24, the tiles at 8 and 16.
    res = generate(request(sd3_folder, width=256, height=256, tile=128, overlap=0, steps=1, positions="canvas"),
                   denoiser=den, previews=False)
    cond = den.prepare(res.request, res.plan)
    placed = den.tile_embeddings(res.plan.tiles, cond)
    table = den.patch_embed.pos_embed.reshape(32, 32, -1)
    for k, tile in enumerate(res.plan.tiles):
        top, left = 8 + tile.y0 // 2, 8 + tile.x0 // 2
        assert (top, left) in {(8, 8), (8, 16), (16, 8), (16, 16)}
        torch.testing.assert_close(placed[k], table[top : top + 8, left : left + 8].reshape(64, -1), atol=1e-6,
                                   rtol=0)
    # local: every tile gets diffusers' centre crop for its size
    torch.testing.assert_close(den.patch_embed.cropped_pos_embed(16, 16)[0], table[12:20, 12:20].reshape(64, -1))


def test_the_transformer_sees_the_placed_positions(sd3_folder):
    den = load_denoiser(request(sd3_folder), torch.device("cpu"), torch.float32)
    seen, handles = _spy_positions(den)
    try:
        _check_positions_seen(den, sd3_folder, seen)
    finally:
        for h in handles:
            h.remove()


def _check_positions_seen(den, sd3_folder, seen):
    res = generate(request(sd3_folder, width=256, height=256, tile=128, overlap=0, steps=1, positions="canvas",
                           tile_batch=4), denoiser=den, previews=False)
    (added,) = seen
    cond = den.prepare(res.request, res.plan)
    expect = den.tile_embeddings(res.plan.tiles, cond).repeat(2, 1, 1)  # both guidance halves
    torch.testing.assert_close(added, expect, atol=1e-5, rtol=0)
    seen.clear()
    generate(request(sd3_folder, width=256, height=256, tile=128, overlap=0, steps=1, tile_batch=4), denoiser=den,
             previews=False)
    (added,) = seen
    centre = den.patch_embed.cropped_pos_embed(16, 16)
    torch.testing.assert_close(added, centre.expand(8, -1, -1), atol=1e-5, rtol=0)


def test_canvas_positions_on_one_tile_are_the_local_ones(sd3_folder):
    den = load_denoiser(request(sd3_folder), torch.device("cpu"), torch.float32)
    a = generate(request(sd3_folder, positions="local", steps=1), denoiser=den, previews=False)
    b = generate(request(sd3_folder, positions="canvas", steps=1), denoiser=den, previews=False)
    torch.testing.assert_close(a.latents, b.latents, atol=1e-6, rtol=0)
    kw = dict(width=256, height=256, tile=128, overlap=0, steps=1)
    c = generate(request(sd3_folder, positions="local", **kw), denoiser=den, previews=False)
    d = generate(request(sd3_folder, positions="canvas", **kw), denoiser=den, previews=False)
    assert (c.latents - d.latents).abs().max() > 1e-3


def test_canvas_positions_past_the_table_are_refused(sd3_folder):
    den = load_denoiser(request(sd3_folder), torch.device("cpu"), torch.float32)
    # The tiny table is 32 tokens (512 px) a side.
    generate(request(sd3_folder, width=512, height=128, tile=128, overlap=0, steps=1, positions="canvas"),
             denoiser=den, previews=False)
    with pytest.raises(RequestError) as err:
        generate(request(sd3_folder, width=528, height=128, tile=128, overlap=0, steps=1, positions="canvas"),
                 denoiser=den, previews=False)
    assert err.value.field == "positions" and "512x512 px" in err.value.message
    # local positions have no such limit
    generate(request(sd3_folder, width=528, height=128, tile=128, overlap=0, steps=1), denoiser=den, previews=False)


@pytest.mark.parametrize("positions", ["local", "canvas"])
def test_fused_runs_are_deterministic_and_independent_of_the_tile_batch(sd3_folder, positions):
    den = load_denoiser(request(sd3_folder), torch.device("cpu"), torch.float32)
    kw = dict(width=192, height=128, tile=96, overlap=32, steps=2, positions=positions)
    one = generate(request(sd3_folder, tile_batch=1, **kw), denoiser=den, previews=False)
    assert len(one.plan) >= 4
    every = generate(request(sd3_folder, tile_batch=len(one.plan), **kw), denoiser=den, previews=False)
    again = generate(request(sd3_folder, tile_batch=len(one.plan), **kw), denoiser=den, previews=False)
    diff = (one.latents - every.latents).abs().max().item()
    print(f"sd3 {positions}: tile_batch 1 vs all: max |diff| {diff:.2e}")
    assert diff < 1e-5
    assert torch.equal(every.latents, again.latents)
