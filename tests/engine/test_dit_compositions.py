"""Everything Paradiff composes on the canvas, with the diffusion transformers: tiny FLUX.1 (dev-like
and schnell-like) and SD3 pipelines through the real loader. Each composition either works — and
the test shows the composition acting, not merely running — or is refused naming its field:
every fusion mode, jitter, regional prompts (each region's own text embeddings), image-to-image and
upscale, seamless wrapping, global context, live previews, the recipe and its replay.

Tiny random weights: mechanics, not looks (tests/tiny_dit.py). Sizes are small on purpose (64–256 px,
2–4 steps): the whole file runs in seconds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.core import events
from paradiff_gui.engine.core.cancel import CancelToken
from paradiff_gui.engine.core.plan import TilePlan
from paradiff_gui.engine.core.regions import mixing_weights
from paradiff_gui.engine.core.request import FUSIONS, RequestError
from paradiff_gui.engine.io.metadata import load_request, read_recipe, save_png
from paradiff_gui.engine.models.registry import load_denoiser
from paradiff_gui.engine.sampling import sampler

BACKENDS = ("flux-dev", "flux-schnell", "sd3")
GUIDANCE = {"flux-dev": 3.5, "flux-schnell": 1.0, "sd3": 5.0}  # schnell refuses any guidance but 1
W, H = 256, 64  # image px: 32x8 latent px; tiles of 64 px (8 latent px, 4x4 tokens), overlap 16: 5 tiles


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """backend -> (folder, loaded denoiser): saved once, loaded once, passed to every run."""
    from tiny import save
    from tiny_dit import tiny_flux, tiny_sd3

    root = tmp_path_factory.mktemp("dit-models")
    folders = {"flux-dev": save(tiny_flux(guidance_embeds=True), root / "tiny-flux-dev"),
               "flux-schnell": save(tiny_flux(guidance_embeds=False, seed=1), root / "tiny-flux-schnell"),
               "sd3": save(tiny_sd3(), root / "tiny-sd3")}
    out = {}
    for name, folder in folders.items():
        req = GenerationRequest(model=str(folder), guidance=GUIDANCE[name], sampler="euler", device="cpu")
        out[name] = folder, load_denoiser(req, torch.device("cpu"), torch.float32)
    # One thread: these models' matrices are tiny, and on a busy 2-core machine two threads wait for
    # each other (measured: 0.15 s a run with one thread, 1-5 s with two while other tests ran).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield out
    torch.set_num_threads(threads)


def request(models, backend, **kw):
    folder, _ = models[backend]
    fields = dict(model=str(folder), prompt="a red castle", width=W, height=H, tile=64, overlap=16, steps=2,
                  sampler="euler", seed=7, guidance=GUIDANCE[backend], device="cpu", fusion="gaussian")
    if backend == "sd3":
        fields["negative_prompt"] = "blue"  # FLUX is guidance-distilled: no negative prompt (a Notice says so)
    return GenerationRequest(**{**fields, **kw})


def run(models, backend, sink=None, previews=False, **kw):
    return generate(request(models, backend, **kw), sink, denoiser=models[backend][1], previews=previews)


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


# -- fusion -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_fusion_mode_runs_and_is_the_one_asked_for(models, backend):
    # One tile: every window divides out (Σ W·pred / Σ W = pred), so all modes are the same run, the
    # independent baseline included.
    one = {f: run(models, backend, width=64, height=64, fusion=f).latents for f in FUSIONS}
    for f in FUSIONS:
        assert max_diff(one[f], one["gaussian"]) < 1e-6, f
    # Five overlapping tiles: each mode fuses (or stitches) differently. The closest pair is gaussian
    # and none (measured 1.7e-4 on the dev-like model: gaussian windows over a 2 latent px overlap are
    # nearly the hard ownership windows of none); the others differ by 1e-3 and more.
    many = {f: run(models, backend, fusion=f) for f in FUSIONS}
    assert {len(r.plan) for r in many.values()} == {5}
    for f, r in many.items():
        assert torch.isfinite(r.latents).all() and r.image.shape == (H, W, 3), f
    for a in FUSIONS:
        for b in FUSIONS:
            if a < b:
                assert max_diff(many[a].latents, many[b].latents) > 1e-4, (a, b)


# -- jitter ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("positions", ["local", "canvas"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_jitter_moves_the_grid_every_step_and_stays_a_function_of_the_seed(models, backend, positions):
    seen: list = []
    kw = dict(steps=3, positions=positions)
    a = run(models, backend, seen.append, jitter=True, **kw)
    plans = [e.plan for e in seen if isinstance(e, events.StepStarted)]
    assert len(plans) == 3
    assert len({(tuple(p.row_starts), tuple(p.col_starts)) for p in plans}) > 1
    assert any(p != a.plan for p in plans)  # the grid moved off the request's plan
    again = run(models, backend, jitter=True, **kw)
    assert torch.equal(a.latents, again.latents)
    still = run(models, backend, **kw)
    assert max_diff(a.latents, still.latents) > 1e-3


# -- regions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_regions_prompt_changes_its_region_and_not_the_far_side(models, backend):
    plain = run(models, backend)
    neg = {"negative_prompt": "blue"} if backend == "sd3" else {}
    same = run(models, backend, regions=[{"rect": [0, 0, W, H], "prompt": "a red castle", "feather": 0, **neg}])
    assert max_diff(same.latents, plain.latents) < 1e-5  # the main prompt again: nothing changes
    right = [W // 2, 0, W, H]
    fog = run(models, backend, regions=[{"rect": right, "prompt": "green fog", "feather": 16}])
    sky = run(models, backend, regions=[{"rect": right, "prompt": "blue sky", "feather": 16}])
    diff = (fog.latents - plain.latents).abs().mean(dim=(0, 1, 2))  # per latent column
    mid = W // 2 // 8  # latent px
    # Inside the region (past its feather) it moved (measured: 0.012 or more per column for FLUX, more
    # for SD3); one tile (8 latent px) beyond the feather on the far side, nothing did (measured below
    # 1e-7: float rounding): a tile there never saw the region's prompt nor anything it changed.
    assert diff[mid + 1 :].min() > 3e-3, diff
    assert diff[: mid - 1 - 8].max() < 1e-6, diff
    # The region's own prompt is what it follows: another prompt, another picture inside it.
    inside = (fog.latents - sky.latents)[..., mid + 1 :].abs().mean().item()
    assert inside > 3e-3
    # One step, before any tile has seen a changed canvas: exactly the pixels the region's mask
    # covers moved — a tile across the region's edge takes its prompt only under the mask.
    one = run(models, backend, steps=1, regions=[{"rect": right, "prompt": "green fog", "feather": 16}])
    mask = torch.from_numpy(mixing_weights(one.request.regions, W, H, H // 8, W // 8)[1])
    moved = (one.latents - run(models, backend, steps=1).latents).abs().amax(dim=(0, 1))
    assert moved[mask == 0].max() < 1e-6 and moved[mask > 0].min() > 1e-5, (moved, mask)


# -- image-to-image and upscale --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def init_png(tmp_path_factory):
    g = np.random.default_rng(4)
    small = (g.random((4, 16, 3)) * 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("init") / "init.png"
    Image.fromarray(small).resize((W, H), Image.Resampling.BICUBIC).save(path)
    return path


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_to_image_on_many_tiles_keeps_the_picture_by_strength(models, backend, init_png):
    den = models[backend][1]
    init = pixels(init_png)
    encoded = den.encode(init / 255, lambda d, n: None)
    text = run(models, backend, steps=4)
    half = run(models, backend, steps=4, init_image=str(init_png), strength=0.5)
    assert len(half.plan) == 5 and half.info["strength"] == 0.5
    # Half re-drawn: nearer the init picture than the text-to-image picture is (in latents: the tiny
    # random VAE does not give a picture back through a decode).
    near, far = ((r.latents - encoded).abs().mean().item() for r in (half, text))
    print(f"{backend} img2img: |half - init| {near:.3f}, |text - init| {far:.3f}")
    assert near < 0.7 * far
    # Strength 1 is text-to-image with the same seed, exactly; a strength that leaves no step gives
    # the init picture back through the VAE.
    seen: list = []
    full = run(models, backend, seen.append, steps=4, init_image=str(init_png), strength=1.0)
    torch.testing.assert_close(full.latents, text.latents, rtol=0, atol=0)
    assert any("strength 1" in getattr(e, "message", "") for e in seen)
    faint = run(models, backend, steps=4, init_image=str(init_png), strength=0.2)
    roundtrip = den.decode(den.encode(init / 255, lambda d, n: None), lambda d, n: None)
    assert np.abs(faint.image.astype(int) - roundtrip.astype(int)).max() <= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_upscale_runs_image_to_image_passes_on_the_transformer(models, backend, tmp_path):
    from paradiff_gui.engine.api.upscale import upscale

    src = tmp_path / "src.png"
    small = run(models, backend, width=128, height=64, steps=2)
    save_png(src, small.image, small.request, small.plan, small.info)
    (result,) = upscale(src, 2, output=tmp_path / "src-x2.png")  # the source's recipe: same model and prompt
    out = tmp_path / "src-x2.png"
    recipe = read_recipe(out)
    assert recipe["request"]["model"] == str(models[backend][0]) and recipe["request"]["init_image"] == str(src)
    assert recipe["info"]["strength"] == 0.5 and len(result.plan) > 1
    got = pixels(out)
    assert got.shape == (128, 256, 3)
    # The upscaled picture follows its source, not just the seed: nearer the source resized than a
    # text-to-image picture of the same request is.
    den = models[backend][1]
    resized = np.asarray(Image.open(src).resize((256, 128), Image.Resampling.BICUBIC)).astype(np.float32)
    encoded = den.encode(resized / 255, lambda d, n: None)
    text = generate(dataclasses.replace(result.request, init_image=None, strength=None, anchor=0), denoiser=den,
                    previews=False)
    near, far = ((r.latents - encoded).abs().mean().item() for r in (result, text))
    print(f"{backend} upscale: |x2 - source| {near:.3f}, |text - source| {far:.3f}")
    assert near < 0.7 * far


# -- seamless (wrap) --------------------------------------------------------------------------------


def _denoise_from(models, backend, req, noise):
    """The synchronized loop (section 4) of ``req`` from a given noise canvas."""
    den = models[backend][1]
    plan = TilePlan.for_request(req, den.scale, den.native_tile)
    cond = den.prepare(req, plan)
    run_ = sampler._Denoise(den, req, plan, cond, lambda e: None, CancelToken(), previews=False)
    with torch.inference_mode():
        return plan, sampler._synchronized(run_, plan, noise, torch.Generator("cpu").manual_seed(0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_wrapped_run_is_the_same_on_every_shift_of_the_torus(models, backend):
    """As tests/engine/test_compositions.py checks fusion on a torus: moving the start noise by one
    stride moves the finished canvas by one stride — no place is special, the edges included, so the
    picture's left edge continues its right one. Unwrapped, the borders are special and it fails."""
    kw = dict(width=128, height=128, overlap=32, steps=2)
    wrapped = request(models, backend, wrap="xy", **kw)
    noise = torch.randn((1, 16, 16, 16), generator=torch.Generator("cpu").manual_seed(3))
    plan, out = _denoise_from(models, backend, wrapped, noise)
    sy, sx = plan.stride
    assert plan.wrap == "xy" and 16 % sy == 0 and 16 % sx == 0 and plan.extent != (16, 16)
    _, moved = _denoise_from(models, backend, wrapped, torch.roll(noise, (sy, sx), dims=(-2, -1)))
    torch.testing.assert_close(moved, torch.roll(out, (sy, sx), dims=(-2, -1)), atol=1e-4, rtol=1e-4)
    plain = request(models, backend, **kw)
    _, out = _denoise_from(models, backend, plain, noise)
    _, moved = _denoise_from(models, backend, plain, torch.roll(noise, (sy, sx), dims=(-2, -1)))
    assert max_diff(moved, torch.roll(out, (sy, sx), dims=(-2, -1))) > 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_wrapped_generation_decodes_circularly(models, backend):
    from paradiff_gui.engine.models.sd.vae import decode_synced

    res = run(models, backend, width=128, height=128, overlap=32, wrap="xy")
    assert res.plan.wrap == "xy" and res.info["decode"].endswith("wraps xy")
    assert res.image.shape == (128, 128, 3)
    vae = models[backend][1].vae
    z = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = decode_synced(vae, z, lambda d, n: None, convert=lambda x: x, wrap="xy")
        b = decode_synced(vae, torch.roll(z, (3, 5), dims=(-2, -1)), lambda d, n: None, convert=lambda x: x,
                          wrap="xy")
    np.testing.assert_allclose(b, np.roll(a, (24, 40), axis=(0, 1)), atol=1e-4)


# -- global context -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_global_context_runs_a_native_pass_first_and_steers_the_canvas(models, backend, monkeypatch):
    den = models[backend][1]
    if backend != "sd3":
        # FLUX's native picture is 1024 px; a 128 px native size keeps the small pass small here
        # (the mechanics do not depend on it). The tiny SD3's own native tile is 128 px.
        monkeypatch.setattr(den, "native_tile", 128)
    assert den.native_tile == 128
    seen: list = []
    # Three steps: with flow matching the first step is at σ = 1, where the noised guide is pure noise,
    # and the last has weight 0; the middle one is where the guide steers.
    kw = dict(width=256, height=256, tile=128, overlap=32, steps=3)
    ctx = run(models, backend, seen.append, previews=True, global_context=0.6, **kw)
    planned = next(e for e in seen if isinstance(e, events.Planned))
    assert planned.total_steps == 6  # the native pass's steps, then the canvas's
    started = [e for e in seen if isinstance(e, events.StepStarted)]
    assert [(e.plan.height, e.plan.width) for e in started] == [(16, 16)] * 3 + [(32, 32)] * 3
    assert {e.step for e in seen if isinstance(e, events.TilePreview)} == {3, 4, 5}  # only the canvas's tiles
    plain = run(models, backend, **kw)
    assert max_diff(ctx.latents, plain.latents) > 1e-2
    # A canvas no larger than the native picture has nothing to gain: said, not silently skipped.
    said: list = []
    run(models, backend, said.append, global_context=0.6, width=128, height=128, tile=128, steps=3)
    assert any(isinstance(e, events.Notice) and "global context has nothing to add" in e.message for e in said)
    assert not any(isinstance(e, events.Notice) and "global context" in e.message for e in seen)


# -- live previews -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_tile_sends_a_preview_every_step(models, backend):
    seen: list = []
    res = run(models, backend, seen.append, previews=True, overlap=0)  # 4 tiles side by side
    shown = [e for e in seen if isinstance(e, events.TilePreview)]
    assert sorted((e.step, e.tile) for e in shown) == [(s, t) for s in range(2) for t in range(4)]
    for e in shown:
        tile = res.plan.tiles[e.tile]
        assert e.rect == res.plan.image_rect(tile)
        assert e.rgb.dtype == np.uint8 and e.rgb.shape == (tile.height, tile.width, 3)
        assert e.rgb.std() > 1  # a picture, not a blank
    # A preview shows the x0 its tile's prediction points to; at the last step that is where the
    # canvas lands (Euler's last step goes to σ = 0), so the last previews are the finished latents'.
    den = models[backend][1]
    for e in shown:
        if e.step == 1:
            tl = res.plan.tiles[e.tile]
            crop = res.latents[..., tl.y0 : tl.y1, tl.x0 : tl.x1]
            expect = den.preview(crop, torch.zeros_like(crop), 0.0)[0].numpy()
            assert np.abs(e.rgb.astype(int) - expect.astype(int)).max() <= 1, e.tile
    quiet: list = []
    run(models, backend, quiet.append, previews=False)
    assert not any(isinstance(e, events.TilePreview) for e in quiet)


# -- recipe and replay --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_recipe_in_the_png_replays_the_same_pixels(models, backend, tmp_path, capsys):
    from paradiff_gui.cli import main

    kw = dict(jitter=True, positions="canvas", fusion="cosine", tile_batch=2,
              regions=[{"rect": [128, 0, 256, 64], "prompt": "green fog", "feather": 16}])
    res = run(models, backend, **kw)
    out = save_png(tmp_path / "a.png", res.image, res.request, res.plan, res.info)
    recipe = read_recipe(out)
    assert recipe["info"]["model_name"] == models[backend][1].name and recipe["info"]["tiles"] == 5
    assert load_request(out) == res.request
    # Through the engine with the loaded model, and through the CLI as a person replays it.
    again = generate(load_request(out), denoiser=models[backend][1], previews=False)
    assert np.array_equal(again.image, pixels(out).astype(np.uint8))
    b = tmp_path / "b.png"
    assert main(["generate", "--request", str(out), "--quiet", "-o", str(b)]) == 0, capsys.readouterr().err
    assert np.array_equal(pixels(b), pixels(out))
    assert load_request(b) == res.request


# -- what is refused by name -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_a_transformer_cannot_do_is_refused_naming_the_field(models, backend, monkeypatch):
    with pytest.raises(RequestError) as e:
        run(models, backend, sampler="dpmpp_2m")
    assert e.value.field == "sampler" and "flow matching" in e.value.message
    # compile: refused by name while the backend has no compile of its own; if it has one it must
    # give the same picture (torch.compile is replaced by the identity here: no minutes of compiling).
    monkeypatch.setattr(torch, "compile", lambda module, **kw: module)
    den = models[backend][1]
    req = request(models, backend, compile=True)
    if hasattr(den, "enable_compile"):
        compiled = generate(req, previews=False)
        assert max_diff(compiled.latents, run(models, backend).latents) < 1e-5
    else:
        with pytest.raises(RequestError) as e:
            generate(req, previews=False)
        assert e.value.field == "compile" and "without compile" in e.value.message
