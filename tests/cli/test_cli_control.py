"""ControlNet on the command line: --control/--control-pre/--control-mode, the recipe's record and
its replay (a union ControlNet's mode too), bad input (exit 2 naming the field or file, 3 for a ControlNet
that cannot be loaded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from paradiff_gui.cli import main, parse_control_specs
from paradiff_gui.engine.core.request import GenerationRequest, RequestError
from paradiff_gui.engine.io.metadata import load_request, read_recipe

FAST = ["--prompt", "a red castle", "--size", "128x96", "--steps", "1", "--seed", "5", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def cn_folder(tmp_path_factory, sd_folder):
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(sd_folder), subfolder="unet")
    torch.manual_seed(0)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    folder = tmp_path_factory.mktemp("cn") / "tiny-cn"
    net.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def union_folder(tmp_path_factory, sdxl_folder):
    from diffusers import UNet2DConditionModel
    from tiny import tiny_union_controlnet

    unet = UNet2DConditionModel.from_pretrained(str(sdxl_folder), subfolder="unet")
    folder = tmp_path_factory.mktemp("cn") / "tiny-union"
    tiny_union_controlnet(unet, 0).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def edges_png(tmp_path_factory):
    a = np.zeros((96, 128, 3), np.uint8)
    a[30:60, 40:90] = 255
    path = tmp_path_factory.mktemp("ctl") / "edges.png"
    Image.fromarray(a).save(path)
    return path


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def test_control_spec_parsing():
    (a, b, c) = parse_control_specs(["cn:img.png", "cn:img.png:0.5", "cn:img.png:0.5:0.1:0.9"], ["canny"])
    assert a == {"model": "cn", "image": "img.png", "preprocessor": "canny"}
    assert b["weight"] == 0.5 and "start" not in b
    assert (c["weight"], c["start"], c["end"]) == (0.5, 0.1, 0.9)
    (tile,) = parse_control_specs(["tile-cn"], [])
    assert tile == {"model": "tile-cn", "image": None}
    with pytest.raises(RequestError, match="control_pre"):
        parse_control_specs(["a:b", "c:d", "e:f"], ["tile", "none"])
    one, two = parse_control_specs(["u:a.png", "u:b.png:0.5"], [], ["depth", "canny"])
    assert (one["mode"], two["mode"], two["weight"]) == ("depth", "canny", 0.5) and "preprocessor" not in one
    assert [c["mode"] for c in parse_control_specs(["u:a.png", "u:b.png"], [], ["openpose"])] == ["openpose"] * 2
    assert "mode" not in parse_control_specs(["cn:a.png"], [])[0]  # as before: no mode unless given
    with pytest.raises(RequestError, match="control_mode: give it once"):
        parse_control_specs(["a:b", "c:d", "e:f"], [], ["depth", "canny"])


def test_union_control_runs_records_and_replays_its_modes(sdxl_folder, union_folder, edges_png, tmp_path, capsys):
    out = tmp_path / "u.png"
    code, err = run(["generate", "--model", str(sdxl_folder), *FAST, "--control", f"{union_folder}:{edges_png}:0.8",
                     "--control", f"{union_folder}:{edges_png}:1.1", "--control-mode", "depth", "--control-mode",
                     "segment", "-o", str(out)], capsys)
    assert code == 0, err
    req = load_request(out)
    assert [(c.mode, c.weight) for c in req.controls] == [("depth", 0.8), ("segment", 1.1)]
    assert [r["mode"] for r in read_recipe(out)["info"]["controls"]] == ["depth", "segment"]
    again = tmp_path / "again.png"
    code, err = run(["generate", "--request", str(out), "--quiet", "-o", str(again)], capsys)
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))
    other = tmp_path / "other.png"  # the mode reaches the model: another mode, another picture
    code, err = run(["generate", "--model", str(sdxl_folder), *FAST, "--control", f"{union_folder}:{edges_png}:0.8",
                     "--control", f"{union_folder}:{edges_png}:1.1", "--control-mode", "depth", "--control-mode",
                     "normal", "-o", str(other)], capsys)
    assert code == 0, err
    assert not np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(other)))


def test_a_union_map_without_a_mode_exits_2_naming_it(sdxl_folder, union_folder, edges_png, tmp_path, capsys):
    code, err = run(["generate", "--model", str(sdxl_folder), *FAST, "--control", f"{union_folder}:{edges_png}",
                     "-o", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "controls[0].mode" in err and "tiny-union is a union ControlNet" in err, err
    assert not (tmp_path / "x.png").exists()
    code, err = run(["generate", "--model", str(sdxl_folder), *FAST, "--control-mode", "depth"], capsys)
    assert code == 2 and "control_mode" in err and "give --control too" in err, err


def test_control_runs_records_and_replays(sd_folder, cn_folder, edges_png, tmp_path, capsys):
    out = tmp_path / "a.png"
    code, err = run(["generate", "--model", str(sd_folder), *FAST, "--control", f"{cn_folder}:{edges_png}:0.6:0:0.5",
                     "--control-pre", "canny", "-o", str(out)], capsys)
    assert code == 0, err
    req = load_request(out)
    (c,) = req.controls
    assert (c.model, c.image, c.weight, c.start, c.end, c.preprocessor) == (str(cn_folder), str(edges_png), 0.6, 0.0,
                                                                             0.5, "canny")
    (rec,) = read_recipe(out)["info"]["controls"]
    assert rec["model"] == "tiny-cn" and rec["preprocessor"] == "canny" and len(rec["sha256"]) == 64
    again = tmp_path / "b.png"
    code, err = run(["generate", "--request", str(out), "--quiet", "-o", str(again)], capsys)
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


def test_a_control_image_of_another_size_is_resized_with_a_notice(sd_folder, cn_folder, edges_png, tmp_path, capsys):
    code, err = run(["generate", "--model", str(sd_folder), *FAST, "--size", "192x96", "--control",
                     f"{cn_folder}:{edges_png}", "-o", str(tmp_path / "a.png")], capsys)
    assert code == 0, err
    assert "control image edges.png (128x96) resized to the canvas, 192x96" in err


@pytest.mark.parametrize("spec,field", [
    ("{cn}:{img}:2.5", "controls[0].weight: must be a number from 0 to 2"),
    ("{cn}:{img}:1:0.6:0.4", "controls[0].start: must be below end"),
    ("{cn}", "controls[0].image: is needed without an init image"),
])
def test_bad_values_exit_2_naming_the_field(sd_folder, cn_folder, edges_png, capsys, spec, field):
    code, err = run(["generate", "--model", str(sd_folder), *FAST,
                     "--control", spec.format(cn=cn_folder, img=edges_png)], capsys)
    assert code == 2 and field in err, err


def test_unreadable_image_exits_2_and_unloadable_model_3(sd_folder, cn_folder, tmp_path, capsys):
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    code, err = run(["generate", "--model", str(sd_folder), *FAST, "--control", f"{cn_folder}:{bad}",
                     "-o", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "controls[0].image" in err and "not-an-image.png" in err, err
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    code, err = run(["generate", "--model", str(sd_folder), *FAST, "--control", f"{broken}:{bad}",
                     "-o", str(tmp_path / "y.png")], capsys)
    assert code == 3 and "controls[0].model" in err and "broken.safetensors" in err, err


def test_a_controlnet_for_another_base_exits_2(sdxl_folder, cn_folder, edges_png, tmp_path, capsys):
    code, err = run(["generate", "--model", str(sdxl_folder), *FAST, "--control", f"{cn_folder}:{edges_png}",
                     "-o", str(tmp_path / "x.png")], capsys)
    assert code == 2, err
    assert "tiny-cn is a ControlNet for a base with cross-attention width 32" in err
    assert "use a ControlNet made for SDXL" in err


def test_request_validation_and_json_round_trip(edges_png):
    req = GenerationRequest(model="m", controls=[{"model": "cn", "image": str(edges_png), "weight": 0.5}])
    assert GenerationRequest.from_json(req.to_json()) == req
    with pytest.raises(RequestError, match=r"controls\[0\].preprocessor"):
        GenerationRequest(model="m", controls=[{"model": "cn", "image": "x.png", "preprocessor": "depth"}])


def test_memory_counts_controlnet_weights_and_residuals(sd_folder, cn_folder, edges_png):
    from paradiff_gui.engine.models.info import describe_model
    from paradiff_gui.engine.runtime import memory

    info = describe_model(str(sd_folder))
    plain = GenerationRequest(model=str(sd_folder), width=128, height=96, device="cpu")
    steered = plain.replace(controls=[{"model": str(cn_folder), "image": str(edges_png)}])
    a, b = memory.footprint(plain, info, "fp32"), memory.footprint(steered, info, "fp32")
    from diffusers import ControlNetModel

    params = sum(p.numel() for p in ControlNetModel.from_pretrained(str(cn_folder)).parameters())
    assert b.weights - a.weights == params * 4
    # Each view holds its crop of the map (128x96 image px, one tile): uint8, float32, fp32.
    assert b.per_view == int(a.per_view * (1 + memory.CONTROL_VIEW_SHARE)) + 128 * 96 * 3 * (1 + 4 + 4)
    host_a = memory.host_footprint(plain, info, "cuda")
    host_b = memory.host_footprint(steered, info, "cuda")
    # The map stays on the host as uint8 (3 bytes a px), plus two working copies while it is read.
    assert host_b.inputs - host_a.inputs == 128 * 96 * 3 * (1 + 2)


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    from tiny import save
    from tiny_dit import tiny_flux

    return save(tiny_flux(guidance_embeds=True), tmp_path_factory.mktemp("models") / "tiny-flux")


@pytest.fixture(scope="module")
def flux_cn_file(tmp_path_factory):
    """A FLUX.1 ControlNet as its single diffusers-named .safetensors file (InstantX's layout)."""
    import warnings

    from safetensors.torch import save_file
    from tiny_dit import tiny_flux_controlnet

    with warnings.catch_warnings():  # diffusers 0.42's FluxControlNetModel uses its own deprecated FluxPosEmbed
        warnings.filterwarnings("ignore", message=".*FluxPosEmbed.*", category=FutureWarning)
        net = tiny_flux_controlnet(2)
    path = tmp_path_factory.mktemp("cn") / "flux-canny.safetensors"
    save_file(net.state_dict(), str(path))
    return path


def test_flux_control_runs_records_and_replays(flux_folder, flux_cn_file, edges_png, tmp_path, capsys):
    flux = ["generate", "--model", str(flux_folder), "--prompt", "a red castle", "--size", "128x96", "--steps", "2",
            "--seed", "5", "--guidance", "3.5", "--device", "cpu", "--quiet"]
    out, plain = tmp_path / "a.png", tmp_path / "plain.png"
    code, err = run([*flux, "--control", f"{flux_cn_file}:{edges_png}:0.7:0:0.5", "-o", str(out)], capsys)
    assert code == 0, err
    (c,) = load_request(out).controls
    assert (c.model, c.image, c.weight, c.start, c.end) == (str(flux_cn_file), str(edges_png), 0.7, 0.0, 0.5)
    (rec,) = read_recipe(out)["info"]["controls"]
    assert rec["model"] == "flux-canny.safetensors" and len(rec["sha256"]) == 64
    code, err = run([*flux, "-o", str(plain)], capsys)
    assert code == 0, err
    assert not np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(plain))), "the ControlNet steered"
    again = tmp_path / "b.png"
    code, err = run(["generate", "--request", str(out), "--quiet", "-o", str(again)], capsys)
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


def test_a_flux_controlnet_format_diffusers_cannot_load_exits_3(flux_folder, edges_png, tmp_path, capsys):
    from safetensors.torch import save_file

    xlabs = tmp_path / "flux-canny-controlnet-v3.safetensors"  # XLabs' own names (BFL's)
    save_file({k: torch.zeros(4) for k in ("double_blocks.0.img_attn.qkv.weight", "controlnet_blocks.0.weight",
                                           "input_hint_block.0.weight", "pos_embed_input.weight")}, str(xlabs))
    code, err = run(["generate", "--model", str(flux_folder), *FAST, "--control", f"{xlabs}:{edges_png}",
                     "-o", str(tmp_path / "x.png")], capsys)
    assert code == 3, err
    assert "controls[0].model: flux-canny-controlnet-v3.safetensors is a FLUX.1 ControlNet in XLabs' own format" in err
    assert "FluxControlNetModel layout works" in err
