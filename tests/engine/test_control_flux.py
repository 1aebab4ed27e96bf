"""FLUX.1 ControlNet on the tiny FLUX: one tile equals diffusers' FluxControlNetPipeline, each tile
reads only its own crop of the control latents (a marker changes only the tiles that cover it:
plain, jittered and wrapped plans, tiles at different canvas places in one batch), tiles on the
canvas get their own position ids in the ControlNet too (batched and one per call), a single
file runs as its folder, layouts not run are refused by name with what works, a ControlNet for
the other family is refused by name, the finder lists FLUX ControlNets, and the memory estimate
counts them."""

from __future__ import annotations

import functools
import shutil

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlNetModel, FluxControlNetPipeline
from diffusers.pipelines.flux import pipeline_flux_controlnet
from PIL import Image

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.core.events import StepStarted
from paradiff_gui.engine.core.request import RequestError
from paradiff_gui.engine.models import flow
from paradiff_gui.engine.models.base import ModelUnavailable
from paradiff_gui.engine.models.registry import load_denoiser

# diffusers 0.42's FluxControlNetModel builds its rotary embedding from its own deprecated import.
pytestmark = pytest.mark.filterwarnings("ignore:.*FluxPosEmbed.*:FutureWarning")

W, H = 128, 96  # image px: one tile
STEPS = 2


@pytest.fixture(scope="module")
def dev_folder(tmp_path_factory):
    from tiny import save
    from tiny_dit import tiny_flux

    return save(tiny_flux(guidance_embeds=True), tmp_path_factory.mktemp("models") / "tiny-flux-dev")


@pytest.fixture(scope="module")
def cn_folder(tmp_path_factory):
    from tiny_dit import tiny_flux_controlnet

    folder = tmp_path_factory.mktemp("cn") / "tiny-flux-cn"
    tiny_flux_controlnet(2).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def cn_file(tmp_path_factory, cn_folder):
    """The folder's weight file alone, renamed, as a download of it is used."""
    path = tmp_path_factory.mktemp("cnfile") / "flux-canny.safetensors"
    shutil.copy(cn_folder / "diffusion_pytorch_model.safetensors", path)
    return path


@pytest.fixture(scope="module")
def unrun(tmp_path_factory):
    """FLUX.1 ControlNets in layouts Paradiff does not run: a union one (folder and file), one that
    takes pixels (an input hint block) and XLabs' own format (BFL names)."""
    from safetensors.torch import save_file
    from tiny_dit import tiny_flux_controlnet

    root = tmp_path_factory.mktemp("unrun")
    union = tiny_flux_controlnet(3, num_mode=4)
    union.save_pretrained(str(root / "union-folder"))
    save_file(union.state_dict(), str(root / "union.safetensors"))
    save_file(tiny_flux_controlnet(3, conditioning_embedding_channels=16).state_dict(), str(root / "hint.safetensors"))
    xlabs = ("double_blocks.0.img_attn.qkv.weight", "controlnet_blocks.0.weight", "input_hint_block.0.weight",
             "pos_embed_input.weight")
    save_file({k: torch.zeros(4) for k in xlabs}, str(root / "xlabs.safetensors"))
    return root


@pytest.fixture(scope="module")
def control_png(tmp_path_factory):
    g = np.random.default_rng(5)
    small = (g.random((6, 8, 3)) * 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("ctl") / "control.png"
    Image.fromarray(small).resize((W, H), Image.Resampling.BICUBIC).save(path)
    return path


def request(folder, **kw):
    fields = dict(model=str(folder), prompt="a red castle", width=W, height=H, tile=512, steps=STEPS,
                  sampler="euler", seed=7, guidance=3.5, device="cpu", fusion="gaussian")
    return GenerationRequest(**{**fields, **kw})


def test_one_tile_equals_flux_controlnet_pipeline(dev_folder, cn_folder, control_png, monkeypatch):
    # Step 1 of 2 only: the range decides which steps the ControlNet steers.
    weight, start, end = 0.8, 0.5, 1.0
    control = {"model": str(cn_folder), "image": str(control_png), "weight": weight, "start": start, "end": end}
    got = generate(request(dev_folder, controls=[control]))
    assert len(got.plan) == 1
    # The pipeline samples the control's latent distribution; Paradiff takes its mean (a control
    # should not depend on noise): the oracle takes the mean too.
    monkeypatch.setattr(pipeline_flux_controlnet, "retrieve_latents",
                        functools.partial(pipeline_flux_controlnet.retrieve_latents, sample_mode="argmax"))
    # The pipeline on the run's own modules (read once), with a scheduler of its own.
    parts = load_denoiser(request(dev_folder), torch.device("cpu"), torch.float32).pipe.components
    pipe = FluxControlNetPipeline(**{**parts, "scheduler": FlowMatchEulerDiscreteScheduler.from_config(
        parts["scheduler"].config)}, controlnet=FluxControlNetModel.from_pretrained(str(cn_folder)))
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator("cpu").manual_seed(7)
    noise = torch.randn((1, 16, H // 8, W // 8), generator=g)
    packed = pipe(prompt="a red castle", control_image=Image.open(control_png), height=H, width=W,
                  num_inference_steps=STEPS, guidance_scale=3.5, latents=flow.pack(noise), generator=g,
                  output_type="latent", controlnet_conditioning_scale=weight, control_guidance_start=start,
                  control_guidance_end=end).images
    expect = flow.unpack(packed, H // 8, W // 8)
    diff = (got.latents - expect).abs().max().item()
    print(f"flux controlnet one tile: max |diff| {diff:.2e}")
    assert diff < 1e-4
    plain = generate(request(dev_folder))
    assert (got.latents - plain.latents).abs().max() > 1e-2, "the ControlNet steers"
    (rec,) = got.info["controls"]
    assert rec["model"] == "tiny-flux-cn" and (rec["weight"], rec["start"], rec["end"]) == (weight, start, end)


@pytest.mark.parametrize("layout", ["plain", "jitter", "wrap"])
def test_a_marker_changes_only_the_tiles_that_cover_it(dev_folder, cn_folder, tmp_path, layout, monkeypatch):
    cw, ch = 512, 128  # image px: 64x16 latent px, tiles of 16 latent px
    box = (0, 48, 16, 64) if layout == "wrap" else (280, 48, 296, 64)  # image px
    blank = np.zeros((ch, cw, 3), np.uint8)
    marked = blank.copy()
    marked[box[1]:box[3], box[0]:box[2]] = 255
    paths = []
    for name, a in (("blank", blank), ("marked", marked)):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(a).save(paths[-1])
    extra = {"jitter": True} if layout == "jitter" else {"wrap": "x"} if layout == "wrap" else {}
    den = load_denoiser(request(dev_folder), torch.device("cpu"), torch.float32)
    # The VAE encoder's GroupNorm (whole-picture statistics) carries any marker faintly into every
    # latent, so the crop is tested on a pixel-local stand-in encode: 8x8 means, 16 channels.
    # (On the shared, cached denoiser: put back after the test.)
    monkeypatch.setattr(den, "encode", lambda px, _p: torch.nn.functional.avg_pool2d(
        torch.from_numpy(np.asarray(px, np.float32)).permute(2, 0, 1)[None], 8).repeat(1, 6, 1, 1)[:, :16])
    reach = (den.encode(marked / 255.0, None) - den.encode(blank / 255.0, None)).abs()[0].amax(0).numpy() > 0
    runs = []
    for path in paths:
        events = []
        req = request(dev_folder, width=cw, height=ch, tile=128, overlap=32, steps=1, tile_batch=3, seed=1,
                      positions="canvas", controls=[{"model": str(cn_folder), "image": str(path)}], **extra)
        runs.append((generate(req, events.append, denoiser=den, previews=False),
                     next(e.plan for e in events if isinstance(e, StepStarted))))
    (a, plan), (b, _) = runs
    diff = (a.latents - b.latents).abs()[0].amax(0).numpy()
    mask = np.zeros_like(reach)
    hits = []
    for tl in plan.tiles:
        ys = [y % plan.height for y in range(tl.y0, tl.y1)]
        xs = [x % plan.width for x in range(tl.x0, tl.x1)]
        if reach[np.ix_(ys, xs)].any():
            hits.append((ys, xs))
            mask[np.ix_(ys, xs)] = True
    assert 0 < len(hits) < len(plan.tiles)
    assert diff[~mask].max() == 0, "tiles that do not cover the marker are untouched"
    for ys, xs in hits:  # ... and every tile that covers it felt it
        assert diff[np.ix_(ys, xs)].max() > 0
    if layout == "wrap":  # the marker at the left edge reached a tile that runs past the right edge
        assert any(tl.x1 > plan.width for tl in plan.tiles)
        assert diff[:, plan.width - 4:].max() > 0


def test_a_controlnet_of_the_other_family_is_refused_by_name(dev_folder, cn_folder, cn_file, control_png, sd_folder,
                                                             tmp_path):
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(sd_folder), subfolder="unet")
    sd_cn = tmp_path / "tiny-sd-cn"
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16)).save_pretrained(str(sd_cn))
    with pytest.raises(RequestError) as e:  # an SD ControlNet on FLUX
        generate(request(dev_folder, controls=[{"model": str(sd_cn), "image": str(control_png)}]))
    assert e.value.field == "controls[0].model" and "SD ControlNet" in e.value.message
    assert "FluxControlNetModel" in e.value.message
    shutil.copy(sd_cn / "diffusion_pytorch_model.safetensors", tmp_path / "sd-canny.safetensors")
    with pytest.raises(RequestError) as e:  # ... as its single file
        generate(request(dev_folder, controls=[{"model": str(tmp_path / "sd-canny.safetensors"),
                                                "image": str(control_png)}]))
    assert e.value.field == "controls[0].model" and "sd-canny.safetensors is an SD ControlNet" in e.value.message
    for model in (cn_folder, cn_file):  # a FLUX ControlNet on SD, folder and file
        with pytest.raises(RequestError) as e:
            generate(GenerationRequest(model=str(sd_folder), prompt="a", width=W, height=H, steps=1, device="cpu",
                                       controls=[{"model": str(model), "image": str(control_png)}]))
        assert e.value.field == "controls[0].model" and "FLUX.1 ControlNet" in e.value.message
        assert "and the model is SD" in e.value.message


def test_a_batch_of_tiles_on_the_canvas_equals_each_tile_with_its_own_position_ids(dev_folder, cn_folder,
                                                                                     control_png):
    # Several tiles at different canvas places in one call (positions canvas) take per-row rotary
    # positions in the transformer *and* in the ControlNet; the oracle runs diffusers' own modules
    # one tile at a time with that tile's canvas position ids (what FluxControlNetPipeline would
    # build for the tile at its place), and the tile's crop of the control latents.
    from paradiff_gui.engine.core.plan import TilePlan

    req = request(dev_folder, width=320, height=128, tile=128, overlap=32, positions="canvas",
                  controls=[{"model": str(cn_folder), "image": str(control_png), "weight": 0.9}])
    den = load_denoiser(req, torch.device("cpu"), torch.float32)
    plan = TilePlan.for_request(req, den.scale, den.native_tile)
    tiles = list(plan.tiles)
    assert len({(tl.y0, tl.x0) for tl in tiles}) == len(tiles) >= 3
    cond = den.prepare(req, plan)
    den.begin_step(plan, 0, STEPS)
    (unit,) = cond.control.units
    latents = cond.control.latents_at(unit, plan.height, plan.width)  # the canvas's control latents
    g = torch.Generator().manual_seed(3)
    x = torch.randn((len(tiles), 16, tiles[0].height, tiles[0].width), generator=g)
    t = torch.tensor(700.0)
    got = den.predict(x, t, tiles, cond)  # one call: per-row positions
    alone = torch.cat([den.predict(x[i:i + 1], t, [tl], cond) for i, tl in enumerate(tiles)])  # one per call

    def ids(tl, canvas: bool) -> torch.Tensor:  # (tokens, 3): (0, row, col), moved to the tile's place
        rows, cols = tl.height // 2, tl.width // 2
        out = torch.zeros(rows, cols, 3)
        out[..., 1] = torch.arange(rows)[:, None] + (tl.y0 / 2 if canvas else 0)
        out[..., 2] = torch.arange(cols)[None, :] + (tl.x0 / 2 if canvas else 0)
        return out.reshape(-1, 3)

    def oracle(which: list[int], controlnet_canvas: bool = True) -> torch.Tensor:
        out = []
        for i in which:
            tl = tiles[i]
            common = dict(timestep=(t / 1000).expand(1), guidance=torch.full([1], 3.5), pooled_projections=cond.pooled,
                          encoder_hidden_states=cond.embeds, txt_ids=cond.txt_ids, return_dict=False)
            hidden = flow.pack(x[i:i + 1])
            d, s = unit.net(hidden_states=hidden, controlnet_cond=flow.pack(latents[..., tl.y0:tl.y1, tl.x0:tl.x1]),
                            conditioning_scale=0.9, img_ids=ids(tl, controlnet_canvas), **common)
            v = den.transformer(hidden_states=hidden, img_ids=ids(tl, True), controlnet_block_samples=d,
                                controlnet_single_block_samples=s, **common)[0]
            out.append(flow.unpack(v, tl.height, tl.width))
        return torch.cat(out)

    with torch.no_grad():
        expect = oracle(list(range(len(tiles))))
        local = oracle([len(tiles) - 1], controlnet_canvas=False)  # the tile farthest from the origin
    diff = (got - expect).abs().max().item()
    diff_alone = (alone - expect).abs().max().item()
    sensitivity = (local - expect[-1:]).abs().max().item()
    print(f"flux controlnet vs per-tile oracle: max |diff| batched {diff:.2e}, one per call {diff_alone:.2e}; "
          f"the ControlNet at local ids moves it {sensitivity:.2e}")
    assert sensitivity > 1e-3, "the ControlNet's positions matter in this set-up"
    assert diff < 1e-5 and diff_alone < 1e-5


def test_a_single_file_runs_as_its_folder(dev_folder, cn_folder, cn_file, control_png):
    # diffusers 0.42 has no FluxControlNetModel.from_single_file: the config comes from the file's
    # tensor names and shapes, the rotary axes from the base transformer.
    control = {"image": str(control_png), "weight": 0.8}
    a = generate(request(dev_folder, steps=1, controls=[{"model": str(cn_folder), **control}]), previews=False)
    b = generate(request(dev_folder, steps=1, controls=[{"model": str(cn_file), **control}]), previews=False)
    assert torch.equal(a.latents, b.latents)
    assert b.info["controls"][0]["model"] == "flux-canny.safetensors"


@pytest.mark.parametrize("name,says", [
    ("union-folder", "a union FLUX.1 ControlNet (control modes), which Paradiff does not run yet"),
    ("union.safetensors", "a union FLUX.1 ControlNet"),
    ("hint.safetensors", "takes the control image as pixels"),
    ("xlabs.safetensors", "XLabs' own format (BFL's tensor names), which diffusers 0.42 cannot load"),
])
def test_layouts_not_run_are_refused_by_name_with_what_works(dev_folder, unrun, name, says):
    # (The command line's exit 3 for one of them: tests/cli/test_cli_control.py.)
    from paradiff_gui.engine.models.flux.control import load_flux_controlnet

    transformer = load_denoiser(request(dev_folder), torch.device("cpu"), torch.float32).transformer
    with pytest.raises(ModelUnavailable) as e:
        load_flux_controlnet(str(unrun / name), 0, torch.float32, torch.device("cpu"), transformer)
    message = str(e.value)
    assert message.startswith("controls[0].model: ") and name in message and says in message, message
    assert "FluxControlNetModel layout works, as its folder (config.json + weights) or its single .safetensors" \
        in message


def test_the_finder_lists_the_flux_controlnets_paradiff_runs(tmp_path, cn_folder, cn_file, unrun):
    from paradiff_gui.engine.models.sd.control import find_controlnets

    models = tmp_path / "models"
    shutil.copytree(cn_folder, models / "flux-depth")
    shutil.copytree(unrun, models / "unrun")
    shutil.copy(cn_file, models / "flux-canny.safetensors")
    assert set(find_controlnets([models])) == {models / "flux-depth", models / "flux-canny.safetensors"}


def test_the_memory_estimate_counts_a_flux_controlnet(dev_folder, cn_folder, cn_file, control_png):
    from paradiff_gui.engine.models.info import describe_model
    from paradiff_gui.engine.runtime import memory

    info = describe_model(str(dev_folder))
    plain = GenerationRequest(model=str(dev_folder), width=256, height=256, guidance=3.5, device="cpu")
    plan = info.plan(plain)
    tokens = plan.tile_h * plan.tile_w // 4 + info.text_tokens  # image tokens (2x2 latent px) + the prompt's
    params = sum(p.numel() for p in FluxControlNetModel.from_pretrained(str(cn_folder)).parameters())
    a = memory.footprint(plain, info, "fp16")
    for model in (cn_folder, cn_file):
        steered = plain.replace(controls=[{"model": str(model), "image": str(control_png)}])
        b = memory.footprint(steered, info, "fp16")
        assert b.weights - a.weights == params * 2
        # Its block samples (1 double + 1 single block): 1.5 sets of them (benchmarks/flux_control_memory.py).
        assert b.per_view - a.per_view == int(1.5 * 2 * tokens * info.hidden * 2)
        assert b.canvas - a.canvas == 16 * plan.height * plan.width * 2  # its latents at canvas size
        assert b.peak(4) > a.peak(4)
    both = plain.replace(controls=[{"model": str(m), "image": str(control_png)} for m in (cn_folder, cn_file)])
    assert memory.footprint(both, info, "fp16").per_view - a.per_view == int(2.5 * 2 * tokens * info.hidden * 2)


def test_the_flux_controlnet_sets_cover_the_measured_ones_without_wasting_half():
    """CONTROL_DIT_SAMPLE_SETS against what one and two InstantX-shaped ControlNets add to a FLUX.1
    view's live tensors at 512 px (real geometry on the meta device: nothing computed;
    benchmarks/flux_control_memory.py)."""
    import sys
    from pathlib import Path

    from paradiff_gui.engine.runtime import memory

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from flux_control_memory import added_sets

    # A shallow transformer (2 + 4 blocks at FLUX.1-dev's width): the same per-block peak, the same
    # figures as the whole one (0.91 and 1.58 sets at 512 px), a tenth of the time.
    for n, measured in zip((1, 2), added_sets((1, 2), side=512, depth=(2, 4)), strict=True):
        print(f"{n} FLUX ControlNet(s) add {measured:.2f} sets at 512 px")
        estimate = memory.CONTROL_DIT_SAMPLE_SETS + (n > 1)
        assert 0.5 < measured <= estimate < 2 * measured, (n, measured)
