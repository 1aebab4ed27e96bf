"""`--lora FILE[:WEIGHT]` on generate and upscale: the recipe, replay, and refusals by exit code."""

from __future__ import annotations

import pytest
from diffusers import StableDiffusionPipeline

from paradiff_gui.cli import main
from paradiff_gui.engine.core.lora import parse_lora_arg
from paradiff_gui.engine.io.metadata import read_recipe

FAST = ["--prompt", "a red castle", "--size", "128x96", "--tile", "512", "--steps", "1", "--seed", "5",
        "--device", "cpu", "--sampler", "euler", "--quiet"]


@pytest.fixture(scope="module")
def style(sd_folder, tmp_path_factory):
    from tiny_lora import make_lora

    pipe = StableDiffusionPipeline.from_pretrained(str(sd_folder), local_files_only=True)
    return make_lora(pipe, tmp_path_factory.mktemp("loras") / "style.safetensors")


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("text, expect", [
    ("a.safetensors", ("a.safetensors", 1.0)), ("a.safetensors:0.5", ("a.safetensors", 0.5)),
    ("C:\\loras\\a.safetensors:-1", ("C:\\loras\\a.safetensors", -1.0)),
    ("C:\\a.safetensors", ("C:\\a.safetensors", 1.0)),
])
def test_file_and_weight_are_split_at_the_last_colon_before_a_number(text, expect):
    assert parse_lora_arg(text) == expect


def test_generate_and_upscale_take_loras_and_replay_them(sd_folder, style, tmp_path, capsys):
    out = tmp_path / "a.png"
    code, _, err = run(["generate", "--model", str(sd_folder), *FAST, "--lora", f"{style}:0.7", "-o", str(out)],
                       capsys)
    assert code == 0, err
    recipe = read_recipe(out)
    assert recipe["request"]["loras"][0]["weight"] == 0.7 and recipe["info"]["loras"][0]["name"] == "style"
    code, _, err = run(["upscale", str(out), "--scale", "2", "--steps", "1", "--device", "cpu", "--quiet",
                        "--lora", f"{style}:0.3", "-o", str(tmp_path / "up.png")], capsys)
    assert code == 0, err
    assert read_recipe(tmp_path / "up.png")["request"]["loras"][0]["weight"] == 0.3


@pytest.mark.parametrize("case, code, needle", [
    ("weight", 2, "loras[0].weight: must be a number from -4 to 4"),
    ("missing", 2, "no such LoRA file"),
    ("not a lora", 2, "holds no LoRA weights"),
    ("broken", 3, "cannot load broken.safetensors"),
    ("sdxl kohya", 2, "loras[0]: xl_kohya.safetensors does not fit tiny-sd (it looks like a LoRA for SDXL"),
])
def test_bad_loras_exit_with_the_file_and_what_would_work(sd_folder, sdxl_folder, tmp_path, capsys, case, code,
                                                          needle):
    import torch
    from safetensors.torch import save_file

    arg = {"weight": "x.safetensors:7", "missing": str(tmp_path / "gone.safetensors")}.get(case)
    if case == "not a lora":
        save_file({"w": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
        arg = str(tmp_path / "w.safetensors")
    elif case == "sdxl kohya":  # the format of most SDXL LoRAs people download, on an SD 1.x model
        from diffusers import StableDiffusionXLPipeline
        from tiny_lora import make_lora, to_kohya

        xl = StableDiffusionXLPipeline.from_pretrained(str(sdxl_folder), local_files_only=True)
        made = make_lora(xl, tmp_path / "xl.safetensors")
        arg = str(to_kohya(made, tmp_path / "xl_kohya.safetensors", unet_config=xl.unet.config))
    elif case == "broken":
        (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 16)
        arg = str(tmp_path / "broken.safetensors")
    got, _, err = run(["generate", "--model", str(sd_folder), *FAST, "--lora", arg, "-o", str(tmp_path / "o.png")],
                      capsys)
    assert got == code and needle in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()
