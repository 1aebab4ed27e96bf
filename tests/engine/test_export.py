from __future__ import annotations

import itertools
import json
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import ExifTags, Image, PngImagePlugin

from paradiff_gui.engine import GenerationRequest, RequestError, TilePlan
from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.io.export import FORMATS, format_for, open_image, save_image, to_8bit
from paradiff_gui.engine.io.metadata import read_recipe, save_png

INFO = {"model_name": "terrain", "device": "cpu"}
REQ = request_for("builtin:terrain", width=128, height=96, prompt="a castle «unicode» ✓ 山",
                                  negative_prompt="blurry", seed=7)
PLAN = TilePlan.for_request(REQ, scale=1, native_tile=128)


def smooth_rgb(h: int = 96, w: int = 128) -> np.ndarray:
    # Smooth on purpose: JPEG is only "close" on content it can compress well.
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [0.5 + 0.4 * np.sin(2 * np.pi * (x + k * y)) for k in (0.5, 1.0, 1.5)]
    return (np.stack(chans, axis=-1) * 255).round().astype(np.uint8)


def heightmap(h: int = 96, w: int = 128) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return (1000 + 300 * x + 200 * y + (x * y) % 97).astype(np.uint16)


def user_comment_text(raw: bytes) -> str:
    prefix, body = raw[:8], raw[8:]
    return body.decode("utf-16-be") if prefix == b"UNICODE\0" else body.decode("ascii")


def embedded_parameters(path, fmt: str) -> str:
    with Image.open(path) as im:
        if fmt == "png":
            return im.info["parameters"]
        if fmt == "tiff":
            root = ET.fromstring(im.info["xmp"])
            return root.find(".//{http://www.w3.org/1999/02/22-rdf-syntax-ns#}li").text
        return user_comment_text(im.getexif().get_ifd(ExifTags.IFD.Exif)[0x9286])


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("kind", ["rgb", "height16"])
def test_every_format_round_trips_pixels_and_recipe(tmp_path, fmt, kind):
    img = smooth_rgb() if kind == "rgb" else heightmap()
    out = save_image(tmp_path / f"out{FORMATS[fmt].extensions[0]}", img, REQ, PLAN, INFO,
                     quality=100 if fmt == "webp" else 95)
    back = open_image(out)

    if FORMATS[fmt].deep or kind == "rgb":
        expected = img
    else:
        expected = to_8bit(img)  # shallow formats get the min-max stretched heightmap
        if fmt == "webp":
            expected = np.repeat(expected[..., None], 3, axis=-1)  # WebP stores gray as RGB
    assert back.dtype == expected.dtype and back.shape == expected.shape
    if fmt == "jpeg":
        assert np.abs(back.astype(int) - expected.astype(int)).mean() < 2.0
    else:
        assert np.array_equal(back, expected)

    data = read_recipe(out)
    assert GenerationRequest.from_dict(data["request"]) == REQ
    assert data["plan"]["tiles"] == PLAN.to_dict()["tiles"]
    assert data["info"] == INFO
    params = embedded_parameters(out, fmt)
    assert params.splitlines()[0] == REQ.prompt
    assert "Model: terrain" in params and "Negative prompt: blurry" in params
    if fmt != "png":
        with Image.open(out) as im:
            assert im.getexif()[0x0131].startswith("Paradiff ")


def test_uint16_stays_16_bit_in_png_and_tiff(tmp_path):
    img = heightmap()
    for name in ("a.png", "a.tif"):
        with Image.open(save_image(tmp_path / name, img, REQ, PLAN, INFO)) as im:
            assert im.mode == "I;16"


def test_format_comes_from_the_extension_and_bad_ones_are_named(tmp_path):
    assert [format_for(n) for n in ("a.PNG", "b.tif", "c.tiff", "d.webp", "e.jpg", "f.JPEG")] == \
        ["png", "tiff", "tiff", "webp", "jpeg", "jpeg"]
    with pytest.raises(RequestError, match=r"^format: .*allowed: \.png, \.tif, \.tiff, \.webp, \.jpg, \.jpeg"):
        save_image(tmp_path / "x.bmp", smooth_rgb(), REQ, PLAN, INFO)
    with pytest.raises(RequestError, match=r"^format: unknown format 'gif'"):
        save_image(tmp_path / "x.png", smooth_rgb(), REQ, PLAN, INFO, fmt="gif")
    # An explicit format wins over the extension.
    out = save_image(tmp_path / "x.dat", smooth_rgb(), REQ, PLAN, INFO, fmt="jpg")
    with Image.open(out) as im:
        assert im.format == "JPEG"
    with pytest.raises(RequestError, match=r"^quality: "):
        save_image(tmp_path / "x.jpg", smooth_rgb(), REQ, PLAN, INFO, quality=0)
    assert list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize(("fmt", "side"), [("webp", 16384), ("jpeg", 65501)])
def test_formats_refuse_images_past_their_size_limit(tmp_path, fmt, side):
    with pytest.raises(RequestError, match=rf"^format: .* at most {side - 1} px a side"):
        save_image(tmp_path / f"x.{fmt}", np.zeros((8, side), np.uint8), REQ, PLAN, INFO)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("how", ["encoder", "progress"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_part_file(tmp_path, monkeypatch, fmt, how):
    target = tmp_path / f"out{FORMATS[fmt].extensions[0]}"
    target.write_bytes(b"previous")
    on_progress = None
    if how == "encoder":
        def half_then_crash(self, fp, *args, **kwargs):
            fp.write(b"partial image")
            raise OSError("disk full")

        monkeypatch.setattr(Image.Image, "save", half_then_crash)
    else:
        def on_progress(n):  # e.g. the user cancels the export
            raise KeyboardInterrupt

    with pytest.raises((OSError, KeyboardInterrupt)):
        save_image(target, smooth_rgb(), REQ, PLAN, INFO, on_progress=on_progress)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == [target.name], "no temporary file left behind"


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_progress_grows_to_the_file_size(tmp_path, fmt):
    img = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)  # noise: a file of ~100+ kB
    seen: list[int] = []
    out = save_image(tmp_path / f"p{FORMATS[fmt].extensions[0]}", img, REQ, PLAN, INFO, on_progress=seen.append)
    assert seen and all(a < b for a, b in itertools.pairwise(seen))
    assert seen[-1] == out.stat().st_size
    if fmt in ("png", "jpeg"):  # these stream through the encoder; WebP and TIFF report once
        assert len(seen) > 1


def test_open_image_has_its_own_documented_pixel_limit(tmp_path, monkeypatch):
    wide = np.arange(20 * 20000, dtype=np.uint32).reshape(20, 20000).astype(np.uint8)
    path = save_image(tmp_path / "wide.png", wide, REQ, PLAN, INFO)
    # Shrink Pillow's own limit so this image is a "bomb" to Pillow (above twice the limit: an error).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(open_image(path), wide)
        assert read_recipe(path)["request"]["seed"] == REQ.seed
    assert Image.MAX_IMAGE_PIXELS == 1000, "Pillow's global limit is put back"
    with pytest.raises(RequestError, match=r"^image: .* 0\.4 megapixels, more than the limit of 0\.1 megapixels"):
        open_image(path, max_pixels=100_000)
    with pytest.raises(RequestError, match=r"^image: no such file"):
        open_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(RequestError, match=r"^image: .*not a readable image"):
        open_image(tmp_path / "junk.png")


def test_open_image_turns_other_modes_into_rgb_or_gray(tmp_path):
    rgb = smooth_rgb(16, 16)
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).quantize(8).save(tmp_path / "p.png")
    Image.fromarray(rgb).convert("LA").save(tmp_path / "la.png")
    assert np.array_equal(open_image(tmp_path / "rgba.png"), rgb)
    assert open_image(tmp_path / "p.png").shape == (16, 16, 3)
    la = open_image(tmp_path / "la.png")
    assert la.shape == (16, 16) and la.dtype == np.uint8


def test_a_64x64_grid_recipe_fits_jpeg_by_leaving_out_the_tile_list(tmp_path):
    req = request_for("builtin:terrain", width=512, height=512, tile=None, grid=(64, 64), overlap=0)
    plan = TilePlan.for_request(req, scale=1, native_tile=128)
    assert len(json.dumps(plan.to_dict())) > 65536, "the full tile list would not fit JPEG's EXIF"
    out = save_image(tmp_path / "grid.jpg", smooth_rgb(512, 512), req, plan, INFO)
    with Image.open(out) as im:
        stored = json.loads(im.getexif()[0x010E])
    assert "tiles" not in stored["plan"]
    data = read_recipe(out)
    assert GenerationRequest.from_dict(data["request"]) == req
    assert data["plan"]["tiles"] == plan.to_dict()["tiles"]
    assert "Tile grid: 64x64" in embedded_parameters(out, "jpeg")


def test_png_recipe_past_the_metadata_limit_is_stored_compact(tmp_path):
    req = request_for("builtin:terrain", width=8192, height=8192, tile=64, overlap=32)
    plan = TilePlan.for_request(req, scale=1, native_tile=128)
    # The recipe is about the plan, not the pixels: a tiny image keeps the test fast.
    out = save_png(tmp_path / "big.png", smooth_rgb(8, 8), req, plan, INFO)
    with Image.open(out) as im:
        assert "tiles" not in json.loads(im.info["paradiff"])["plan"]
    assert read_recipe(out)["plan"]["tiles"] == plan.to_dict()["tiles"]


def test_foreign_and_broken_metadata_are_named(tmp_path):
    exif = Image.Exif()
    exif[0x010E] = "OLYMPUS DIGITAL CAMERA"
    Image.new("RGB", (8, 8)).save(tmp_path / "camera.jpg", exif=exif)
    with pytest.raises(RequestError, match=r"^request: .*has no Paradiff metadata"):
        read_recipe(tmp_path / "camera.jpg")

    compact = {"request": REQ.to_dict(), "plan": {"rows": 2, "cols": 1, "tile_width": 8, "tile_height": 8,
                                                  "row_starts": [0], "col_starts": [0]}}
    meta = PngImagePlugin.PngInfo()
    meta.add_itxt("paradiff", json.dumps(compact))
    Image.new("RGB", (8, 8)).save(tmp_path / "broken.png", pnginfo=meta)
    with pytest.raises(RequestError, match=r"^request: .*plan has no valid 'row_starts'"):
        read_recipe(tmp_path / "broken.png")
