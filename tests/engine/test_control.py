"""ControlNet on the tiny SD/SDXL pipelines: one tile equals diffusers' ControlNet pipelines
(text-to-image, SDXL, image-to-image, SDXL union with one or two conditions), and each tile reads
only its own crop of the control map (a marker changes only the tiles that cover it: plain,
jittered and wrapped plans; union), which stays on the host (uint8) and goes up per tile batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    ControlNetUnionModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLControlNetUnionPipeline,
)
from PIL import Image

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.core.events import StepStarted
from paradiff_gui.engine.core.request import RequestError
from paradiff_gui.engine.models.control_images import control_map
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
def union_folder(tmp_path_factory, sdxl_folder):
    from diffusers import UNet2DConditionModel
    from tiny import tiny_union_controlnet

    unet = UNet2DConditionModel.from_pretrained(str(sdxl_folder), subfolder="unet")
    folder = tmp_path_factory.mktemp("cn") / "tiny-union"
    tiny_union_controlnet(unet, 3).save_pretrained(str(folder))
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


# -- union ControlNets (SDXL) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_png(tmp_path_factory):
    a = np.zeros((H, W, 3), np.uint8)
    a[20:70, 30:100] = 255  # a square: canny draws its border
    path = tmp_path_factory.mktemp("ctl") / "square.png"
    Image.fromarray(a).save(path)
    return path


@pytest.mark.parametrize("conditions", ["one", "two"])
def test_sdxl_union_one_tile_equals_union_pipeline(sdxl_folder, union_folder, control_png, second_png, conditions):
    # One condition: scaled at the end, and skipped out of its range. Two: ONE call, each scaled in
    # the model; the second's mode comes from its canny preprocessor.
    controls = [{"model": str(union_folder), "image": str(control_png), "mode": "depth", "weight": 0.8,
                 "start": 0.0, "end": 0.75 if conditions == "two" else 0.5}]
    if conditions == "two":
        controls.append({"model": str(union_folder), "image": str(second_png), "preprocessor": "canny",
                         "weight": 1.2, "start": 0.25, "end": 1.0})
    req = request(sdxl_folder, controls=controls, negative_prompt="night", prompt="a blue sky")
    got = generate(req)
    images = [Image.open(control_png)]
    if conditions == "two":
        images.append(Image.fromarray(control_map(req, 1)[0]))
    x, g = noise(3)
    pipe = StableDiffusionXLControlNetUnionPipeline.from_pretrained(
        str(sdxl_folder), controlnet=ControlNetUnionModel.from_pretrained(str(union_folder)), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("euler", pipe.scheduler.config)
    expect = pipe(prompt="a blue sky", negative_prompt="night", control_image=images,
                  control_mode=[1, 3][:len(controls)], height=H, width=W, num_inference_steps=STEPS,
                  guidance_scale=7.5, latents=x, generator=g, output_type="latent",
                  controlnet_conditioning_scale=[c["weight"] for c in controls],
                  control_guidance_start=[c["start"] for c in controls],
                  control_guidance_end=[c["end"] for c in controls]).images
    torch.testing.assert_close(got.latents, expect, rtol=1e-4, atol=1e-4)
    plain = generate(request(sdxl_folder, negative_prompt="night", prompt="a blue sky"))
    assert (got.latents - plain.latents).abs().max() > 1e-2, "the union ControlNet steers"


def test_union_modes_and_bases_are_checked_by_name(sd_folder, sdxl_folder, union_folder, cnxl_folder, control_png,
                                                   tmp_path):
    def refused(folder, control):
        with pytest.raises(RequestError) as e:
            generate(request(folder, controls=[control], steps=1))
        return e.value

    ready = {"model": str(union_folder), "image": str(control_png)}  # a ready-made map: which kind?
    e = refused(sdxl_folder, ready)
    assert e.field == "controls[0].mode" and "openpose, depth, hed, canny, normal, segment, tile, repaint" in e.message
    e = refused(sd_folder, {**ready, "mode": "depth"})
    assert e.field == "controls[0].model" and "tiny-union is a union ControlNet, made for SDXL" in e.message
    e = refused(sdxl_folder, {"model": str(cnxl_folder), "image": str(control_png), "mode": "depth"})
    assert e.field == "controls[0].mode" and "takes no mode" in e.message
    # controlnet-union-sdxl-1.0 knows six kinds; tile and repaint came with ProMax.
    from diffusers import UNet2DConditionModel
    from tiny import tiny_union_controlnet

    six = tmp_path / "union-six"
    tiny_union_controlnet(UNet2DConditionModel.from_pretrained(str(sdxl_folder), subfolder="unet"), 4,
                          num_control_type=6).save_pretrained(str(six))
    e = refused(sdxl_folder, {"model": str(six), "image": str(control_png), "mode": "tile"})
    assert e.field == "controls[0].mode" and "knows 6 kinds of map (openpose, depth, hed, canny, normal, " \
                                              "segment), not tile" in e.message
    with pytest.raises(RequestError, match=r"controls\[0\]\.mode: must be one of openpose, depth"):
        request(sdxl_folder, controls=[{**ready, "mode": "pose"}])


def test_a_union_file_loads_with_the_config_beside_it(union_folder, tmp_path):
    import shutil

    from paradiff_gui.engine.models.base import ModelUnavailable
    from paradiff_gui.engine.models.sd.control import find_controlnets, is_union, load_controlnet

    promax = tmp_path / "union" / "diffusion_pytorch_model_promax.safetensors"  # as xinsir ships ProMax
    promax.parent.mkdir()
    shutil.copy(union_folder / "diffusion_pytorch_model.safetensors", promax)
    alone = tmp_path / "alone.safetensors"
    shutil.copy(promax, alone)
    shutil.copy(union_folder / "config.json", promax.parent / "config.json")
    assert is_union(str(promax)) and is_union(str(union_folder))
    net = load_controlnet(str(promax), 0, torch.float32, torch.device("cpu"))
    ref = ControlNetUnionModel.from_pretrained(str(union_folder))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values(), strict=True))
    with pytest.raises(ModelUnavailable, match=r"controls\[0\]\.model: alone.safetensors is a union ControlNet "
                                               "without its config.json"):
        load_controlnet(str(alone), 0, torch.float32, torch.device("cpu"))
    assert sorted(find_controlnets([tmp_path])) == [alone, promax.parent]


def _marker_runs(folder, den, tmp_path, box, layout, controls_of):
    """Two runs of a 320x192 canvas in 128 px tiles, the control map blank and with a white ``box``."""
    cw, ch = 320, 192
    blank = np.zeros((ch, cw, 3), np.uint8)
    marked = blank.copy()
    marked[box[1]:box[3], box[0]:box[2]] = 255
    extra = {"jitter": True} if layout == "jitter" else {"wrap": "x"} if layout == "wrap" else {}
    runs = []
    for name, a in (("blank", blank), ("marked", marked)):
        path = tmp_path / f"{name}.png"
        Image.fromarray(a).save(path)
        events = []
        req = request(folder, width=cw, height=ch, tile=128, overlap=32, steps=1, tile_batch=3, seed=1,
                      controls=controls_of(path), **extra)
        runs.append((generate(req, events.append, denoiser=den, previews=False),
                     next(e.plan for e in events if isinstance(e, StepStarted))))
    (a, plan), (b, _) = runs
    return (a.latents - b.latents).abs()[0].amax(0).numpy(), plan


def test_a_union_marker_changes_only_the_tiles_that_cover_it_and_maps_stay_on_the_host(
        sdxl_folder, union_folder, tmp_path, monkeypatch):
    box = (200, 120, 216, 136)
    steady = tmp_path / "steady.png"
    Image.fromarray((np.random.default_rng(6).random((192, 320, 3)) * 255).astype(np.uint8)).save(steady)
    seen = []
    forward = ControlNetUnionModel.forward

    def spy(self, sample, timestep, encoder_hidden_states, controlnet_cond, *a, **k):
        seen.append([(tuple(c.shape), c.dtype, c.device.type) for c in controlnet_cond])
        return forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, *a, **k)

    monkeypatch.setattr(ControlNetUnionModel, "forward", spy)
    den = load_denoiser(request(sdxl_folder), torch.device("cpu"), torch.float32)
    diff, plan = _marker_runs(sdxl_folder, den, tmp_path, box, "plain", lambda path: [
        {"model": str(union_folder), "image": str(steady), "mode": "depth"},
        {"model": str(union_folder), "image": str(path), "mode": "segment", "weight": 1.5}])
    mask, hits = _covered(plan, box, 8)
    assert 0 < len(hits) < len(plan.tiles)
    assert diff[~mask].max() == 0, "tiles that do not cover the marker are untouched"
    for tl in hits:
        assert diff[tl.y0:tl.y1, tl.x0:tl.x1].max() > 0
    # Each call got both maps' crops of its tile batch (both guidance halves), in the run's dtype;
    # the whole maps stayed on the host, uint8.
    batches = [min(3, len(plan.tiles) - i) for i in range(0, len(plan.tiles), 3)]
    assert seen == [[((2 * b, 3, 128, 128), torch.float32, "cpu")] * 2 for b in batches] * 2  # two runs, 1 step
    units = den._control.units
    assert len(den._control.nets) == 1 and len(units) == 2, "one union call for both controls"
    assert all(u.canvas.dtype == torch.uint8 and u.canvas.device.type == "cpu" and
               u.canvas.shape == (1, 3, 192, 320) for u in units)
