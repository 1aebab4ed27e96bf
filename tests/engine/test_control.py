"""ControlNet on the tiny SD/SDXL pipelines: one tile equals diffusers' ControlNet pipelines
(text-to-image, SDXL, image-to-image), and each tile reads only its own crop of the control map
(a marker changes only the tiles that cover it: plain, jittered and wrapped plans)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetPipeline,
)
from PIL import Image

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.core.events import StepStarted
from paradiff_gui.engine.models.registry import load_denoiser
from paradiff_gui.engine.models.sd.schedulers import make_scheduler

W, H = 128, 96  # one tile: the tiny UNet's native tile is 128 px
STEPS = 4


def tiny_controlnet(unet, seed: int) -> ControlNetModel:
    """A ControlNet shaped like ``unet``; its zero convolutions get random weights (zeros would make
    every residual zero, and any wiring of the residuals would pass)."""
    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


@pytest.fixture(scope="module")
def cn_folder(tmp_path_factory, sd_folder):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(sd_folder), subfolder="unet")
    folder = tmp_path_factory.mktemp("cn") / "tiny-cn"
    tiny_controlnet(unet, 1).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def cnxl_folder(tmp_path_factory, sdxl_folder):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(sdxl_folder), subfolder="unet")
    folder = tmp_path_factory.mktemp("cn") / "tiny-cn-xl"
    tiny_controlnet(unet, 2).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def control_png(tmp_path_factory):
    g = np.random.default_rng(5)
    small = (g.random((6, 8, 3)) * 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("ctl") / "control.png"
    Image.fromarray(small).resize((W, H), Image.Resampling.BICUBIC).save(path)
    return path


def request(folder, **kw):
    fields = dict(model=str(folder), prompt="a red castle", negative_prompt="blue", width=W, height=H, tile=512,
                  steps=STEPS, sampler="euler", seed=3, guidance=7.5, device="cpu", fusion="gaussian")
    return GenerationRequest(**{**fields, **kw})


def pipe_of(cls, folder, cn_folder):
    pipe = cls.from_pretrained(str(folder), controlnet=ControlNetModel.from_pretrained(str(cn_folder)),
                               local_files_only=True, **({} if "XL" in cls.__name__ else
                                                         {"safety_checker": None, "requires_safety_checker": False}))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("euler", pipe.scheduler.config)
    return pipe


def noise(seed):
    g = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, 4, H // 8, W // 8), generator=g), g


def test_one_tile_equals_controlnet_pipeline(sd_folder, cn_folder, control_png):
    # Steps 1 and 2 of 4 only: the range decides which steps the ControlNet steers.
    weight, start, end = 1.3, 0.25, 0.75
    control = {"model": str(cn_folder), "image": str(control_png), "weight": weight, "start": start, "end": end}
    got = generate(request(sd_folder, controls=[control]))
    x, g = noise(3)
    expect = pipe_of(StableDiffusionControlNetPipeline, sd_folder, cn_folder)(
        prompt="a red castle", negative_prompt="blue", image=Image.open(control_png), height=H, width=W,
        num_inference_steps=STEPS, guidance_scale=7.5, latents=x, generator=g, output_type="latent",
        controlnet_conditioning_scale=weight, control_guidance_start=start, control_guidance_end=end).images
    torch.testing.assert_close(got.latents, expect, rtol=1e-4, atol=1e-4)
    plain = generate(request(sd_folder))
    assert (got.latents - plain.latents).abs().max() > 1e-2, "the ControlNet steers"
    (rec,) = got.info["controls"]
    assert rec["model"] == "tiny-cn" and len(rec["sha256"]) == 64 and rec["preprocessor"] == "none"
    assert (rec["weight"], rec["start"], rec["end"]) == (weight, start, end)


def test_sdxl_one_tile_equals_controlnet_pipeline(sdxl_folder, cnxl_folder, control_png):
    control = {"model": str(cnxl_folder), "image": str(control_png), "weight": 0.9}
    got = generate(request(sdxl_folder, controls=[control], negative_prompt="night", prompt="a blue sky"))
    x, g = noise(3)
    expect = pipe_of(StableDiffusionXLControlNetPipeline, sdxl_folder, cnxl_folder)(
        prompt="a blue sky", negative_prompt="night", image=Image.open(control_png), height=H, width=W,
        num_inference_steps=STEPS, guidance_scale=7.5, latents=x, generator=g, output_type="latent",
        controlnet_conditioning_scale=0.9).images
    torch.testing.assert_close(got.latents, expect, rtol=1e-4, atol=1e-4)


def test_image_to_image_equals_controlnet_img2img_pipeline(sd_folder, cn_folder, control_png, tmp_path):
    g = np.random.default_rng(4)
    init_png = tmp_path / "init.png"
    Image.fromarray((g.random((H, W, 3)) * 255).astype(np.uint8)).save(init_png)
    control = {"model": str(cn_folder), "image": str(control_png), "weight": 0.7, "end": 0.8}
    got = generate(request(sd_folder, controls=[control], init_image=str(init_png), strength=0.5, steps=6))
    den = load_denoiser(request(sd_folder), torch.device("cpu"), torch.float32)
    with Image.open(init_png) as im:
        init = den.encode(np.asarray(im, dtype=np.float32) / 255, lambda d, n: None)
    expect = pipe_of(StableDiffusionControlNetImg2ImgPipeline, sd_folder, cn_folder)(
        prompt="a red castle", negative_prompt="blue", image=init, control_image=Image.open(control_png),
        strength=0.5, height=H, width=W, num_inference_steps=6, guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(3), output_type="latent",
        controlnet_conditioning_scale=0.7, control_guidance_end=0.8).images
    torch.testing.assert_close(got.latents, expect, rtol=1e-4, atol=1e-4)


def _covered(plan, box, scale):
    """Latent-pixel mask of the canvas covered by the tiles whose image box holds ``box``, and those tiles."""
    x0, y0, x1, y1 = box
    mask = np.zeros((plan.height, plan.width), bool)
    hits = []
    for tl in plan.tiles:
        ys = {(y % plan.height) for y in range(tl.y0, tl.y1)}
        xs = {(x % plan.width) for x in range(tl.x0, tl.x1)}
        if ys & set(range(y0 // scale, y1 // scale)) and xs & set(range(x0 // scale, x1 // scale)):
            hits.append(tl)
            mask[np.ix_(sorted(ys), sorted(xs))] = True
    return mask, hits


@pytest.mark.parametrize("layout", ["plain", "jitter", "wrap"])
def test_a_marker_changes_only_the_tiles_that_cover_it(sd_folder, cn_folder, tmp_path, layout):
    cw, ch = 320, 192
    box = (8, 40, 24, 56) if layout == "wrap" else (200, 120, 216, 136)  # image px, inside one or two tiles
    blank = np.zeros((ch, cw, 3), np.uint8)
    marked = blank.copy()
    marked[box[1]:box[3], box[0]:box[2]] = 255
    paths = []
    for name, a in (("blank", blank), ("marked", marked)):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(a).save(paths[-1])
    extra = {"jitter": True} if layout == "jitter" else {"wrap": "x"} if layout == "wrap" else {}
    den = load_denoiser(request(sd_folder), torch.device("cpu"), torch.float32)
    runs = []
    for path in paths:
        events = []
        req = request(sd_folder, width=cw, height=ch, tile=128, overlap=32, steps=1, tile_batch=3, seed=1,
                      controls=[{"model": str(cn_folder), "image": str(path)}], **extra)
        runs.append((generate(req, events.append, denoiser=den, previews=False),
                     next(e.plan for e in events if isinstance(e, StepStarted))))
    (a, plan), (b, _) = runs
    diff = (a.latents - b.latents).abs()[0].amax(0).numpy()
    mask, hits = _covered(plan, box, 8)
    assert 0 < len(hits) < len(plan.tiles)
    assert diff[~mask].max() == 0, "tiles that do not cover the marker are untouched"
    for tl in hits:  # ... and every tile that covers it felt it, in its own part of the canvas
        ys = [y % plan.height for y in range(tl.y0, tl.y1)]
        xs = [x % plan.width for x in range(tl.x0, tl.x1)]
        assert diff[np.ix_(ys, xs)].max() > 0
    if layout == "wrap":  # the marker at the left edge reached a tile that runs past the right edge
        assert any(tl.x1 > plan.width for tl in hits)
        assert diff[:, plan.width - 4:].max() > 0
