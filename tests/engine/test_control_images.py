"""Control maps without weights: read at canvas size, tile (the init image, softened), canny, and
the per-tile crop with wrap-around."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from paradiff_gui.engine.core.plan import Tile
from paradiff_gui.engine.core.request import GenerationRequest
from paradiff_gui.engine.models.control_images import control_map, crop


def square(tmp_path, name="sq.png", size=(96, 64)):
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[16:32, 16:40] = 200
    path = tmp_path / name
    Image.fromarray(a).save(path)
    return path, a


def test_canny_marks_the_squares_border_only(tmp_path):
    path, _ = square(tmp_path)
    req = GenerationRequest(model="m", width=96, height=64,
                            controls=[{"model": "cn", "image": str(path), "preprocessor": "canny"}])
    edges, notes = control_map(req, 0)
    assert notes == [] and edges.shape == (64, 96, 3)
    on = edges[..., 0] > 0
    assert on[16, 20] or on[15, 20]  # the top border
    assert not on[24, 28] and not on[2, 2]  # inside and outside: flat, no edge


def test_tile_reads_the_init_image_and_downscale_softens_it(tmp_path):
    path, a = square(tmp_path)
    req = GenerationRequest(model="m", width=96, height=64, init_image=str(path), controls=[{"model": "cn"}])
    assert req.controls[0].pre == "tile"
    same, _ = control_map(req, 0)
    assert np.array_equal(same, a)
    soft, _ = control_map(req.replace(controls=[{"model": "cn", "downscale": 8}]), 0)
    assert 0 < soft[16, 20, 0] < 200 or 0 < soft[15, 20, 0] < 200  # the sharp step is blurred


def test_a_control_image_of_another_size_is_resized_with_a_note(tmp_path):
    path, _ = square(tmp_path, size=(48, 32))
    req = GenerationRequest(model="m", width=96, height=64, controls=[{"model": "cn", "image": str(path)}])
    out, notes = control_map(req, 0)
    assert out.shape == (64, 96, 3) and "(48x32) resized to the canvas, 96x64" in notes[0]


def test_crop_takes_the_tiles_box_and_wraps_past_the_edge():
    canvas = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8)  # image px
    inside = Tile(0, 0, 0, y0=1, x0=1, y1=3, x1=3)  # latent px, scale 2
    past = Tile(1, 0, 1, y0=0, x0=3, y1=2, x1=5)  # columns 6..10 → 6, 7, 0, 1
    a, b = crop(canvas, [inside, past], 2)
    assert torch.equal(a, canvas[0, :, 2:6, 2:6])
    assert torch.equal(b, canvas[0, :, 0:4][..., [6, 7, 0, 1]])


def test_a_map_stays_uint8_on_the_host_and_shrinks_there_and_goes_up_in_the_run_dtype(tmp_path):
    from paradiff_gui.engine.models.control_images import host_map, resized, upload

    _, a = square(tmp_path)  # 96x64, a 24x16 square of 200 at (16, 16)
    m = host_map(a)
    assert m.shape == (1, 3, 64, 96) and m.dtype == torch.uint8 and m.data_ptr() == a.ctypes.data  # a view
    small = resized(m, 32, 48)
    assert small.shape == (1, 3, 32, 48) and small.dtype == torch.uint8
    assert small[0, 0, 12, 14] == 200 and small[0, 0, 2, 2] == 0  # inside and outside the halved square
    noise = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)  # every kind of value
    up = upload(host_map(noise), torch.device("cpu"), torch.float16)
    assert up.dtype == torch.float16 and torch.equal(up, (torch.from_numpy(noise / np.float32(255)))
                                                     .permute(2, 0, 1)[None].half())
