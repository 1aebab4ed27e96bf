"""FLUX and SD3 on real hardware's memory: the text encoders off the device while denoising, fp8
storage of the transformer, and the planner's estimate for the real FLUX.1-dev, SD3.5-large and
SD3.5-medium configurations (parameters counted on the meta device: nothing is downloaded or
allocated)."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from dit_configs import CLIP_G, CLIP_L, FLUX_DEV, FLUX_SCHEDULER, SD35_LARGE, SD35_MEDIUM, T5_XXL, VAE16

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.core.plan import TilePlan
from paradiff_gui.engine.core.request import RequestError
from paradiff_gui.engine.models import flow
from paradiff_gui.engine.models.info import describe_model
from paradiff_gui.engine.models.registry import clear_cache, load_denoiser
from paradiff_gui.engine.runtime import memory

CPU = torch.device("cpu")
GiB = 1 << 30


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from tiny import save
    from tiny_dit import tiny_flux, tiny_sd3

    root = tmp_path_factory.mktemp("models")
    return {"flux": save(tiny_flux(), root / "flux"), "sd3": save(tiny_sd3(), root / "sd3")}


def request(model, **kw):
    return GenerationRequest(**{**dict(model=str(model), prompt="a red castle", width=128, height=96, tile=512,
                                       steps=2, sampler="euler", seed=3, device="cpu", guidance=3.5), **kw})


class Moves:
    """Records ``.to`` on modules instead of moving them (no accelerator here): the device each was
    sent to, in order."""

    def __init__(self, monkeypatch, modules: dict[str, torch.nn.Module]) -> None:
        self.log: dict[str, list[str]] = {name: [] for name in modules}
        for name, module in modules.items():
            monkeypatch.setattr(module, "to", self._recorder(name, module), raising=False)

    def _recorder(self, name, module):
        def to(device=None, *args, **kwargs):
            self.log[name].append(str(torch.device(device)) if device is not None else "")
            return module
        return to


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's free-memory query answering ``state["free"]`` bytes; empty_cache counted."""
    state = {"free": 80 * GiB, "emptied": 0}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (state["free"], 80 * GiB))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: state.__setitem__("emptied", state["emptied"] + 1))
    return state


# -- 1. text encoders off the device ---------------------------------------------------------------


def _encoders(pipe):
    return {n: getattr(pipe, n) for n in flow.TEXT_ENCODERS if getattr(pipe, n, None) is not None}


def test_text_encoders_visit_the_device_for_the_encode_alone(monkeypatch, fake_cuda):
    from tiny_dit import tiny_sd3

    pipe = tiny_sd3()
    moves = Moves(monkeypatch, _encoders(pipe))
    assert set(moves.log) == {"text_encoder", "text_encoder_2", "text_encoder_3"}
    with flow.encoders_on(pipe, torch.device("cuda:0")) as where:
        assert where == torch.device("cuda:0")
        assert all(log == ["cuda:0"] for log in moves.log.values())
    assert all(log == ["cuda:0", "cpu"] for log in moves.log.values())  # back on the CPU before denoising
    assert fake_cuda["emptied"] == 1  # and the planner's free memory sees the room


def test_encoders_the_device_cannot_hold_encode_on_the_cpu(monkeypatch, fake_cuda):
    from tiny_dit import tiny_flux

    pipe = tiny_flux()
    size = flow.module_bytes(flow.text_encoders(pipe))
    # Room for the encoders' weights but not for the encode's activations on top, with the margin.
    fake_cuda["free"] = int((size + memory.ENCODE_ACTIVATION_BYTES) / memory.MARGIN) - 1
    moves = Moves(monkeypatch, _encoders(pipe))
    with flow.encoders_on(pipe, torch.device("cuda")) as where:
        assert where == CPU
    assert all(log == ["cpu", "cpu"] for log in moves.log.values())
    fake_cuda["free"] += 2
    with flow.encoders_on(pipe, torch.device("cuda")) as where:
        assert where == torch.device("cuda")


def test_encoders_go_back_after_an_error_and_a_cpu_moves_nothing(monkeypatch, fake_cuda):
    from tiny_dit import tiny_flux

    pipe = tiny_flux()
    moves = Moves(monkeypatch, _encoders(pipe))
    with pytest.raises(RuntimeError, match="boom"), flow.encoders_on(pipe, torch.device("cuda")):
        raise RuntimeError("boom")
    assert all(log == ["cuda", "cpu"] for log in moves.log.values())
    moves = Moves(monkeypatch, _encoders(pipe))
    with flow.encoders_on(pipe, CPU) as where:
        assert where == CPU
    assert all(log == [] for log in moves.log.values())


def test_the_loader_sends_only_the_transformer_and_the_vae_to_the_device(monkeypatch):
    from tiny_dit import tiny_sd3

    pipe = tiny_sd3()
    modules = {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    moves = Moves(monkeypatch, modules)
    flow.place(pipe, torch.device("cuda:1"))
    assert moves.log["transformer"] == moves.log["vae"] == ["cuda:1"]
    assert {n: moves.log[n] for n in flow.TEXT_ENCODERS} == {n: ["cpu"] for n in flow.TEXT_ENCODERS}


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_prepare_encodes_where_encoders_on_says_and_hands_the_model_its_device(kind, folders, monkeypatch):
    """The encode on the CPU (a device too small for T5), the conditioning on the model's device: the
    meta device stands in for the accelerator (tensors moved there keep their shape, not values)."""
    req = request(folders[kind])
    den = load_denoiser(req, CPU, torch.float32)
    plan = TilePlan.for_request(req, den.scale, den.native_tile)
    expect = den.prepare(req, plan)  # on the CPU: what the conditioning holds
    seen = []
    real = den.pipe.encode_prompt

    def spy(*args, **kwargs):
        seen.append((kwargs["device"], {n: next(m.parameters()).device.type for n, m in _encoders(den.pipe).items()}))
        return real(*args, **kwargs)

    monkeypatch.setattr(den.pipe, "encode_prompt", spy)
    monkeypatch.setattr(memory, "encoders_fit", lambda size, free: False)
    monkeypatch.setattr(den, "device", torch.device("meta"))
    cond = den.prepare(req, plan)
    assert seen and all(where == CPU and set(on.values()) == {"cpu"} for where, on in seen)
    tensors = [v for v in vars(cond).values() if isinstance(v, torch.Tensor)]
    assert len(tensors) >= 2 and all(t.device.type == "meta" for t in tensors)
    for name, t in vars(expect).items():
        if isinstance(t, torch.Tensor):
            assert getattr(cond, name).shape == t.shape and getattr(cond, name).dtype == t.dtype
    clear_cache()


# -- 2. fp8 storage ----------------------------------------------------------------------------------


def test_fp8_stores_the_transformers_linear_weights_in_float8_and_runs_close_to_full(folders):
    full_req = request(folders["flux"], steps=3)
    fp8_req = full_req.replace(weights="fp8")
    den = load_denoiser(fp8_req, CPU, torch.float32)
    # Attention and MLP Linears in float8; the adaptive norms' modulation Linears (named norm) and the
    # output projection kept in the run's dtype, as diffusers' casting does and fp8_full_params counts.
    linears = {name: m.weight.dtype for name, m in den.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    kept = {name for name, dtype in linears.items() if dtype != torch.float8_e4m3fn}
    assert kept and all("norm" in name or name == "proj_out" for name in kept)
    assert all(linears[n] == torch.float8_e4m3fn for n in linears if ".attn.to_" in n or ".ff." in n)
    assert all(linears[n] == torch.float32 for n in kept)
    full = sum(p.numel() for p in den.transformer.parameters() if p.dtype != torch.float8_e4m3fn)
    assert full == flow.fp8_full_params("flux", dict(den.transformer.config))
    assert den.transformer.dtype == torch.float32  # computes in the run's dtype
    assert all(p.dtype == torch.float32 for e in flow.text_encoders(den.pipe) for p in e.parameters())
    fp8 = generate(fp8_req).latents
    clear_cache()
    full = generate(full_req).latents
    clear_cache()
    diff = (fp8 - full).abs().max().item()
    rel = diff / full.abs().max().item()
    print(f"fp8 vs full (tiny FLUX, 3 steps): max |Δ| {diff:.4f}, relative to max |x| {rel:.4f}")
    assert diff > 0 and rel < 0.05


def test_fp8_is_refused_by_name_for_other_models():
    with pytest.raises(RequestError) as err:
        generate(GenerationRequest(model="builtin:terrain", weights="fp8", device="cpu", width=64, height=64,
                                   sampler="euler", steps=1))
    assert err.value.field == "weights" and "FLUX.1 and SD3" in err.value.message and "full" in err.value.message


def test_weights_is_validated_and_reaches_the_request_from_the_cli(folders):
    from paradiff_gui.cli import build_parser, request_from_args

    with pytest.raises(RequestError) as err:
        GenerationRequest(weights="fp4")
    assert err.value.field == "weights" and "full, fp8" in err.value.message
    args = build_parser().parse_args(["generate", "--model", str(folders["flux"]), "--weights", "fp8"])
    req = request_from_args(args)
    assert req.weights == "fp8" and type(req).from_json(req.to_json()) == req  # the recipe keeps it
    assert GenerationRequest.from_dict({k: v for k, v in req.to_dict().items() if k != "weights"}).weights == "full"


# -- 3. the estimate from the real configurations -----------------------------------------------------

MODELS = {
    "FLUX.1-dev": ("FluxPipeline", FLUX_DEV, {"text_encoder": CLIP_L, "text_encoder_2": T5_XXL}, 11.9e9),
    "SD3.5-large": ("StableDiffusion3Pipeline", SD35_LARGE,
                    {"text_encoder": CLIP_L, "text_encoder_2": CLIP_G, "text_encoder_3": T5_XXL}, 8.06e9),
    "SD3.5-medium": ("StableDiffusion3Pipeline", SD35_MEDIUM,
                     {"text_encoder": CLIP_L, "text_encoder_2": CLIP_G, "text_encoder_3": T5_XXL}, 2.24e9),
}


def _params(cls, config, fp8: bool = False) -> int:
    """The model's parameters; with ``fp8`` those that diffusers' fp8 layerwise casting keeps in
    the compute dtype."""
    with torch.device("meta"):  # shapes only: no memory, no values
        model = cls(**config)
    if fp8:
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    return sum(p.numel() for p in model.parameters() if not fp8 or p.dtype != torch.float8_e4m3fn)


def _bf16_file(path, params: int) -> None:
    """A safetensors file of ``params`` bf16 weights as the folder describer sees it: a real header
    (its stored dtype), the size on disk (sparse: no disk space is taken)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [params], "data_offsets": [0, 2 * params]}}).encode()
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 2 * params)


def _real_folder(root, name):
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel

    pipeline, config, encoders, _ = MODELS[name]
    folder = root / name
    index = {"_class_name": pipeline, "transformer": ["diffusers", "x"], "vae": ["diffusers", "AutoencoderKL"],
             **{e: ["transformers", "x"] for e in encoders}}
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps(index))
    for part, cfg in (("transformer", config), ("vae", VAE16),
                      ("scheduler", FLUX_SCHEDULER if pipeline == "FluxPipeline" else {"shift": 3.0})):
        (folder / part).mkdir()
        (folder / part / ("scheduler_config.json" if part == "scheduler" else "config.json")).write_text(
            json.dumps(cfg))
    cls = FluxTransformer2DModel if pipeline == "FluxPipeline" else SD3Transformer2DModel
    counts = {"transformer": _params(cls, config), "vae": _params(AutoencoderKL, VAE16), **encoders}
    for part, n in counts.items():
        _bf16_file(folder / part / "model.safetensors", n)
    return folder, {**counts, "fp8_full": _params(cls, config, fp8=True)}


@pytest.mark.parametrize("name", list(MODELS))
def test_the_estimate_of_the_real_models_at_1024_tiles(name, tmp_path, capsys):
    folder, n = _real_folder(tmp_path, name)
    hidden = MODELS[name][1]["num_attention_heads"] * MODELS[name][1]["attention_head_dim"]
    assert abs(n["transformer"] - MODELS[name][3]) < 0.01e9  # the published sizes
    info = describe_model(str(folder))
    req = GenerationRequest(model=str(folder), width=1024, height=1024, sampler="euler", dtype="bf16",
                            guidance=3.5 if name.startswith("FLUX") else 7.0)
    fp = memory.footprint(req, info, "bf16")
    fp8 = memory.footprint(req.replace(weights="fp8"), info, "bf16")
    # Weights on the device: the transformer and the VAE at 2 bytes a weight; fp8: the transformer at
    # 1, but for the layers diffusers' casting keeps in bf16 (the config's count is the exact one).
    assert info.fp8_full_params == n["fp8_full"]
    headers = 2048  # the files' safetensors headers, counted in their size on disk
    assert 0 <= fp.weights - 2 * (n["transformer"] + n["vae"]) < headers
    expect8 = (n["transformer"] - n["fp8_full"]) + 2 * n["fp8_full"] + 2 * n["vae"]
    assert 0 <= fp8.weights - expect8 < headers
    # The text encoders: in host memory, not on the device.
    encoders = 2 * sum(v for k, v in n.items() if k.startswith("text_encoder"))
    host = memory.host_footprint(req, info, "cuda", "bf16")
    assert 0 <= host.encoders - encoders < headers and encoders > 9e9  # T5-XXL alone is 9.5 GB
    # Activations of one view: 20 (tokens × hidden) bf16 tensors, tokens = 64² image + the prompt's.
    text = 512 if name.startswith("FLUX") else 77 + 256
    assert info.text_tokens == text and info.hidden == hidden
    assert fp.per_view == 20 * (64 * 64 + text) * hidden * 2
    assert fp.views_per_tile == (1 if name.startswith("FLUX") else 2)  # dev: guidance embedded; SD3: CFG
    scores = memory.dit_view_bytes(hidden, info.heads, 64 * 64, text, 2, fused_attention=False) - fp.per_view
    assert scores == 2 * info.heads * (64 * 64 + text) ** 2 * 2
    with capsys.disabled():
        print(f"\n{name}: transformer {n['transformer'] / 1e9:.2f} B params ({n['fp8_full'] / 1e9:.2f} B kept "
              f"16-bit by fp8); weights bf16 {fp.weights / GiB:.1f} GiB, "
              f"fp8 {fp8.weights / GiB:.1f} GiB; text encoders (host) {encoders / GiB:.1f} GiB; per view "
              f"{fp.per_view / GiB:.2f} GiB (+{scores / GiB:.2f} unfused) x {fp.views_per_tile}; decode tile "
              f"{fp.decode / GiB:.2f} GiB; peak 1 tile bf16 {fp.peak(1) / GiB:.1f} GiB, fp8 {fp8.peak(1) / GiB:.1f} "
              f"GiB")
