"""LoRAs (models/lora.py) on tiny SD, SDXL and FLUX models, LoRAs built in the test (tests/tiny_lora.py)."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.core.request import RequestError
from paradiff_gui.engine.io import metadata
from paradiff_gui.engine.models import lora as lora_models
from paradiff_gui.engine.models.base import ModelUnavailable
from paradiff_gui.engine.models.registry import _CACHE, load_denoiser
from paradiff_gui.engine.models.sd import bridging
from paradiff_gui.engine.models.sd.schedulers import make_scheduler
from paradiff_gui.engine.runtime.devices import resolve_device, resolve_dtype

W, H = 128, 96  # one tile of the tiny UNet (16 latent px native → tile 512 covers it)
STEPS = 2


@pytest.fixture(scope="module")
def loras(tmp_path_factory, sd_folder, sdxl_folder):
    """SD: a diffusers-format LoRA, the same in Kohya's layout, a second one, one with the text
    encoder in Kohya's layout (``lora_te_``); SDXL: one, and one of the UNet's transformers and both
    text encoders in diffusers' and in Kohya's (sgm names, ``lora_te1_``/``lora_te2_``) layout."""
    from tiny_lora import KOHYA_UNET, TEXT, make_lora, to_kohya

    d = tmp_path_factory.mktemp("loras")
    sd = StableDiffusionPipeline.from_pretrained(str(sd_folder), local_files_only=True)
    xl = StableDiffusionXLPipeline.from_pretrained(str(sdxl_folder), local_files_only=True)
    style = make_lora(sd, d / "style.safetensors", seed=1)
    sd_te = make_lora(sd, d / "sd_te.safetensors", seed=6, targets=KOHYA_UNET, text_targets=TEXT)
    xl_te = make_lora(xl, d / "xl_te.safetensors", seed=5, targets=KOHYA_UNET, text_targets=TEXT)
    return {
        "style": style,
        "kohya": to_kohya(style, d / "style_kohya.safetensors"),
        "other": make_lora(sd, d / "other.safetensors", seed=2, targets=("to_k", "to_v", "proj_in")),
        "sd_te": sd_te,
        # alpha 2 of rank 4: a file whose alpha were ignored would change the model twice as much
        "sd_te_kohya": to_kohya(sd_te, d / "sd_te_kohya.safetensors", alpha=2.0),
        "xl": make_lora(xl, d / "xl.safetensors", seed=3),
        "xl_te": xl_te,
        "xl_kohya": to_kohya(xl_te, d / "xl_kohya.safetensors", unet_config=xl.unet.config, alpha=2.0),
        "dir": d,
    }


def request(folder, **kw):
    fields = dict(model=str(folder), prompt="a red castle", negative_prompt="blue", width=W, height=H, tile=512,
                  steps=STEPS, sampler="euler", seed=3, device="cpu", fusion="gaussian")
    return GenerationRequest(**{**fields, **kw})


def load_oracle(pipe, file, name):
    with warnings.catch_warnings():  # PEFT's notes on a second adapter; models/lora.py hides them too
        warnings.filterwarnings("ignore", message=".*Already found a `peft_config`")
        warnings.filterwarnings("ignore", message=".*inconsistency was discovered between the PEFT")
        pipe.load_lora_weights(str(file), adapter_name=name)


def pipeline_latents(cls, folder, files_weights, seed=3, components=None):
    """The pipeline's latents with the LoRAs; with ``components``, only those parts of them (the
    text encoders' LoRA layers disabled otherwise)."""
    pipe = cls.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("euler", pipe.scheduler.config)
    names = []
    for i, (f, _w) in enumerate(files_weights):
        load_oracle(pipe, f, f"l{i}")
        names.append(f"l{i}")
    pipe.set_adapters(names, [w for _f, w in files_weights])
    for part in set(pipe._lora_loadable_modules) - set(components or pipe._lora_loadable_modules):
        for layer in getattr(pipe, part).modules() if getattr(pipe, part, None) is not None else ():
            if isinstance(layer, BaseTunerLayer):
                layer.enable_adapters(False)
    g = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn((1, 4, H // 8, W // 8), generator=g)
    return pipe(prompt="a red castle", negative_prompt="blue", height=H, width=W, num_inference_steps=STEPS,
                guidance_scale=7.5, latents=noise, generator=g, output_type="latent").images


def load(req):
    """The model ``generate(req)`` would use, loaded (and kept) without running."""
    device = resolve_device(req.device)
    return load_denoiser(req, device, resolve_dtype(req.dtype, device))


def kept_model():
    (den,) = _CACHE.values()
    return den


def _state(den):
    """Every weight of the denoiser and of each text encoder."""
    parts = {"": getattr(den.pipe, "transformer", None) or den.pipe.unet}
    parts.update({f"{n}.": getattr(den.pipe, n) for n in ("text_encoder", "text_encoder_2", "text_encoder_3")
                  if getattr(den.pipe, n, None) is not None})
    return {p + k: v for p, m in parts.items() for k, v in m.state_dict().items()}


def assert_clean(den, weights):
    """No adapter left, and every weight (denoiser and text encoders) the very bits it was."""
    assert not any(den.pipe.get_list_adapters().values())
    state = _state(den)
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[k], weights[k]) for k in state)


def snapshot(den):
    return {k: v.clone() for k, v in _state(den).items()}


def test_two_loras_one_tile_equal_the_pipeline_and_leave_the_model_as_it_was(sd_folder, loras):
    fresh = generate(request(sd_folder))
    den = kept_model()
    weights = snapshot(den)
    # Kohya's layout here, the diffusers file in the oracle: diffusers' converter takes people's files.
    specs = [{"path": str(loras["kohya"]), "weight": 0.8}, {"path": str(loras["other"]), "weight": -0.5}]
    got = generate(request(sd_folder, loras=specs))
    expect = pipeline_latents(StableDiffusionPipeline, sd_folder, [(loras["style"], 0.8), (loras["other"], -0.5)])
    diff = (got.latents - expect).abs().max().item()
    print(f"SD one tile with two LoRAs: max |diff| against the pipeline {diff:.2e}")
    assert diff < 1e-4
    assert (got.latents - fresh.latents).abs().max() > 1e-3, "the LoRAs change the picture"
    assert kept_model() is den, "a LoRA set is no reason to reload the base model"
    assert_clean(den, weights)
    again = generate(request(sd_folder))
    assert (again.latents - fresh.latents).abs().max() <= 1e-6
    assert [lo["name"] for lo in got.info["loras"]] == ["style_kohya", "other"]
    assert got.info["loras"][0]["sha256"] == lora_models.file_sha256(loras["kohya"])


def test_sdxl_lora_equals_the_pipeline(sdxl_folder, loras):
    got = generate(request(sdxl_folder, loras=[(str(loras["xl"]), 0.7)]))
    expect = pipeline_latents(StableDiffusionXLPipeline, sdxl_folder, [(loras["xl"], 0.7)])
    assert (got.latents - expect).abs().max().item() < 1e-4


def test_kohya_sdxl_lora_with_both_text_encoders_equals_the_pipeline(sdxl_folder, loras):
    """The format of most SDXL LoRAs people download: sd-scripts' names (sgm UNet, lora_te1_/te2_,
    alpha). The text encoders' part is applied (not dropped), and taken out again exactly."""
    den = load(request(sdxl_folder))
    weights = snapshot(den)
    got = generate(request(sdxl_folder, loras=[(str(loras["xl_kohya"]), 0.7)]))
    expect = pipeline_latents(StableDiffusionXLPipeline, sdxl_folder, [(loras["xl_kohya"], 0.7)])
    diff = (got.latents - expect).abs().max().item()
    print(f"SDXL Kohya LoRA with both text encoders: max |diff| against the pipeline {diff:.2e}")
    assert diff < 1e-4
    # The same change as the diffusers-format file it was written from: every layer was mapped.
    same = generate(request(sdxl_folder, loras=[(str(loras["xl_te"]), 0.7)]))
    assert (got.latents - same.latents).abs().max().item() < 1e-5
    # Without the text encoders' part the picture is another: they count.
    unet_only = pipeline_latents(StableDiffusionXLPipeline, sdxl_folder, [(loras["xl_kohya"], 0.7)],
                                 components=("unet",))
    assert (got.latents - unet_only).abs().max().item() > 1e-3
    assert kept_model() is den
    assert_clean(den, weights)


def test_kohya_sd_lora_with_its_text_encoder_equals_the_pipeline(sd_folder, loras):
    den = load(request(sd_folder))
    weights = snapshot(den)
    got = generate(request(sd_folder, loras=[(str(loras["sd_te_kohya"]), 0.9)]))
    expect = pipeline_latents(StableDiffusionPipeline, sd_folder, [(loras["sd_te_kohya"], 0.9)])
    assert (got.latents - expect).abs().max().item() < 1e-4
    unet_only = pipeline_latents(StableDiffusionPipeline, sd_folder, [(loras["sd_te_kohya"], 0.9)],
                                 components=("unet",))
    assert (got.latents - unet_only).abs().max().item() > 1e-3
    assert_clean(den, weights)


def test_layers_diffusers_cannot_map_are_told_not_dropped_silently(sd_folder, loras, tmp_path):
    """A diffusers-format file that spells attention layers the old way (``lora.down``) and others
    PEFT's way (``lora_A``), as ``convert_state_dict_to_diffusers`` writes when a LoRA trains more
    than attention: diffusers' loader keeps the PEFT half and leaves the rest out."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from safetensors.torch import load_file, save_file

    from paradiff_gui.engine.core.events import Notice

    mixed = tmp_path / "mixed.safetensors"
    save_file(convert_state_dict_to_diffusers(load_file(str(loras["other"]))), str(mixed))
    keys = load_file(str(mixed)).keys()
    assert any(".lora.down." in k for k in keys) and any(".lora_A." in k for k in keys)
    notices = []
    generate(request(sd_folder, steps=1, loras=[(str(loras["style"]), 1.0), (str(mixed), 1.0)]),
             lambda e: notices.append(e.message) if isinstance(e, Notice) else None)
    (told,) = [n for n in notices if "loras[1]" in n]
    assert "mixed.safetensors" in told and "left out" in told
    assert not any("loras[0]" in n for n in notices), "a file whose every layer fits is not mentioned"


def test_a_bridged_run_takes_a_lora(sd_folder, loras, monkeypatch):
    den = load(request(sd_folder))
    weights = snapshot(den)
    seen = []
    real = bridging.BridgeableAttnProcessor.__call__

    def spy(self, attn, *a, **k):  # the LoRA's layers run inside the bridge's processor
        seen.append(type(attn.to_q).__name__)
        return real(self, attn, *a, **k)

    monkeypatch.setattr(bridging.BridgeableAttnProcessor, "__call__", spy)
    kw = dict(width=192, height=128, tile=128, overlap=64, bridges="full")
    with_lora = generate(request(sd_folder, loras=[(str(loras["style"]), 1.0)], **kw))
    assert len(with_lora.plan) > 1 and torch.isfinite(with_lora.latents).all()
    assert seen and set(seen) == {"Linear"}, "PEFT's wrapper, fused (its forward is the base layer's)"
    assert_clean(den, weights)


@pytest.mark.parametrize("case", ["another base", "not a lora", "not safetensors", "missing"])
def test_refusals_name_the_file_and_leave_the_model_clean(sd_folder, sdxl_folder, loras, tmp_path, case):
    from safetensors.torch import save_file

    den = load(request(sdxl_folder))
    weights = snapshot(den)
    specs = [(str(loras["xl"]), 1.0)]  # a good one first: refused after it loaded, it must go too
    if case == "another base":
        bad, error, says = loras["style"], RequestError, "does not fit"
    elif case == "not a lora":
        bad = tmp_path / "weights.safetensors"
        save_file({"conv.weight": torch.zeros(2, 2)}, str(bad))
        error, says = RequestError, "holds no LoRA weights"
    elif case == "not safetensors":
        bad = tmp_path / "broken.safetensors"
        bad.write_text("hello")
        error, says = ModelUnavailable, "cannot load"
    else:
        bad, error, says = tmp_path / "gone.safetensors", RequestError, "no such LoRA file"
    with pytest.raises(error, match=says) as info:
        generate(request(sdxl_folder, steps=1, loras=[*specs, (str(bad), 1.0)]))
    assert bad.name in str(info.value) and "loras[1]" in str(info.value)
    assert kept_model() is den
    assert_clean(den, weights)


@pytest.mark.parametrize("how", ["error", "cancel"])
def test_an_error_or_a_cancel_mid_run_leaves_the_model_clean(sd_folder, loras, monkeypatch, how):
    from paradiff_gui.engine import Cancelled, CancelToken
    from paradiff_gui.engine.core.events import StepFinished

    den = load(request(sd_folder))
    weights = snapshot(den)
    cancel = CancelToken()

    def boom(*_a, **_k):
        raise RuntimeError("boom")

    def on_event(event):
        if isinstance(event, StepFinished):
            assert any(den.pipe.get_list_adapters().values()), "the LoRA is in while the steps run"
            cancel.cancel()

    if how == "error":
        monkeypatch.setattr(den, "decode", boom)
    with pytest.raises(RuntimeError if how == "error" else Cancelled):
        generate(request(sd_folder, loras=[(str(loras["style"]), 1.0)]), on_event if how == "cancel" else None,
                 cancel)
    monkeypatch.undo()
    assert_clean(den, weights)


@pytest.mark.parametrize("weight", [4.5, -5, float("nan"), True])
def test_a_weight_out_of_range_is_refused_with_the_range(weight):
    with pytest.raises(RequestError, match=r"loras\[0\]\.weight: must be a number from -4 to 4"):
        GenerationRequest(loras=[("style.safetensors", weight)])


def test_the_recipe_records_each_lora_and_replay_finds_it_by_hash(sd_folder, loras, tmp_path, monkeypatch):
    import shutil

    src = tmp_path / "mine" / "style.safetensors"
    src.parent.mkdir()
    shutil.copy(loras["style"], src)
    result = generate(request(sd_folder, loras=[(str(src), 0.8)]))
    png = metadata.save_png(tmp_path / "out.png", result.image, result.request, result.plan, result.info)
    digest = lora_models.file_sha256(src)
    with Image.open(png) as im:
        params = im.info["parameters"]
        recipe = json.loads(im.info["paradiff"])
    assert f'Lora hashes: "style: {digest[:12]}"' in params
    assert recipe["request"]["loras"] == [{"path": str(src), "weight": 0.8, "sha256": digest}]
    # A1111's last line: `Key: value` pairs, a value with commas in double quotes.
    last = params.splitlines()[-1]
    assert re.search(r'(^|, )Lora hashes: "style: [0-9a-f]{12}"(, |$)', last)
    # Moved into a model folder under another name: replay finds it by its sha256.
    models = tmp_path / "models" / "loras"
    models.mkdir(parents=True)
    shutil.move(src, models / "renamed.safetensors")
    monkeypatch.setenv("PARADIFF_MODEL_PATH", str(tmp_path / "models"))
    replay = metadata.load_request(png)
    again = generate(replay)
    assert torch.equal(again.latents, result.latents)
    assert again.info["loras"][0]["file"] == "renamed.safetensors"
    (models / "renamed.safetensors").unlink()
    with pytest.raises(RequestError, match=r"the LoRA style\.safetensors \(sha256 .*\) is missing"):
        generate(replay)


def test_memory_counts_the_lora(sd_folder, loras):
    from paradiff_gui.engine.core.lora import lora_size
    from paradiff_gui.engine.models.info import describe_model
    from paradiff_gui.engine.runtime import memory

    info = describe_model(str(sd_folder))
    bare = request(sd_folder)
    with_lora = request(sd_folder, loras=[(str(loras["style"]), 1.0)])
    size = lora_size(loras["style"])
    assert size.lora_params > 0 and size.base_params > size.lora_params
    fp0, fp1 = memory.footprint(bare, info, "fp32"), memory.footprint(with_lora, info, "fp32")
    assert fp1.weights - fp0.weights == size.lora_params * 4
    h0 = memory.host_footprint(bare, info, "cuda", "fp32")
    h1 = memory.host_footprint(with_lora, info, "cuda", "fp32")
    assert h1.total - h0.total == size.base_params * 4  # the snapshot of the layers it changes


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    """A tiny FLUX.1-dev and its LoRAs: diffusers format (attention), and one of the double block,
    the single block's output and CLIP-L in diffusers' and in sd-scripts' layout."""
    from tiny import save
    from tiny_dit import tiny_flux
    from tiny_lora import FLUX_KOHYA_TARGETS, TEXT, make_lora, to_kohya_flux

    d = tmp_path_factory.mktemp("flux")
    pipe = tiny_flux(guidance_embeds=True)
    folder = save(pipe, d / "tiny-flux")
    full = make_lora(pipe, d / "flux_full.safetensors", seed=5, targets=FLUX_KOHYA_TARGETS, text_targets=TEXT,
                     text_encoders=("text_encoder",))
    return {"folder": folder, "diffusers": make_lora(pipe, d / "flux_style.safetensors", seed=4), "full": full,
            "kohya": to_kohya_flux(full, d / "flux_kohya.safetensors", alpha=2.0)}


def flux_request(folder, **kw):
    return GenerationRequest(**{**dict(model=str(folder), prompt="a red castle", width=W, height=H, tile=512,
                                       steps=STEPS, sampler="euler", seed=7, guidance=3.5, device="cpu",
                                       fusion="gaussian"), **kw})


def flux_pipeline_latents(folder, file, weight, text_encoder=True):
    from diffusers import FluxPipeline

    from paradiff_gui.engine.models import flow

    oracle = FluxPipeline.from_pretrained(str(folder), local_files_only=True)
    oracle.set_progress_bar_config(disable=True)
    load_oracle(oracle, file, "s")
    oracle.set_adapters(["s"], [weight])
    for layer in () if text_encoder else oracle.text_encoder.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.enable_adapters(False)
    g = torch.Generator("cpu").manual_seed(7)
    noise = torch.randn((1, 16, H // 8, W // 8), generator=g)
    packed = oracle(prompt="a red castle", height=H, width=W, num_inference_steps=STEPS, guidance_scale=3.5,
                    latents=flow.pack(noise), generator=g, output_type="latent", max_sequence_length=512).images
    return flow.unpack(packed, H // 8, W // 8)


@pytest.mark.parametrize("form", ["diffusers", "kohya"])
def test_flux_lora_equals_the_pipeline(flux, form):
    """diffusers' format, and sd-scripts' (Black Forest Labs' names, fused q/k/v, alpha, CLIP-L)."""
    den = load(flux_request(flux["folder"]))
    weights = snapshot(den)
    got = generate(flux_request(flux["folder"], loras=[(str(flux[form]), 0.9)]))
    expect = flux_pipeline_latents(flux["folder"], flux[form], 0.9)
    diff = (got.latents - expect).abs().max().item()
    print(f"FLUX {form} LoRA: max |diff| against the pipeline {diff:.2e}")
    assert diff < 1e-4
    assert kept_model() is den
    assert_clean(den, weights)
    bare = generate(flux_request(flux["folder"]))
    assert (bare.latents - got.latents).abs().max() > 1e-3
    assert np.isfinite(bare.latents.numpy()).all()
    if form == "kohya":
        # every layer mapped: the same change as the diffusers-format file it was written from
        same = generate(flux_request(flux["folder"], loras=[(str(flux["full"]), 0.9)]))
        assert (same.latents - got.latents).abs().max().item() < 1e-5
        # and CLIP-L's part counts
        transformer_only = flux_pipeline_latents(flux["folder"], flux[form], 0.9, text_encoder=False)
        assert (got.latents - transformer_only).abs().max().item() > 1e-3


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    from tiny import save
    from tiny_dit import tiny_sd3
    from tiny_lora import ATTENTION, TEXT, make_lora

    d = tmp_path_factory.mktemp("sd3")
    pipe = tiny_sd3()
    folder = save(pipe, d / "tiny-sd3")
    return {"folder": folder, "lora": make_lora(pipe, d / "sd3_style.safetensors", seed=8,
                                                targets=(*ATTENTION, "add_q_proj", "add_k_proj"), text_targets=TEXT)}


def test_sd3_lora_in_diffusers_format_equals_the_pipeline(sd3):
    from diffusers import StableDiffusion3Pipeline

    folder = sd3["folder"]
    req = GenerationRequest(model=str(folder), prompt="a red castle", negative_prompt="blue", width=W, height=H,
                            tile=512, steps=STEPS, sampler="euler", seed=7, guidance=5.0, device="cpu",
                            fusion="gaussian")
    den = load(req)
    weights = snapshot(den)
    got = generate(req.replace(loras=[(str(sd3["lora"]), 0.8)]))
    pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    load_oracle(pipe, sd3["lora"], "s")
    pipe.set_adapters(["s"], [0.8])
    g = torch.Generator("cpu").manual_seed(7)
    noise = torch.randn((1, 16, H // 8, W // 8), generator=g)
    expect = pipe(prompt="a red castle", negative_prompt="blue", height=H, width=W, num_inference_steps=STEPS,
                  guidance_scale=5.0, latents=noise, generator=g, output_type="latent").images
    diff = (got.latents - expect).abs().max().item()
    print(f"SD3 LoRA: max |diff| against the pipeline {diff:.2e}")
    assert diff < 1e-4
    assert (generate(req).latents - got.latents).abs().max() > 1e-3
    assert_clean(den, weights)


def sd3_kohya(tmp_path):
    """A file in sd-scripts' SD3 layout (MMDiT names): diffusers 0.42 reads no such file for SD3."""
    from safetensors.torch import save_file

    path = tmp_path / "sd3_kohya.safetensors"
    save_file({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": torch.zeros(96, 4),
               "lora_unet_joint_blocks_0_x_block_attn_qkv.alpha": torch.tensor(4.0)}, str(path))
    return path


@pytest.mark.parametrize("case", ["sd kohya on sdxl", "sdxl kohya on sd", "sdxl kohya on flux",
                                  "flux kohya on sdxl", "sd3 kohya on sd3"])
def test_a_lora_for_another_base_is_refused_with_the_base_it_looks_made_for(
        case, sd_folder, sdxl_folder, loras, flux, sd3, tmp_path):
    lora, folder, base = {
        "sd kohya on sdxl": (loras["sd_te_kohya"], sdxl_folder, "SD 1.x/2.x"),
        "sdxl kohya on sd": (loras["xl_kohya"], sd_folder, "SDXL"),
        "sdxl kohya on flux": (loras["xl_kohya"], flux["folder"], "SDXL"),
        "flux kohya on sdxl": (flux["kohya"], sdxl_folder, "FLUX.1"),
        "sd3 kohya on sd3": (None, sd3["folder"], "SD3"),
    }[case]
    lora = lora or sd3_kohya(tmp_path)
    den = load(request(folder))
    weights = snapshot(den)
    with pytest.raises(RequestError) as info:
        generate(request(folder, steps=1, guidance=3.5, loras=[(str(lora), 1.0)]))
    message = str(info.value)
    print(message)
    assert message.startswith("loras[0]: ") and lora.name in message and f"for {base}" in message
    assert_clean(den, weights)
