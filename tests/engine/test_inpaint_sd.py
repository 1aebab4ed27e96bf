"""SD inpainting checkpoints (9-channel UNets, models/sd/inpaint.py) in a refine: one tile equals
diffusers' ``StableDiffusionInpaintPipeline`` (and the SDXL one); several tiles each get their own crop of the mask and
the masked picture's latents, no latent blending, and the picture outside the feathered mask is the
source bit for bit; without a selection such a model is refused naming ``model``. (Tiny random
weights: mechanics, not looks.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline
from PIL import Image

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.api.refine import refine_request, run_refinement
from paradiff_gui.engine.core.request import RequestError
from paradiff_gui.engine.io.export import open_image
from paradiff_gui.engine.models.registry import load_denoiser
from paradiff_gui.engine.models.sd.schedulers import make_scheduler
from paradiff_gui.engine.sampling import sampler

STEPS = 4


@pytest.fixture(scope="module")
def inpaint_folder(sd_inpaint_folder):
    return sd_inpaint_folder


@pytest.fixture(scope="module")
def den(inpaint_folder):
    return load_denoiser(GenerationRequest(model=str(inpaint_folder), device="cpu"), torch.device("cpu"),
                         torch.float32)


def picture(path, w, h, seed=4):
    g = np.random.default_rng(seed)
    small = (g.random((6, 8, 3)) * 255).astype(np.uint8)
    Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(path)
    return path


def mask_png(path, w, h, box):
    m = Image.new("L", (w, h), 0)
    m.paste(255, box)
    m.save(path)
    return path


def base(folder, **kw):
    return GenerationRequest(**{**dict(model=str(folder), prompt="a red castle", negative_prompt="blue", steps=STEPS,
                                       sampler="ddim", seed=7, guidance=7.5, device="cpu", tile=128), **kw})


def support(job):
    h, w = job.source.shape[:2]
    x0, y0, x1, y1 = job.box
    s = np.zeros((h, w), bool)
    s[y0:y1, x0:x1] = job.mask > 0
    return s


@pytest.fixture(scope="module")
def xl_folder(tmp_path_factory):
    from tiny import save, tiny_sdxl_inpaint

    return save(tiny_sdxl_inpaint(), tmp_path_factory.mktemp("models") / "tiny-sdxl-inpaint")


@pytest.mark.parametrize(("kind", "strength"), [("sd", 0.75), ("sd", 1.0), ("sdxl", 0.75)])
def test_one_tile_equals_diffusers_inpaint_pipeline(request, kind, strength, tmp_path):
    folder = request.getfixturevalue("inpaint_folder" if kind == "sd" else "xl_folder")
    model = request.getfixturevalue("den") if kind == "sd" else load_denoiser(
        GenerationRequest(model=str(folder), device="cpu"), torch.device("cpu"), torch.float32)
    src = picture(tmp_path / "c.png", 128, 128)
    # Edges off the 8-px latent grid: the mask's shrink to latent px (nearest) is part of the check.
    mask = mask_png(tmp_path / "m.png", 128, 128, (43, 45, 77, 71))
    job = refine_request(src, mask=mask, feather=0, strength=strength, base=base(folder, overlap=0))
    x0, y0, x1, y1 = job.box
    assert (x1 - x0, y1 - y0) == (64, 64) and len(sampler.TilePlan.for_request(job.request, 8, 128)) == 1
    got = run_refinement(job, denoiser=model)

    crop = Image.fromarray(job.source[y0:y1, x0:x1])
    hard = Image.fromarray((job.mask * 255).astype(np.uint8))
    cls = StableDiffusionInpaintPipeline if kind == "sd" else StableDiffusionXLInpaintPipeline
    extra = {"safety_checker": None, "requires_safety_checker": False} if kind == "sd" else {}
    pipe = cls.from_pretrained(str(folder), local_files_only=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)
    with torch.no_grad():  # the pipeline's own masked picture, encoded to its latent mean
        masked = pipe.image_processor.preprocess(crop) * (pipe.mask_processor.preprocess(hard) < 0.5)
        masked_latents = pipe.vae.encode(masked).latent_dist.mode() * pipe.vae.config.scaling_factor
    # Four-channel images are taken as latents (the VAE samples otherwise, drawing from the
    # generator before the noise); the noise comes from the same seed as the engine's.
    init = model.encode(job.known().pixels, lambda d, n: None)
    expect = pipe(prompt="a red castle", negative_prompt="blue", image=init, mask_image=hard,
                  masked_image_latents=masked_latents, height=64, width=64, strength=strength,
                  num_inference_steps=STEPS, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(7),
                  output_type="latent").images
    diff = (got.latents - expect).abs().max().item()
    print(f"max |engine - pipeline| latents, {kind} strength {strength}: {diff:.2e}")
    torch.testing.assert_close(got.latents, expect, rtol=1e-4, atol=1e-4)
    assert (got.latents - init).abs().mean() > 0.05  # the model re-drew something


def test_several_tiles_get_their_own_crops_and_keep_the_outside(inpaint_folder, den, tmp_path, monkeypatch):
    src = picture(tmp_path / "c.png", 256, 192)
    job = refine_request(src, rect=(80, 56, 184, 136), feather=12, strength=0.8,
                         base=base(inpaint_folder, overlap=32, tile=64))
    assert len(sampler.TilePlan.for_request(job.request, 8, 128)) >= 4

    def blended(*_a, **_k):  # an inpainting UNet keeps the known part itself: no latent blend
        raise AssertionError("latents blended for an inpainting checkpoint")

    monkeypatch.setattr(sampler, "keep_known", blended)
    calls = []
    real = den.predict

    def predict(x, t, tiles, cond):
        calls.append((list(tiles), cond.cfg))
        return real(x, t, tiles, cond)

    inputs = []
    hook = den.unet.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].clone()))
    monkeypatch.setattr(den, "predict", predict)
    try:
        run_refinement(job, denoiser=den)
    finally:
        hook.remove()
    # The whole sub-canvas's inputs: the feathered mask thresholded at 0.5 and shrunk (nearest),
    # and the encoded picture with that part mid grey.
    hard = job.mask >= 0.5
    mask = torch.from_numpy(hard[::8, ::8].astype(np.float32))[None, None]
    masked = den.encode(np.where(hard[..., None], np.float32(0.5), job.known().pixels), lambda d, n: None)
    assert 0 < mask.mean() < 1
    assert len(calls) == len(inputs) > 0
    seen = set()
    for (tiles, cfg), x in zip(calls, inputs, strict=True):
        halves = 2 if cfg else 1
        assert x.shape[:2] == (halves * len(tiles), 9)
        for h in range(halves):
            for k, tl in enumerate(tiles):
                row = x[h * len(tiles) + k]
                torch.testing.assert_close(row[4:5], mask[0, :, tl.y0:tl.y1, tl.x0:tl.x1])
                torch.testing.assert_close(row[5:], masked[0, :, tl.y0:tl.y1, tl.x0:tl.x1], rtol=1e-5, atol=1e-5)
                seen.add(tl.index)
    assert len(seen) >= 4
    out, source = open_image(job.output), open_image(src)
    s = support(job)
    assert np.array_equal(out[~s], source[~s])
    assert np.abs(out[72:120, 96:168].astype(float) - source[72:120, 96:168]).mean() > 5


@pytest.mark.parametrize("init", [False, True])
def test_without_a_selection_an_inpainting_checkpoint_is_refused_naming_model(inpaint_folder, den, tmp_path, init):
    fields = {"width": 128, "height": 128}
    if init:
        fields |= {"init_image": str(picture(tmp_path / "i.png", 128, 128)), "strength": 0.5}
    encoded = []
    monkeypatch_encode = den.encode
    den.encode = lambda *a: encoded.append(1) or monkeypatch_encode(*a)
    try:
        with pytest.raises(RequestError) as e:
            generate(base(inpaint_folder, **fields), denoiser=den)
    finally:
        del den.encode
    assert e.value.field == "model"
    assert "inpainting checkpoint" in e.value.message and "refine" in e.value.message
    assert not encoded  # refused before the init image is encoded
