"""The CLI's compositions: --region/--regions, --init-image/--strength, --wrap and `paradiff upscale`
(built-in terrain model, few steps: mechanics and contracts; docs/QUALITY.md has the figures)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from paradiff_gui.cli import main, parse_region_spec
from paradiff_gui.engine.core.request import RequestError
from paradiff_gui.engine.io.metadata import load_request, read_recipe

QUICK = ["--size", "256x256", "--steps", "2", "--seed", "4", "--device", "cpu", "--quiet"]


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im)


def run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


def exit_code(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own refusals
        return exc.code


def test_region_specs_parse_prompts_and_options():
    assert parse_region_spec("0,0,512,1024:a castle|weight=2|feather=32|negative=fog", 0) == {
        "rect": [0, 0, 512, 1024], "prompt": "a castle", "weight": 2.0, "feather": 32, "negative_prompt": "fog",
        "extra": {}}
    assert parse_region_spec("128, 0, 256, 256:terrain_difficulty=90", 0) == {
        "rect": [128, 0, 256, 256], "extra": {"terrain_difficulty": 90}}
    with pytest.raises(RequestError) as e:
        parse_region_spec("0,0,8:x", 2)
    assert e.value.field == "regions[2]" and "X0,Y0,X1,Y1:PROMPT" in e.value.message
    with pytest.raises(RequestError) as e:
        parse_region_spec("0,0,8,8:x|weight=heavy", 0)
    assert e.value.field == "regions[0].weight"


def test_regions_generate_and_replay_from_the_png(tmp_path, capsys):
    regions = tmp_path / "regions.json"
    mask = tmp_path / "mask.png"
    m = Image.new("L", (256, 256), 0)
    m.paste(255, (0, 192, 256, 256))
    m.save(mask)
    regions.write_text(json.dumps([{"mask": "mask.png", "extra": {"terrain_difficulty": 5}, "feather": 16}]))
    out = tmp_path / "r.png"
    code, err = run(["generate", *QUICK, "--regions", str(regions), "--region", "128,0,256,256:terrain_difficulty=90",
                     "-o", str(out)], capsys)
    assert code == 0, err
    req = load_request(out)
    assert [r.extra for r in req.regions] == [{"terrain_difficulty": 5}, {"terrain_difficulty": 90}]
    assert req.regions[0].mask.startswith("data:image/png;base64,")  # the mask travels inside the recipe
    again = tmp_path / "again.png"
    code, err = run(["generate", "--request", str(out), "--quiet", "-o", str(again)], capsys)
    assert code == 0, err
    assert np.array_equal(pixels(again), pixels(out))


@pytest.mark.parametrize(("args", "needle"), [
    (["--region", "200,0,300,256:x"], "regions[0].rect: must lie inside the 256x256 canvas"),
    (["--region", "0,0,8,8:terrain_difficulty=300"], "regions[0].terrain_difficulty: must be a whole number"),
    (["--regions", "missing.json"], "regions: cannot read"),
    (["--strength", "0.5"], "strength: sets how much of an init image is re-drawn"),
    (["--init-image", "missing.png"], "init_image: no such file"),
    (["--init-image", "x.png", "--strength", "0"], "strength: must be a number above 0 and at most 1"),
    (["--init-image", "x.png", "--strength", "1.5"], "strength: must be a number above 0 and at most 1"),
    (["--wrap", "xy", "--size", "128x512"], "wrap: wrap x needs at least two tiles"),
    (["--wrap", "diagonal"], "--wrap: invalid choice"),
    (["--wrap", "x", "--fusion", "independent"], "wrap: needs one shared canvas"),
])
def test_bad_compositions_exit_2_naming_the_field(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert exit_code(["generate", *QUICK, *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_init_image_and_wrap_are_recorded(tmp_path, capsys):
    src = tmp_path / "src.png"
    Image.fromarray(np.full((128, 128), 20000, np.uint16)).save(src)
    out = tmp_path / "i.png"
    code, err = run(["generate", *QUICK, "--init-image", str(src), "--strength", "0.5", "--wrap", "x", "-o", str(out)],
                    capsys)
    assert code == 0, err
    assert "upscaled to 256x256" in err
    recipe = read_recipe(out)
    assert recipe["request"]["init_image"] == str(src) and recipe["request"]["wrap"] == "x"
    assert recipe["info"]["strength"] == 0.5 and len(recipe["info"]["init_image_sha256"]) == 64
    assert recipe["plan"]["wrap"] == "x"


def test_upscale_writes_every_pass_with_its_recipe(tmp_path, capsys):
    src = tmp_path / "t.png"
    code, err = run(["generate", *QUICK, "--size", "128x128", "-o", str(src)], capsys)
    assert code == 0, err
    code, err = run(["upscale", str(src), "--scale", "4", "--steps", "2", "--guidance", "3", "--quiet"], capsys)
    assert code == 0, err
    x2, x4 = tmp_path / "t-x2.png", tmp_path / "t-x4.png"
    assert "pass 1 of 2" in err and "pass 2 of 2" in err
    assert pixels(x2).shape == (256, 256) and pixels(x4).shape == (512, 512)
    r2, r4 = load_request(x2), load_request(x4)
    assert r2.init_image == str(src) and r4.init_image == str(x2)
    assert r4.strength == 0.5 and r4.seed == 4 and r4.steps == 2  # the source's recipe, the flags on top
    assert r2.guidance == r4.guidance == 3.0


@pytest.mark.parametrize(("args", "needle"), [
    (["--scale", "3"], "--scale: invalid choice"),
    (["--scale", "2", "--strength", "0"], "strength: must be a number above 0"),
])
def test_bad_upscale_exits_2(args, needle, tmp_path, capsys):
    src = tmp_path / "s.png"
    Image.fromarray(np.zeros((64, 64), np.uint16)).save(src)
    assert exit_code(["upscale", str(src), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.png"]


def test_upscale_of_a_missing_file_names_it(tmp_path, capsys):
    code, err = run(["upscale", str(tmp_path / "none.png"), "--scale", "2"], capsys)
    assert code == 2 and "image: no such file" in err


def test_init_image_without_a_size_keeps_the_pictures_own_size(tmp_path):
    # A restyle in the CLI: the canvas is the picture's size (each side to the nearest multiple of 8),
    # not the model's default; --size still wins.
    from paradiff_gui.cli import build_parser, request_from_args

    def request(path, *extra):
        return request_from_args(build_parser().parse_args(["generate", "--init-image", str(path), *extra]))

    src = tmp_path / "wide.png"
    Image.fromarray(np.zeros((203, 1001), np.uint16)).save(src)
    r = request(src)
    assert (r.width, r.height) == (1000, 200) and r.init_image == str(src)
    r = request(src, "--size", "512x512")
    assert (r.width, r.height) == (512, 512)
