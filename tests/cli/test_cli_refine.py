"""`paradiff refine`: a selection re-drawn, the rest of the picture bit for bit, the recipe that
replays it, and bad input refused with exit 2 naming the field (built-in terrain model, 128², two
steps: mechanics and contracts; docs/QUALITY.md has the figures)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from paradiff_gui.cli import main
from paradiff_gui.engine.io.metadata import load_request, read_recipe

QUICK = ["--steps", "2", "--seed", "5", "--device", "cpu", "--quiet"]


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


@pytest.fixture
def source(tmp_path):
    g = np.random.default_rng(2)
    small = g.random((5, 5)) * 30000 + 20000
    path = tmp_path / "s.png"
    big = Image.fromarray(small.astype(np.float32), mode="F").resize((128, 128), Image.Resampling.BICUBIC)
    Image.fromarray(np.asarray(big).clip(0, 65535).astype(np.uint16)).save(path)
    return path


def test_refine_writes_a_new_file_with_a_recipe_that_replays(source, tmp_path, capsys):
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    code, err = run(["refine", str(source), "--rect", "40,40,88,88", "--feather", "8", "--strength", "0.8", *QUICK],
                    capsys)
    assert code == 0, err
    out = tmp_path / "s-refined.png"
    assert "refine: sub-canvas" in err and f"wrote {out}" in err
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before  # the source is never written
    src, new = pixels(source), pixels(out)
    keep = np.ones(src.shape, bool)
    keep[36:92, 36:92] = False  # the rectangle and half the feather around it
    assert np.array_equal(new[keep], src[keep]) and not np.array_equal(new, src)
    rec = read_recipe(out)["info"]["refine"]
    assert rec["rect"] == [40, 40, 88, 88] and rec["feather"] == 8 and rec["source_sha256"] == before
    request = load_request(out)
    assert request.init_image == str(source) and request.strength == 0.8 and request.seed == 5
    code, err = run(["refine", "--replay", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert np.array_equal(pixels(tmp_path / "s-refined-replay.png"), new)


@pytest.mark.parametrize(("args", "needle"), [
    (["--rect", "0,0,300,64"], "rect: must lie inside the 128x128 picture"),
    (["--rect", "64,64,64,80"], "rect: is empty"),
    (["--rect", "a,b"], "rect: must look like X0,Y0,X1,Y1"),
    ([], "rect: give the selection"),
    (["--rect", "0,0,64,64", "--feather", "-4"], "feather: must be a whole number from 0"),
    (["--rect", "0,0,64,64", "--strength", "0"], "strength: must be a number above 0"),
    (["--rect", "0,0,64,64", "--strength", "2"], "strength: must be a number above 0"),
    (["--mask", "RGB"], "mask: m.png must be a grayscale image"),
    (["--mask", "EMPTY"], "mask: m.png selects nothing"),
    (["--rect", "0,0,64,64", "--mask", "x.png"], "not allowed with argument"),
])
def test_bad_refines_exit_2_naming_the_field(args, needle, source, tmp_path, capsys):
    if args[:2] in (["--mask", "RGB"], ["--mask", "EMPTY"]):
        m = Image.new("RGB" if args[1] == "RGB" else "L", (128, 128), 0)
        m.save(tmp_path / "m.png")
        args = ["--mask", str(tmp_path / "m.png")]
    before = sorted(p.name for p in tmp_path.iterdir())
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert exit_code(["refine", str(source), *args, *QUICK]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest


def test_refine_of_a_missing_file_names_it(tmp_path, capsys):
    code, err = run(["refine", str(tmp_path / "none.png"), "--rect", "0,0,8,8"], capsys)
    assert code == 2 and "image: no such file" in err


def test_an_inpainting_checkpoint_refines_and_is_refused_for_plain_generation(sd_inpaint_folder, tmp_path, capsys):
    g = np.random.default_rng(3)
    src = tmp_path / "c.png"
    Image.fromarray((g.random((128, 128, 3)) * 255).astype(np.uint8)).save(src)
    fast = ["--model", str(sd_inpaint_folder), "--prompt", "a red castle", "--steps", "2", "--seed", "5",
            "--device", "cpu", "--quiet"]
    code, err = run(["refine", str(src), "--rect", "40,40,88,88", "--feather", "4", *fast], capsys)
    assert code == 0, err
    before, after = pixels(src), pixels(tmp_path / "c-refined.png")
    assert np.array_equal(after[:30], before[:30]) and not np.array_equal(after, before)
    out = tmp_path / "plain.png"
    code, err = run(["generate", "--size", "128x128", "-o", str(out), *fast], capsys)
    assert code == 2 and "model: " in err and "inpainting checkpoint" in err and "paradiff refine" in err
    assert "Traceback" not in err and not out.exists()
