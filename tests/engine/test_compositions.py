"""Compositions: wrapped (seamless) plans, regional prompts, init images — mechanics on fakes and
the terrain model's own encoding. (Tiny random models cannot show that a region *looks* like its
prompt or that a texture tiles well; docs/QUALITY.md measures that on the terrain weights.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from paradiff_gui.engine.core import blend
from paradiff_gui.engine.core.cancel import CancelToken
from paradiff_gui.engine.core.plan import TilePlan
from paradiff_gui.engine.core.regions import mixing_weights, parse_region
from paradiff_gui.engine.core.request import GenerationRequest, RequestError
from paradiff_gui.engine.sampling.compose import extend, fold, regional
from paradiff_gui.engine.sampling.sampler import _Denoise, _Weights, predict_canvas


class LocalDenoiser:
    """A tile-local model: a 3x3 box blur of the crop with zero padding at the crop's border, plus
    the conditioning's constant. Tiles see different context at their borders, like a real model."""

    name = "local"
    scale = 1
    channels = 1
    native_tile = 16
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self) -> None:
        self.calls: list[tuple[object, tuple[int, ...]]] = []

    def prepare(self, request, plan):
        return float(request.extra.get("v", 0))

    def predict(self, x, t, tiles, cond):
        self.calls.append((cond, tuple(tl.index for tl in tiles)))
        blur = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)
        return blur + cond

    def preview(self, x, pred, t):
        return torch.zeros((len(x), 2, 2, 3), dtype=torch.uint8)


def fused(plan, x, fusion="cosine", den=None, request=None):
    den = den or LocalDenoiser()
    request = request or GenerationRequest(fusion=fusion)
    cond = den.prepare(request, plan)
    run = _Denoise(den, request, plan, cond, lambda e: None, CancelToken(), previews=False)
    run.regional = regional(den, request, plan, cond)
    out, _ = predict_canvas(run, plan, x, torch.tensor(1.0), _Weights.build(plan, fusion, den.device))
    return out, den


# -- wrapped plans ---------------------------------------------------------------------------------


def test_wrapped_plan_spreads_tiles_round_the_torus():
    plan = TilePlan.create(64, 80, overlap=8, tile=24, wrap="x")
    assert plan.wrap == "x" and plan.wrap_x and not plan.wrap_y
    # x: ceil(80 / (24 - 8)) = 5 tiles every 16 px, the last one running 8 px past the edge.
    assert plan.col_starts == [0, 16, 32, 48, 64]
    assert plan.extent == (64, 88)
    assert plan.actual_overlap == (plan.actual_overlap[0], 8)  # across the edge too
    # y does not wrap: tiles inside, first and last at the borders.
    assert plan.row_starts[0] == 0 and plan.row_starts[-1] + plan.tile_h == 64
    for mode in ("cosine", "uniform", "gaussian", "none"):
        total = blend.weight_sum(plan, blend.windows(plan, mode))
        assert total.shape == (64, 80) and total.min() > 0
    cos = blend.weight_sum(plan, blend.windows(plan, "cosine"))
    np.testing.assert_allclose(cos, 1.0, atol=1e-6)  # neighbours cross-fade across the edge as well


def test_wrap_needs_two_tiles_across_each_wrapped_edge():
    with pytest.raises(RequestError) as e:
        TilePlan.create(64, 24, overlap=8, tile=24, wrap="x")
    assert e.value.field == "wrap" and "two tiles" in e.value.message
    with pytest.raises(RequestError) as e:
        TilePlan.for_request(GenerationRequest(width=128, height=256, wrap="xy"), 1, 128)
    assert e.value.field == "wrap"
    TilePlan.for_request(GenerationRequest(width=256, height=128, wrap="x"), 1, 128)  # y does not wrap: fine


def test_extend_and_fold_are_adjoint():
    plan = TilePlan.create(32, 40, overlap=4, tile=12, wrap="xy")
    x = torch.randn(1, 1, 32, 40)
    ext = extend(plan, x)
    assert ext.shape[-2:] == plan.extent
    torch.testing.assert_close(ext[..., :32, :40], x)
    torch.testing.assert_close(ext[..., 32:, :40], x[..., : plan.extent[0] - 32, :])
    y = torch.randn(1, 1, *plan.extent)
    # <extend x, y> = <x, fold y>: fold adds back exactly what extend copied out.
    torch.testing.assert_close((ext * y).sum(), (x * fold(plan, y)).sum())
    np.testing.assert_allclose(blend.fold(plan, y[0, 0].numpy()), fold(plan, y)[0, 0].numpy(), rtol=1e-6)


def test_wrapped_fusion_is_the_same_on_every_shift_of_the_torus():
    """On a torus plan whose stride divides the canvas, moving the canvas by one stride moves the
    fused prediction by one stride: no place is special, the edges included. Unwrapped, the
    canvas borders are special and the same check fails."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 48, 64)
    wrapped = TilePlan.create(48, 64, overlap=8, tile=24, wrap="xy")
    sy, sx = wrapped.stride
    assert 48 % sy == 0 and 64 % sx == 0
    out, _ = fused(wrapped, x)
    shifted, _ = fused(wrapped, torch.roll(x, (sy, sx), dims=(-2, -1)))
    torch.testing.assert_close(shifted, torch.roll(out, (sy, sx), dims=(-2, -1)), atol=1e-5, rtol=1e-5)
    plain = TilePlan.create(48, 64, overlap=8, tile=24)
    out, _ = fused(plain, x)
    shifted, _ = fused(plain, torch.roll(x, (sy, sx), dims=(-2, -1)))
    assert (shifted - torch.roll(out, (sy, sx), dims=(-2, -1))).abs().max() > 1e-2


def test_wrapped_jitter_keeps_the_tiles_on_the_torus():
    plan = TilePlan.create(48, 64, overlap=8, tile=24, wrap="xy")
    moved = plan.shifted(5, 7)
    assert len(moved) == len(plan) and moved.wrap == "xy"
    assert moved.row_starts == sorted((s - 5) % 48 for s in plan.row_starts)
    np.testing.assert_allclose(blend.weight_sum(moved, blend.windows(moved, "cosine")), 1.0, atol=1e-6)


def test_wrapped_plan_round_trips_through_its_dict():
    plan = TilePlan.create(64, 80, overlap=8, tile=24, wrap="x", scale=8)
    back = TilePlan.from_dict(plan.to_dict(), 80 * 8, 64 * 8)
    assert back.wrap == "x" and [back.image_rect(t) for t in back.tiles] == [plan.image_rect(t) for t in plan.tiles]


# -- regions -----------------------------------------------------------------------------------------


def test_mixing_weights_give_each_region_its_own_inside_and_sum_to_one():
    r = parse_region({"rect": [64, 0, 128, 64], "feather": 16}, 0, 128, 64, 100)
    w = mixing_weights((r,), 128, 64, 64, 128)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-6)
    assert (w[1, :, 72:] == 1).all() and (w[0, :, :56] == 1).all()  # past the feather: one conditioning
    ramp = w[1, 0, 56:72]
    assert (np.diff(ramp) > 0).all() and 0.4 < w[1, 0, 63:65].mean() < 0.6  # centred on the edge
    assert (w[1, :, 127] == 1).all()  # the canvas border gets no ramp
    heavy = parse_region({"rect": [0, 0, 128, 64], "weight": 3.0, "feather": 0}, 0, 128, 64, 100)
    both = mixing_weights((r, heavy), 128, 64, 64, 128)
    np.testing.assert_allclose(both[1:, :, 100], [[0.25] * 64, [0.75] * 64])  # overlapping regions by weight


def test_regions_mix_each_tiles_predictions_by_the_weights():
    plan = TilePlan.create(64, 128, overlap=8, tile=32)
    req = GenerationRequest(width=128, height=64, fusion="cosine", extra={"v": 1},
                            regions=[{"rect": [64, 0, 128, 64], "feather": 16, "extra": {"v": 5}}])
    x = torch.zeros(1, 1, 64, 128)
    out, den = fused(plan, x, request=req)
    w = torch.from_numpy(mixing_weights(req.regions, 128, 64, 64, 128))
    torch.testing.assert_close(out[0, 0], w[0] * 1 + w[1] * 5, atol=1e-5, rtol=1e-5)
    # A tile wholly inside one conditioning runs once; only tiles across the feather run twice.
    runs = {}
    for cond, tiles in den.calls:
        for i in tiles:
            runs.setdefault(i, []).append(cond)
    for tl in plan.tiles:
        weights = w[:, tl.y0 : tl.y1, tl.x0 : tl.x1].amax(dim=(1, 2))
        assert sorted(runs[tl.index]) == sorted([1.0, 5.0][k] for k in range(2) if weights[k] > 0)
    assert any(len(v) == 1 for v in runs.values()) and any(len(v) == 2 for v in runs.values())


def test_a_region_s_bad_option_names_the_region():
    class Strict(LocalDenoiser):
        def prepare(self, request, plan):
            v = request.extra.get("v", 0)
            if v > 9:
                raise RequestError("v", f"must be at most 9, got {v}")
            return float(v)

    plan = TilePlan.create(64, 128, overlap=8, tile=32)
    req = GenerationRequest(width=128, height=64, regions=[{"rect": [0, 0, 8, 8]}, {"rect": [8, 8, 16, 16],
                                                                                    "extra": {"v": 12}}])
    with pytest.raises(RequestError) as e:
        regional(Strict(), req, plan, 0.0)
    assert e.value.field == "regions[1].v"


@pytest.mark.parametrize(("region", "field", "says"), [
    ({"rect": [0, 0, 0, 10]}, "regions[0].rect", "inside the 256x128 canvas"),
    ({"rect": [0, 0, 300, 10]}, "regions[0].rect", "x1 <= 256"),
    ({"rect": [0, 0, 10]}, "regions[0].rect", "[x0, y0, x1, y1]"),
    ({"prompt": "no place"}, "regions[0]", "either rect"),
    ({"rect": [0, 0, 8, 8], "weight": 0}, "regions[0].weight", "above 0"),
    ({"rect": [0, 0, 8, 8], "feather": -1}, "regions[0].feather", "from 0 to 1024"),
    ({"rect": [0, 0, 8, 8], "colour": 1}, "regions[0].colour", "not a region field"),
    ({"mask": "a.png"}, "regions[0].mask", "data:image/png;base64"),
])
def test_bad_regions_are_refused_naming_the_field(region, field, says):
    with pytest.raises(RequestError) as e:
        GenerationRequest(width=256, height=128, regions=[region])
    assert e.value.field == field and says in e.value.message


def _mask_png(size, mode="L", value=255):
    import io

    from paradiff_gui.engine.core.regions import encode_mask_png

    buf = io.BytesIO()
    im = Image.new(mode, size, 0 if mode != "RGB" else (0, 0, 0))
    im.paste(value if mode != "RGB" else (value,) * 3, (size[0] // 2, 0, size[0], size[1]))
    im.save(buf, format="PNG")
    return encode_mask_png(buf.getvalue())


def test_mask_regions_are_checked_for_size_and_mode_and_follow_the_mask():
    with pytest.raises(RequestError) as e:
        GenerationRequest(width=128, height=64, regions=[{"mask": _mask_png((64, 64))}])
    assert e.value.field == "regions[0].mask" and "128x64" in e.value.message
    with pytest.raises(RequestError) as e:
        GenerationRequest(width=128, height=64, regions=[{"mask": _mask_png((128, 64), "RGB")}])
    assert e.value.field == "regions[0].mask" and "grayscale" in e.value.message
    req = GenerationRequest(width=128, height=64, regions=[{"mask": _mask_png((128, 64)), "feather": 0}])
    w = mixing_weights(req.regions, 128, 64, 64, 128)
    assert (w[1, :, 64:] == 1).all() and (w[1, :, :64] == 0).all()
    assert GenerationRequest.from_json(req.to_json()) == req


# -- init images ---------------------------------------------------------------------------------------


def test_terrain_encoding_inverts_its_decoding():
    from paradiff_gui.engine.models.terrain import HEIGHT_RANGE, heights_from_model, model_from_heights

    metres = np.linspace(0, HEIGHT_RANGE, 1001)
    np.testing.assert_allclose(heights_from_model(model_from_heights(metres)), metres, atol=1e-9)


def test_init_image_is_resized_with_a_note_and_colour_is_refused_for_heightmaps(tmp_path):
    from paradiff_gui.engine.io.init_image import load_init_image

    p = tmp_path / "h.png"
    Image.fromarray(np.full((16, 32), 30000, np.uint16)).save(p)
    a, notes = load_init_image(p, 64, 32, "height")
    assert a.shape == (32, 64) and np.allclose(a, 30000 / 65535, atol=1e-6)
    assert any("upscaled to 64x32" in n for n in notes)
    rgb = tmp_path / "c.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(rgb)
    with pytest.raises(RequestError) as e:
        load_init_image(rgb, 8, 8, "height")
    assert e.value.field == "init_image" and "grayscale heightmap" in e.value.message
    a, _ = load_init_image(rgb, 8, 8, "rgb")
    np.testing.assert_allclose(a[0, 0], [10 / 255, 20 / 255, 30 / 255], atol=1e-6)
    with pytest.raises(RequestError) as e:
        load_init_image(tmp_path / "missing.png", 8, 8, "rgb")
    assert e.value.field == "init_image" and "no such file" in e.value.message
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(RequestError) as e:
        load_init_image(tmp_path / "bad.png", 8, 8, "rgb")
    assert e.value.field == "init_image"


def test_strength_rules():
    assert GenerationRequest().image_strength == 1.0
    assert GenerationRequest(init_image="a.png").image_strength == 0.6
    with pytest.raises(RequestError) as e:
        GenerationRequest(strength=0.5)
    assert e.value.field == "strength"
    for bad in (0, 0.0, -0.1, 1.01, True, "0.5"):
        with pytest.raises(RequestError) as e:
            GenerationRequest(init_image="a.png", strength=bad)
        assert e.value.field == "strength"
    with pytest.raises(RequestError) as e:
        GenerationRequest(init_image="a.png", fusion="independent")
    assert e.value.field == "init_image"
    with pytest.raises(RequestError) as e:
        GenerationRequest(init_image="a.png", global_context=0.5)
    assert e.value.field == "global_context"


@pytest.mark.parametrize(("fields", "field"), [
    ({"wrap": "xy", "fusion": "independent"}, "wrap"),
    ({"wrap": "x", "bridges": "halos"}, "wrap"),
    ({"wrap": "x", "global_context": 0.3}, "wrap"),
    ({"regions": [{"rect": [0, 0, 8, 8]}], "bridges": "norms"}, "regions"),
])
def test_combinations_that_cannot_work_are_refused(fields, field):
    with pytest.raises(RequestError) as e:
        GenerationRequest(**fields)
    assert e.value.field == field


def test_seam_lines_of_a_wrapped_plan_include_the_one_across_the_edge():
    from paradiff_gui.engine.analysis.seams import boundaries, tiled_score

    plan = TilePlan.create(256, 256, overlap=64, tile=128, wrap="x")
    lines = boundaries([plan.image_rect(t) for t in plan.tiles], (256, 256))
    # Centres at 64, 128, 192, 256 (= 0): the last and the first tile meet at 32, across the edge.
    assert lines["boundary"][0] == [32, 96, 160, 224]
    assert all(0 < x < 256 for x in lines["edge"][0])
    # tiled_score: a picture that repeats scores ~1 where its copies meet, a step there scores high.
    from scipy import ndimage

    periodic = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=(128, 256)), 4, mode="wrap") * 100
    assert tiled_score(periodic, "x").seam_ratio < 1.2
    cut = periodic + np.linspace(0, 3 * periodic.std(), 256)[None, :]  # a step where the copies meet
    assert tiled_score(cut, "x").seam_ratio > 1.5


def test_upscale_passes_carry_rectangle_regions_and_refuse_masks(tmp_path):
    from paradiff_gui.engine.api.upscale import upscale_passes

    src = tmp_path / "z.png"
    Image.fromarray(np.zeros((128, 256), np.uint16)).save(src)
    base = GenerationRequest(width=256, height=128, regions=[{"rect": [128, 0, 256, 128], "feather": 32}])
    passes = upscale_passes(src, 4, base=base)
    assert [p.request.regions[0].rect for p in passes] == [(256, 0, 512, 256), (512, 0, 1024, 512)]
    assert [p.request.regions[0].feather for p in passes] == [64, 128]
    masked = GenerationRequest(width=128, height=64, regions=[{"mask": _mask_png((128, 64))}])
    with pytest.raises(RequestError) as e:
        upscale_passes(src, 2, base=masked)
    assert e.value.field == "regions[0].mask"


@pytest.mark.parametrize("shift", [(0, 0), (5, 11)])
def test_regions_on_a_wrapped_jittered_plan_follow_the_canvas_weights(shift):
    plan = TilePlan.create(64, 128, overlap=8, tile=32, wrap="xy").shifted(*shift)
    assert plan.extent != (64, 128)
    req = GenerationRequest(width=128, height=64, extra={"v": 1},
                            regions=[{"rect": [0, 0, 24, 64], "feather": 16, "extra": {"v": 5}}])
    out, _ = fused(plan, torch.zeros(1, 1, 64, 128), request=req)
    w = torch.from_numpy(mixing_weights(req.regions, 128, 64, 64, 128, wrap="xy"))
    # Tiles past the right edge read the left edge's weights: the region at x < 24 is whole there too.
    torch.testing.assert_close(out[0, 0], w[0] * 1 + w[1] * 5, atol=1e-5, rtol=1e-5)


def test_region_masks_are_periodic_on_a_wrapped_canvas():
    """A region touching a wrapped edge ramps across it, as anywhere else: no hard step where the
    picture meets its own copy (unwrapped, the canvas border is no edge and gets no ramp)."""
    r = parse_region({"rect": [128, 0, 256, 64], "feather": 32}, 0, 256, 64, 100)
    wrapped = mixing_weights((r,), 256, 64, 64, 256, wrap="x")[1, 0]
    plain = mixing_weights((r,), 256, 64, 64, 256)[1, 0]
    assert plain[-1] == 1 and plain[0] == 0  # a hard step across the edge if the picture repeats
    np.testing.assert_allclose(wrapped[::-1][:16] + wrapped[:16], 1.0, atol=1e-6)  # one ramp across the edge
    assert abs(wrapped[0] - wrapped[-1]) < 0.1 and 0.4 < wrapped[0] < 0.6
    np.testing.assert_allclose(wrapped[64:192], plain[64:192])  # the inner edge unchanged


def test_a_wrapped_plan_survives_the_compact_recipe(tmp_path):
    """Big grids store the plan without its tile list (JPEG's 64 KiB EXIF); a wrapped one keeps its wrap."""
    from paradiff_gui.engine.io.metadata import _plan_dict, _rebuilt_tiles

    plan = TilePlan.create(64, 80, overlap=8, tile=24, wrap="xy", scale=8)
    compact = _plan_dict(plan, tiles=False)
    back = TilePlan.from_dict({**compact, "tiles": _rebuilt_tiles(compact, tmp_path / "x.jpg")}, 640, 512)
    assert back.wrap == "xy" and [back.image_rect(t) for t in back.tiles] == [plan.image_rect(t) for t in plan.tiles]
