"""Refining a selection (engine/api/refine.py, sampling/inpaint.py): the picture outside the feathered
mask comes back bit for bit, the selection changes, only the selection's sub-canvas runs, bad input is
refused by field with nothing written. The terrain model and the tiny SD pipeline, small and few steps
(the seam across the border on real terrain pictures: docs/QUALITY.md)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.analysis.seams import analyse
from paradiff_gui.engine.api.refine import (
    plan_tiles,
    refine,
    refine_from_recipe,
    refine_request,
    run_refinement,
    whole_request,
)
from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core.events import Notice
from paradiff_gui.engine.core.request import RequestError
from paradiff_gui.engine.io.export import open_image
from paradiff_gui.engine.io.metadata import read_recipe
from paradiff_gui.engine.models.registry import load_denoiser


def fractal(size, seed, power=2.2):
    """A heightfield-like picture: noise with a 1/f^power spectrum, [0, 1]."""
    g = np.random.default_rng(seed)
    h, w = size
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spec = (g.normal(size=f.shape) + 1j * g.normal(size=f.shape)) / f ** (power / 2)
    spec[0, 0] = 0
    a = np.fft.irfft2(spec, s=(h, w))
    return (a - a.min()) / (a.max() - a.min())


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def terrain():
    return load_denoiser(request_for("builtin:terrain", device="cpu"), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def sd(sd_folder):
    return load_denoiser(GenerationRequest(model=str(sd_folder), device="cpu"), torch.device("cpu"), torch.float32)


@pytest.fixture
def height_png(tmp_path):
    path = tmp_path / "h.png"
    Image.fromarray((fractal((128, 128), 3) * 40000 + 10000).astype(np.uint16)).save(path)
    return path


def rgb_png(path, w, h, seed=4):
    g = np.random.default_rng(seed)
    small = (g.random((6, 8, 3)) * 255).astype(np.uint8)
    Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(path)
    return path


def terrain_base(**kw):
    return request_for("builtin:terrain", device="cpu", **{"steps": 2, "seed": 5, **kw})


def sd_base(folder, **kw):
    return GenerationRequest(**{**dict(model=str(folder), prompt="a red castle", steps=3, sampler="ddim", seed=7,
                                       device="cpu", tile=128), **kw})


def support(job):
    """(H, W) bool: where the soft mask is above 0 on the picture."""
    h, w = job.source.shape[:2]
    x0, y0, x1, y1 = job.box
    s = np.zeros((h, w), bool)
    s[y0:y1, x0:x1] = job.mask > 0
    return s


def test_terrain_refine_keeps_the_outside_bit_for_bit_and_changes_the_selection(terrain, height_png):
    before = sha(height_png)
    job = refine_request(height_png, rect=(48, 40, 88, 80), feather=8, strength=0.7, base=terrain_base())
    assert job.box == (0, 0, 128, 128) or all(v % 8 == 0 for v in job.box)
    # The soft border is centred on the rectangle's edges: the mask reaches feather/2 past them.
    s = support(job)
    ys, xs = np.nonzero(s)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (44, 92, 36, 84)
    res = run_refinement(job, denoiser=terrain)
    src, out = open_image(height_png), open_image(job.output)
    assert job.output.name == "h-refined.png" and sha(height_png) == before
    assert out.dtype == np.uint16 and out.shape == src.shape
    assert np.array_equal(out[~s], src[~s])  # bit for bit outside the feathered mask
    inner = (slice(44, 76), slice(52, 84))  # where the mask is 1
    assert np.abs(out[inner].astype(float) - src[inner]).mean() > 500  # the selection is re-drawn
    assert np.array_equal(res.image, out)
    rec = read_recipe(job.output)
    assert rec["info"]["refine"] == {"source": str(height_png), "source_size": [128, 128], "source_sha256": before,
                                     "feather": 8, "rect": [48, 40, 88, 80], "box": list(job.box)}
    assert rec["request"]["init_image"] == str(height_png) and rec["request"]["strength"] == 0.7


def test_a_replay_of_the_recipe_makes_the_same_picture(terrain, height_png):
    job = refine_request(height_png, rect=(48, 40, 88, 80), feather=8, strength=0.7, base=terrain_base())
    run_refinement(job, denoiser=terrain)
    again = refine_from_recipe(job.output, output=height_png.with_name("again.png"))
    assert again.box == job.box and again.request == job.request
    run_refinement(again, denoiser=terrain)
    assert np.array_equal(open_image(again.output), open_image(job.output))
    # A source changed since then is refused: the replay would start from another picture.
    Image.fromarray(np.zeros((128, 128), np.uint16)).save(height_png)
    with pytest.raises(RequestError) as e:
        refine_from_recipe(job.output)
    assert e.value.field == "image" and "changed" in e.value.message


def test_without_the_blend_the_outside_of_the_cut_out_drifts(terrain, height_png, monkeypatch):
    """What keeps the surroundings: the cut-out's latents outside the mask are the source's at the
    end (sampling/inpaint.py). Without the blend the decoded cut-out differs there; the pixel
    composite still hides it, so this looks at the run's latents."""
    import paradiff_gui.engine.sampling.sampler as sampler

    job = refine_request(height_png, rect=(48, 40, 88, 80), feather=8, strength=0.7, base=terrain_base())
    kept = run_refinement(job, denoiser=terrain)
    m = job.mask <= 0
    source_latents = terrain.encode(job.known().pixels, lambda *_: None).float()
    assert torch.equal(kept.latents[0, 0][torch.from_numpy(m)], source_latents[0, 0][torch.from_numpy(m)])
    monkeypatch.setattr(sampler, "keep_known", lambda latents, *a, **k: latents)
    free = run_refinement(job, denoiser=terrain)
    assert (free.latents[0, 0][torch.from_numpy(m)] - source_latents[0, 0][torch.from_numpy(m)]).abs().mean() > 0.05


def test_the_border_of_a_refine_leaves_no_seam_on_terrain(terrain, tmp_path):
    """The seam metric across the selection's edges (the picture cut 3x3 by them) on a terrain
    picture: at or below 1.1 (1.0 = the edges look like anywhere else). A hard border (feather 0)
    shows: the metric can see a seam there. (192², a one-step source: the figures over several seeds
    at 256² are in docs/QUALITY.md.)"""
    src = generate(request_for("builtin:terrain", device="cpu", width=192, height=192, steps=1, seed=3),
                   denoiser=terrain, previews=False)
    path = tmp_path / "t.png"
    Image.fromarray(src.image).save(path)
    rect = (64, 64, 128, 128)
    cut = [(a, b, c, d) for b, d in ((0, 64), (64, 128), (128, 192)) for a, c in ((0, 64), (64, 128), (128, 192))]
    soft = refine(path, rect=rect, feather=32, strength=0.6, base=terrain_base(seed=9), denoiser=terrain,
                  output=tmp_path / "soft.png")
    hard = refine(path, rect=rect, feather=0, strength=0.6, base=terrain_base(seed=9), denoiser=terrain,
                  output=tmp_path / "hard.png")
    assert analyse(src.image, cut).seam_ratio < 1.0  # the lines themselves are nothing special on the source
    assert analyse(soft.image, cut).seam_ratio <= 1.1
    assert analyse(hard.image, cut).seam_ratio > 1.5


def test_sd_refine_keeps_the_outside_bit_for_bit(sd_folder, sd, tmp_path):
    src_path = rgb_png(tmp_path / "c.png", 192, 128)
    job = refine_request(src_path, rect=(64, 40, 128, 88), feather=8, strength=0.8, base=sd_base(sd_folder))
    res = run_refinement(job, denoiser=sd)
    src, out = open_image(src_path), open_image(job.output)
    s = support(job)
    assert out.shape == src.shape and out.dtype == np.uint8
    assert np.array_equal(out[~s], src[~s])
    assert np.abs(out[48:80, 72:120].astype(float) - src[48:80, 72:120]).mean() > 5
    assert res.info["refine"]["rect"] == [64, 40, 128, 88]


def test_a_mask_selects_and_is_resized_with_a_notice(sd_folder, sd, tmp_path):
    src_path = rgb_png(tmp_path / "c.png", 192, 128)
    mask = tmp_path / "m.png"
    m = Image.new("L", (96, 64), 0)  # half the picture's size: resized
    m.paste(255, (30, 20, 60, 44))
    m.save(mask)
    events = []
    job = refine_request(src_path, mask=mask, feather=4, base=sd_base(sd_folder), output=tmp_path / "o.png")
    run_refinement(job, events.append, denoiser=sd)
    assert any(isinstance(e, Notice) and "mask m.png (96x64) resized to the picture's 192x128" in e.message
               for e in events)
    src, out = open_image(src_path), open_image(job.output)
    s = support(job)
    assert s[44:84, 64:116].all() and not s[:, :40].any()
    assert np.array_equal(out[~s], src[~s]) and not np.array_equal(out[s], src[s])
    assert job.record["mask"] == str(mask) and job.record["mask_sha256"] == sha(mask)


def counted(den, monkeypatch):
    """Tile evaluations of the denoiser: the tiles of every predict call."""
    calls = []
    real = den.predict

    def predict(x, t, tiles, cond):
        calls.append(len(tiles))
        return real(x, t, tiles, cond)

    monkeypatch.setattr(den, "predict", predict)
    return calls


def test_model_calls_follow_the_selection(sd_folder, sd, tmp_path, monkeypatch):
    src_path = rgb_png(tmp_path / "big.png", 512, 512)
    job = refine_request(src_path, rect=(240, 240, 272, 272), feather=8, strength=0.8,
                         base=sd_base(sd_folder, overlap=32, steps=2))
    sub, whole = plan_tiles(job.request, sd.scale, sd.native_tile), plan_tiles(whole_request(job), sd.scale,
                                                                                 sd.native_tile)
    assert (sub, whole) == (1, 25)
    calls = counted(sd, monkeypatch)
    run_refinement(job, denoiser=sd)
    refined = sum(calls)
    calls.clear()
    generate(whole_request(job), denoiser=sd, previews=False)  # the whole picture, image-to-image, same settings
    assert refined * whole == sum(calls) * sub and refined > 0  # the ratio is the plans' tiles


def test_a_small_selection_of_an_8192_picture_costs_under_2_percent(tmp_path):
    path = tmp_path / "huge.png"
    Image.fromarray(np.zeros((8192, 8192), np.uint16)).save(path, compress_level=1)
    for tile, scale in ((None, 1), (512, 8)):  # the terrain model's 128-px tiles; SD's 512-px tiles (VAE x8)
        job = refine_request(path, rect=(4096, 4096, 4608, 4608), feather=32,
                             base=request_for("builtin:terrain", device="cpu", tile=tile))
        native = tile or 128
        share = plan_tiles(job.request, scale, native) / plan_tiles(whole_request(job), scale, native)
        assert share <= 0.02, (tile, share)


def _mask(tmp_path, mode, size=(128, 128), value=255):
    path = tmp_path / f"mask-{mode}.png"
    im = Image.new(mode, size, 0)
    if value:
        im.paste(value if mode != "RGB" else (value,) * 3, (10, 10, 40, 40))
    im.save(path)
    return path


@pytest.mark.parametrize(("kw", "field", "says"), [
    ({"rect": (0, 0, 200, 64)}, "rect", "inside the 128x128 picture"),
    ({"rect": (-8, 0, 64, 64)}, "rect", "inside"),
    ({"rect": (64, 0, 64, 64)}, "rect", "is empty"),
    ({"rect": "1,2,3"}, "rect", "X0,Y0,X1,Y1"),
    ({}, "rect", "either rect"),
    ({"rect": (0, 0, 64, 64), "feather": -1}, "feather", "from 0 to 1024"),
    ({"rect": (0, 0, 64, 64), "strength": 0}, "strength", "above 0 and at most 1"),
    ({"rect": (0, 0, 64, 64), "strength": 1.5}, "strength", "above 0"),
    ({"mask": "RGB"}, "mask", "grayscale image"),
    ({"mask": "empty"}, "mask", "selects nothing"),
    ({"mask": "missing"}, "mask", "no such file"),
])
def test_bad_selections_are_refused_naming_the_field(kw, field, says, height_png, tmp_path):
    if kw.get("mask") == "RGB":
        kw = {"mask": _mask(tmp_path, "RGB")}
    elif kw.get("mask") == "empty":
        kw = {"mask": _mask(tmp_path, "L", value=0)}
    elif kw.get("mask") == "missing":
        kw = {"mask": tmp_path / "none.png"}
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RequestError) as e:
        refine(height_png, base=terrain_base(), **kw)
    assert e.value.field == field and says in e.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_the_source_is_never_the_output_and_colour_is_refused_for_heightmaps(height_png, tmp_path):
    with pytest.raises(RequestError) as e:
        refine_request(height_png, rect=(0, 0, 64, 64), base=terrain_base(), output=height_png)
    assert e.value.field == "output"
    with pytest.raises(RequestError) as e:
        refine_request(rgb_png(tmp_path / "c.png", 128, 128), rect=(0, 0, 64, 64), base=terrain_base())
    assert e.value.field == "image" and "grayscale heightmaps" in e.value.message
