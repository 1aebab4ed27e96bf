"""The CLI contract: flags, outputs, replay and exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from paradiff_gui.cli import main
from paradiff_gui.engine.core.request import GenerationRequest
from paradiff_gui.engine.io.metadata import load_request, read_recipe

FAST = ["--prompt", "a red castle", "--size", "256x192", "--grid", "2x2", "--overlap", "16", "--steps", "2",
        "--seed", "5", "--device", "cpu", "--quiet"]


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_writes_png_with_metadata_and_replays_bit_for_bit(sd_folder, tmp_path, capsys):
    a = tmp_path / "a.png"
    code, _, err = run(["generate", "--model", str(sd_folder), *FAST, "--sampler", "euler_a", "-o", str(a),
                        "--save-request", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    assert f"wrote {a}" in err
    req = load_request(a)
    assert (req.width, req.height, req.grid, req.steps, req.seed, req.sampler) == (256, 192, (2, 2), 2, 5, "euler_a")
    assert load_request(tmp_path / "r.json") == req
    assert read_recipe(a)["info"]["tiles"] == 4
    # Replay from the PNG and from the JSON: the very same pixels.
    for source in (a, tmp_path / "r.json"):
        b = tmp_path / f"replay-{source.suffix[1:]}.png"
        code, _, err = run(["generate", "--request", str(source), "--quiet", "-o", str(b)], capsys)
        assert code == 0, err
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
        assert load_request(b) == req


def test_request_plus_flags_overrides_only_those_flags(sd_folder, tmp_path, capsys):
    a = tmp_path / "a.png"
    assert run(["generate", "--model", str(sd_folder), *FAST, "-o", str(a)], capsys)[0] == 0
    b = tmp_path / "b.png"
    code, _, err = run(["generate", "--request", str(a), "--seed", "6", "--tile", "128", "-o", str(b), "--quiet"],
                       capsys)
    assert code == 0, err
    r = load_request(b)
    assert (r.seed, r.tile, r.grid, r.prompt, r.steps) == (6, 128, None, "a red castle", 2)


def test_random_seed_is_printed_and_recorded(sd_folder, tmp_path, capsys):
    argv = ["generate", "--model", str(sd_folder), *[a for a in FAST if a not in ("--seed", "5")],
            "-o", str(tmp_path / "x.png")]
    code, _, err = run(argv, capsys)
    assert code == 0
    printed = int(err.split("seed ")[1].split()[0])
    assert load_request(tmp_path / "x.png").seed == printed


def exit_code(argv) -> int:
    """main()'s exit code, whether it returns it or argparse raises SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--size", "100x64"], "width: must be a multiple of 8"),
        (["--size", "64"], "--size: must look like WIDTHxHEIGHT"),
        (["--size", "70000x512"], "width: must be from 64 to 65536"),
        (["--grid", "0x3"], "grid: must be from 1 to 64"),
        (["--grid", "3by3"], "--grid: must look like ROWSxCOLS"),
        (["--grid", "2x2", "--tile", "512"], "not allowed with argument"),
        (["--tile", "20"], "tile: must be from 64 to 4096"),
        (["--tile", "abc"], "--tile: must be a whole number from 64 to 4096"),
        (["--tile", "256", "--overlap", "256"], "overlap: must be less than the tile"),
        (["--overlap", "-8"], "overlap: must be from 0 to 2048"),
        (["--steps", "0"], "steps: must be from 1 to 1000"),
        (["--steps", "many"], "--steps: must be a whole number from 1 to 1000"),
        (["--guidance", "0"], "guidance: must be from 1.0 to 30.0"),
        (["--guidance", "x"], "--guidance: must be a number from 1.0 to 30.0"),
        (["--sampler", "plms"], "--sampler: invalid choice: 'plms' (choose from 'euler'"),
        (["--seed", "-1"], "seed: must be from 0 to 4294967295"),
        (["--fusion", "avg"], "--fusion: invalid choice"),
        (["--tile-batch", "0"], "tile_batch: must be auto or a whole number from 1 to 1024, got 0"),
        (["--device", "tpu"], "device: must be auto, cpu, cuda, cuda:N or mps"),
        (["--dtype", "int8"], "--dtype: invalid choice"),
        (["--dtype", "fp16", "--device", "cpu"], "dtype: fp16 is not supported on the CPU"),
        (["--prompt", "x" * 4001], "prompt: must be at most 4000 characters"),
        (["-o", "out.bmp"], "output: must end in one of .png"),
        (["--size", "20000x1024", "-o", "out.webp"], "output: WebP image holds at most 16383 px"),
        (["--set", "difficulty"], "set: must be KEY=VALUE"),
        (["--set", "terrain_difficulty=60"], "terrain_difficulty: is not an option of x/y (its options: none)"),
        (["--request", "missing.json"], "request: cannot read"),
        (["--request", "missing.png"], "request: no such file"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_exits_2_with_the_field_and_no_traceback(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert exit_code(["generate", "--model", "x/y", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == [], "nothing written"


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ("/no/such/folder", "no such file or folder"),
        ("owner/not-cached", "is not in the local hub cache and downloads are off"),
        ("weights.ckpt", "pickle checkpoint"),
        ("builtin:nothing", "there is no built-in model 'nothing'"),
    ],
)
def test_unavailable_model_exits_3_saying_how_to_get_it(model, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["generate", "--model", model, *FAST], capsys)
    assert code == 3
    assert needle in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_folder_without_model_index_is_explained(tmp_path, capsys):
    code, _, err = run(["generate", "--model", str(tmp_path), *FAST, "-o", str(tmp_path / "o.png")], capsys)
    assert code == 3 and "not a diffusers model (no model_index.json)" in err


def test_models_lists_local_folders(sd_folder, capsys, monkeypatch):
    monkeypatch.setenv("PARADIFF_MODEL_PATH", str(sd_folder.parent))
    code, out, _ = run(["models", "--json"], capsys)
    assert code == 0
    entries = json.loads(out)
    assert {"id": str(sd_folder), "kind": "folder", "where": str(sd_folder.parent),
            "label": "tiny-sd (Stable Diffusion)", "options": []} in entries


def _cli(*args, env=None, **kw):
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "paradiff_gui", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=e, **kw)


def test_ctrl_c_exits_130_and_writes_nothing(sd_folder, tmp_path):
    out = tmp_path / "never.png"
    out.write_bytes(b"an older file of that name")
    # Enough steps that the run is surely still denoising when the signal arrives.
    proc = _cli("generate", "--model", str(sd_folder), "--size", "512x512", "--tile", "128", "--steps", "300",
                "--device", "cpu", "--seed", "1", "-o", str(out))
    deadline = time.time() + 120
    seen = ""
    while "tiles of" not in seen and time.time() < deadline:  # the plan line: the model is loaded
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, seen + err
    assert "interrupted; nothing was written" in err
    assert out.read_bytes() == b"an older file of that name"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["never.png"]


def test_module_entry_point_and_version():
    proc = _cli("--version")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.startswith("paradiff ")


def test_default_model_is_the_builtin_terrain_model(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PARADIFF_MODEL", raising=False)
    out = tmp_path / "terrain.png"
    code, _, err = run(["generate", "--size", "128x128", "--steps", "1", "--seed", "2", "--prompt", "alps",
                        "--terrain-difficulty", "60", "-o", str(out)], capsys)
    assert code == 0, err
    assert "note: builtin:terrain is conditioned on difficulty, not text" in err
    req = load_request(out)
    assert req.model == "builtin:terrain" and req.extra == {"terrain_difficulty": 60} and req.sampler == "lcm"
    with Image.open(out) as im:
        assert im.mode == "I;16"


def test_single_file_checkpoint_without_cached_config_is_explained(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    ckpt = tmp_path / "my-model.safetensors"  # SD-1.x-style key names, as in a real checkpoint
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, str(ckpt))
    code, _, err = run(["generate", "--model", str(ckpt), *FAST, "-o", str(tmp_path / "o.png")], capsys)
    assert code == 3, err
    assert "my-model.safetensors is a single-file SD 1.x/2.x checkpoint" in err
    assert "--allow-download" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def terrain_png(tmp_path_factory):
    out = tmp_path_factory.mktemp("terrain") / "t.png"
    relief = out.with_name("relief.png")
    code = main(["generate", "--size", "256x256", "--steps", "2", "--seed", "1", "--fusion", "independent",
                 "--quiet", "-o", str(out), "--relief", str(relief)])
    assert code == 0
    return out, relief


def test_relief_picture_is_written_for_heightmaps(terrain_png):
    _, relief = terrain_png
    with Image.open(relief) as im:
        assert im.mode == "RGB" and im.size == (256, 256)
        assert np.asarray(im).std() > 5


def test_inspect_reads_the_plan_from_metadata_and_prints_json(terrain_png, capsys):
    out, _ = terrain_png
    code, stdout, _ = run(["inspect", str(out), "--json"], capsys)
    assert code == 0
    report = json.loads(stdout)
    assert report["plan_from"] == "Paradiff metadata" and report["size"] == [256, 256]
    assert len(report["tiles"]) == 9 and report["tiles"][0] == [0, 0, 128, 128]
    assert report["seam_ratio"] > 1.5, "independent tiles leave hard seams"
    assert {"orientation", "kind", "position", "ratio"} <= set(report["seams"][0])
    code, stdout, _ = run(["inspect", str(out)], capsys)
    assert code == 0 and "seam ratio" in stdout


def test_inspect_foreign_images_needs_and_takes_a_plan(tmp_path, capsys):
    img = tmp_path / "foreign.png"
    arr = np.zeros((256, 256), np.uint8)
    arr[:, 128:] = 200  # one hard vertical seam at x = 128
    Image.fromarray(arr).save(img)
    code, _, err = run(["inspect", str(img)], capsys)
    assert code == 2 and "has no Paradiff metadata" in err and "--grid" in err
    code, stdout, _ = run(["inspect", str(img), "--grid", "1x2", "--json"], capsys)
    assert code == 0
    report = json.loads(stdout)
    assert report["tiles"] == [[0, 0, 128, 256], [128, 0, 256, 256]] and report["seam_ratio"] > 3
    assert run(["inspect", str(tmp_path / "nope.png")], capsys)[0] == 2


def test_jitter_and_global_context_flags_reach_the_request(tmp_path, capsys):
    out = tmp_path / "j.png"
    code, _, err = run(["generate", "--size", "128x128", "--steps", "1", "--seed", "1", "--jitter",
                        "--global-context", "0.3", "--quiet", "-o", str(out)], capsys)
    assert code == 0, err
    r = load_request(out)
    assert r.jitter is True and r.global_context == 0.3
    assert exit_code(["generate", "--global-context", "2"]) == 2


def test_help_and_version_do_not_load_torch():
    """The engine imports lazily: `paradiff --help`/`--version` answer without torch or diffusers
    (0.05 s against 2.4 s when the engine loaded torch up front, 2 cores)."""
    code = (
        "import sys\n"
        "from paradiff_gui.cli import main\n"
        "for argv in (['--version'], ['--help'], ['generate', '--help'], ['inspect', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr, proc.stderr[-500:]


def test_the_engine_package_still_offers_its_names():
    import paradiff_gui.engine as engine

    for name in engine.__all__:
        assert getattr(engine, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        engine.nope  # noqa: B018


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "terrain_difficulty=0"], "terrain_difficulty: must be from 1 to 100, got 0"),
        (["--set", "terrain_difficulty=rough"], "terrain_difficulty: must be a whole number from 1 to 100"),
        (["--terrain-difficulty", "101"], "terrain_difficulty: must be from 1 to 100, got 101"),
        (["--set", "roughness=3"], "roughness: is not an option of builtin:terrain (its options: terrain_difficulty)"),
        (["--request", "rough.json"], "terrain_difficulty: must be from 1 to 100, got 500"),
    ],
)
def test_model_options_are_checked_against_the_models_own_controls(args, needle, capsys, tmp_path, monkeypatch):
    # A replayed request is checked too: refused by name, never clamped or found out mid-run.
    replay = tmp_path.parent / f"{tmp_path.name}-in"
    replay.mkdir()
    (replay / "rough.json").write_text(
        GenerationRequest(model="builtin:terrain", extra={"terrain_difficulty": 500}).to_json())
    monkeypatch.chdir(tmp_path)
    args = [str(replay / a) if a == "rough.json" else a for a in args]
    assert exit_code(["generate", "--model", "builtin:terrain", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_set_and_the_old_flag_build_the_same_request(tmp_path):
    from paradiff_gui.cli import build_parser, request_from_args

    def build(*extra):
        args = build_parser().parse_args(["generate", "--model", "builtin:terrain", "--seed", "4", *extra])
        return request_from_args(args)

    by_set, by_flag = build("--set", "terrain_difficulty=60"), build("--terrain-difficulty", "60")
    assert by_set == by_flag and by_set.extra == {"terrain_difficulty": 60}
    assert build().extra == {}  # no option given: the model's own default applies at run time
    assert by_set.steps == 8 and by_set.sampler == "lcm"  # the terrain model's defaults


def test_models_lists_each_models_options(capsys):
    code, out, _ = run(["models", "--json"], capsys)
    assert code == 0
    terrain = next(m for m in json.loads(out) if m["id"] == "builtin:terrain")
    assert terrain["options"] == [{"key": "terrain_difficulty", "label": "Difficulty", "min": 1, "max": 100,
                                   "default": 35}]


def test_bridges_flag_reaches_the_request_and_is_refused_with_independent_fusion(capsys, tmp_path, monkeypatch):
    from paradiff_gui.cli import build_parser, request_from_args

    args = build_parser().parse_args(["generate", "--model", "builtin:terrain", "--seed", "1", "--bridges", "full"])
    assert request_from_args(args).bridges == "full"
    monkeypatch.chdir(tmp_path)
    assert exit_code(["generate", "--bridges", "full", "--fusion", "independent"]) == 2
    assert "bridges: connect tiles denoised together" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
