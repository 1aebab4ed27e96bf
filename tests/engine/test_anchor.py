"""Faithful image-to-image (sampling/anchor.py): with ``anchor`` N the result shrunk N× equals the
init image shrunk N×, to the picture's quantisation — in pixels by back-projection after the
decode, and during the steps in the latent space (ILVR) — on the terrain model and the tiny SD
pipeline; upscale passes anchor 2 by default; bad anchors are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core.request import RequestError
from paradiff_gui.engine.sampling.anchor import back_project, keep_low_band, low_band


def shrink(a: np.ndarray, n: int) -> np.ndarray:
    h, w = a.shape[:2]
    return a.astype(np.float64).reshape(h // n, n, w // n, n, *a.shape[2:]).mean(axis=(1, 3))


@pytest.mark.parametrize("n", [2, 4, 8])
def test_back_projection_makes_the_shrunk_picture_the_source_in_stripes_or_whole(n):
    g = np.random.default_rng(n)
    # A model's picture (white-noise detail, RGB, 8 bits) whose large shapes moved away from the
    # source's, plus a source with detail at its own finest scale (the solver's hardest band).
    image = (60 + g.random((96, 128, 3)) * 130).astype(np.uint8)
    y, x = np.mgrid[: 96 // n, : 128 // n]
    moved = 25 * np.sin(x / 7.0 + y / 11.0)[..., None]
    source = shrink(image, n) + moved + g.normal(0, 4, (96 // n, 128 // n, 3))
    assert np.abs(shrink(image, n) - source).max() > 20
    whole = back_project(image.copy(), source, n, 255)
    striped = back_project(image.copy(), source, n, 255, stripe=1)  # one low-res row per stripe
    assert np.array_equal(whole, striped), "stripes change nothing"
    assert np.abs(shrink(whole, n) - source).max() <= 0.5 + 1e-9, "exact to the rounding of the 8-bit levels"


def test_back_projection_of_a_16_bit_heightmap_in_place():
    g = np.random.default_rng(1)
    image = (20000 + g.random((64, 64)) * 20000).astype(np.uint16)
    source = shrink(image, 2) + 3000 * np.sin(np.arange(32) / 5)[None, :]  # the large shapes moved
    image[40:, 40:] = 0  # and a corner of the model's picture clipped at the bottom of the range
    out = back_project(image, source, 2, 65535)
    assert out is image and np.abs(shrink(image, 2) - source).max() <= 0.5 + 1e-9


def test_keep_low_band_takes_the_reference_s_and_keeps_the_rest():
    g = torch.Generator().manual_seed(0)
    x, ref = torch.randn(1, 4, 32, 48, generator=g), torch.randn(1, 4, 32, 48, generator=g)
    y = keep_low_band(x, ref, 4)
    down = torch.nn.functional.avg_pool2d
    torch.testing.assert_close(down(y, 4), down(ref, 4), atol=1e-4, rtol=0)
    detail = [(v - low_band(v, 4)).flatten() for v in (x, y)]
    assert torch.corrcoef(torch.stack(detail))[0, 1] > 0.9, "the detail is x's"


@pytest.fixture(scope="module")
def terrain_source(tmp_path_factory):
    from paradiff_gui.engine.io.metadata import save_png

    src = generate(request_for("builtin:terrain", width=128, height=128, seed=3, steps=4, device="cpu"),
                   previews=False)
    path = tmp_path_factory.mktemp("anchor") / "src.png"
    save_png(path, src.image, src.request, src.plan, src.info)
    return path, src.image


def test_a_terrain_upscale_shrunk_back_is_its_source(terrain_source):
    from paradiff_gui.engine.api.upscale import upscale_passes

    path, source = terrain_source
    (step,) = upscale_passes(path, 2, base=request_for("builtin:terrain", seed=5, steps=4, device="cpu"))
    assert step.request.anchor == 2  # the default: faithful
    faithful = generate(step.request, previews=False)
    free = generate(step.request.replace(anchor=0), previews=False)
    spread = float(source.max()) - float(source.min())
    err = np.abs(shrink(faithful.image, 2) - source)
    assert err.max() <= 0.5 + 1e-9, err.max()
    assert np.abs(shrink(free.image, 2) - source).mean() > 0.01 * spread, "without the anchor the heights move"
    # The model's detail is still there: the picture is not the source's bilinear upsampling.
    smooth = np.asarray(Image.fromarray(source.astype(np.float32), mode="F").resize((256, 256),
                                                                                   Image.Resampling.BILINEAR))
    assert np.abs(faithful.image - smooth).mean() > 0.002 * spread


def test_an_sd_restyle_keeps_the_composition_in_latents_and_pixels(sd_folder, tmp_path):
    g = np.random.default_rng(4)
    init = tmp_path / "init.png"
    small = (g.random((6, 8, 3)) * 255).astype(np.uint8)
    Image.fromarray(small).resize((128, 96), Image.Resampling.BICUBIC).save(init)
    base = dict(model=str(sd_folder), prompt="a red castle", width=128, height=96, tile=512, steps=4,
                sampler="dpmpp_2m", seed=7, guidance=7.5, device="cpu", init_image=str(init), strength=0.8)
    kept = generate(GenerationRequest(**base, anchor=8), previews=False)
    free = generate(GenerationRequest(**base), previews=False)
    with Image.open(init) as im:
        pixels = np.asarray(im)
    assert np.abs(shrink(kept.image, 8) - shrink(pixels, 8)).max() <= 0.5 + 1e-9
    assert np.abs(shrink(free.image, 8) - shrink(pixels, 8)).max() > 5
    # In the latents too (ILVR at every step, the init image's own latents at the end): the
    # decode then has little left to correct.
    from paradiff_gui.engine.models.registry import load_denoiser

    den = load_denoiser(GenerationRequest(**base), torch.device("cpu"), torch.float32)
    z = den.encode(pixels.astype(np.float32) / 255, lambda d, n: None).float()
    lat = (96 // 8) // 4 * 4  # the latent canvas is 12 x 16: anchor 8 does not divide it, 4 does
    assert lat == 12 and kept.request.anchor == 8
    kept4 = generate(GenerationRequest(**base, anchor=4), previews=False)
    down = torch.nn.functional.avg_pool2d
    torch.testing.assert_close(down(kept4.latents, 4), down(z, 4), atol=1e-4, rtol=0)
    assert (down(free.latents, 4) - down(z, 4)).abs().max() > 0.05


@pytest.mark.parametrize(("fields", "says"), [
    ({"anchor": 2}, "give init_image too"),
    ({"anchor": 3, "init_image": "a.png"}, "must be 0 (off) or 2, 4, 8, 16, 32 or 64, got 3"),
    ({"anchor": True, "init_image": "a.png"}, "got True"),
    ({"anchor": 16, "init_image": "a.png", "width": 1000, "height": 808}, "use 2 or 4 or 8"),
    ({"anchor": 2, "init_image": "a.png", "wrap": "x"}, "use anchor 0 with wrap"),
])
def test_bad_anchors_are_refused_by_name(fields, says):
    with pytest.raises(RequestError) as e:
        GenerationRequest(model="builtin:terrain", **fields)
    assert e.value.field == "anchor" and says in e.value.message


def test_an_upscale_anchor_other_than_2_or_0_is_refused(terrain_source):
    from paradiff_gui.engine.api.upscale import upscale_passes

    path, _ = terrain_source
    assert upscale_passes(path, 4, anchor=0)[1].request.anchor == 0
    with pytest.raises(RequestError) as e:
        upscale_passes(path, 2, anchor=4)
    assert e.value.field == "anchor" and "with anchor 2, or nothing with 0; got 4" in e.value.message
