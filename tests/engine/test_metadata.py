from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from paradiff_gui.engine import GenerationRequest, RequestError, TilePlan
from paradiff_gui.engine.io.metadata import atomic_write, load_request, read_recipe, save_png, save_request

REQ = GenerationRequest(model="some/model", prompt="a castle, «unicode» ✓", negative_prompt="blurry", width=1024,
                        height=512, grid=(2, 3), overlap=64, steps=20, guidance=6.5, sampler="euler_a", seed=42)
PLAN = TilePlan.for_request(REQ, 8, 512)


def test_png_round_trip_gives_the_identical_request(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (512, 1024, 3), dtype=np.uint8)
    out = save_png(tmp_path / "a.png", img, REQ, PLAN, {"model_name": "model"})
    assert load_request(out) == REQ
    with Image.open(out) as im:
        assert np.array_equal(np.asarray(im), img)
        params = im.info["parameters"]
    assert params.splitlines()[0] == REQ.prompt
    assert params.splitlines()[1] == "Negative prompt: blurry"
    for piece in ("Steps: 20", "Sampler: Euler a", "CFG scale: 6.5", "Seed: 42", "Size: 1024x512",
                  "Model: model", "Tile grid: 2x3", "Fusion: cosine"):
        assert piece in params.splitlines()[2]
    recipe = read_recipe(out)
    assert recipe["plan"]["tiles"][0] == [0, 0, *PLAN.image_rect(PLAN.tiles[0])[2:]]


def test_request_json_files_load_and_bad_ones_are_named(tmp_path):
    p = save_request(tmp_path / "r.json", REQ)
    assert load_request(p) == REQ
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RequestError, match=r"^request: .*not valid JSON"):
        load_request(tmp_path / "bad.json")
    (tmp_path / "field.json").write_text(json.dumps({**REQ.to_dict(), "steps": -3}))
    with pytest.raises(RequestError, match=r"^steps: must be from 1 to 1000"):
        load_request(tmp_path / "field.json")
    Image.new("RGB", (8, 8)).save(tmp_path / "foreign.png")
    with pytest.raises(RequestError, match=r"has no Paradiff metadata"):
        load_request(tmp_path / "foreign.png")
    with pytest.raises(RequestError, match=r"no such file"):
        load_request(tmp_path / "missing.png")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")

    def half_then_crash(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"], "no temporary file left behind"
