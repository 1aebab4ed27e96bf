"""TerrainUNet, the built-in model in torch: the same function as the bundled ONNX graph, its
weights cache, and what happens when the weights are missing, damaged or not what we expect."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from paradiff_gui.engine.models.base import ModelUnavailable
from paradiff_gui.engine.models.registry import clear_cache
from paradiff_gui.engine.models.terrain import weights
from paradiff_gui.engine.models.terrain.unet import TerrainUNet

SIGMAS = (80.0, 20.0, 5.0, 0.5)
DIFFICULTIES = (1, 35, 100)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test converts into its own cache folder, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    clear_cache()
    yield
    clear_cache()


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    """The converted module, once for the tests that compare what it computes (a conversion takes
    seconds; the tests of the cache convert on their own). Tests that change it take a copy."""
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    try:
        return weights.load_unet()
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def session():
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(weights.onnx_path()), options, providers=["CPUExecutionProvider"])


def _inputs(batch: int, sigma: float | list[float], difficulty: int | list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    sig = torch.as_tensor(sigma, dtype=torch.float32).expand(batch).contiguous()
    # A noisy sample as the sampler makes it: smooth structure plus noise of the level σ.
    x = 0.5 * torch.randn(batch, 1, 16, 16, generator=g).repeat_interleave(8, -1).repeat_interleave(8, -2)
    x = x + sig[:, None, None, None] * torch.randn(batch, 1, 128, 128, generator=g)
    label = (torch.as_tensor(difficulty, dtype=torch.float32).expand(batch) - 1) / 99
    return x, sig, label.contiguous()


def _worst_difference(session, model, memory_format) -> float:
    cases = [(1, s, d) for s in SIGMAS for d in DIFFICULTIES]  # every σ × difficulty at batch 1
    # ...and at batch 7, each σ with the three difficulties mixed in one batch.
    cases += [(7, s, [DIFFICULTIES[i % 3] for i in range(7)]) for s in SIGMAS]
    worst = 0.0
    for i, (batch, sigma, difficulty) in enumerate(cases):
        x, sig, label = _inputs(batch, sigma, difficulty, seed=i)
        with torch.inference_mode():
            ours = model(x.contiguous(memory_format=memory_format), sig, label).numpy()
        ref = session.run(["denoised"], {"noisy": x.numpy(), "sigma": sig.numpy(), "difficulty": label.numpy()})[0]
        assert ours.shape == ref.shape == (batch, 1, 128, 128)
        assert (np.abs(ref) < 1).mean() > 0.5 and ref.std() > 0.01  # a real output, not all clipped or flat
        worst = max(worst, float(np.abs(ours - ref).max()))
    return worst


def test_torch_module_computes_the_onnx_graph_within_1e_4(session, unet):
    assert _worst_difference(session, unet, torch.contiguous_format) <= 1e-4  # measured 8.6e-6


def test_the_generation_path_channels_last_stays_within_float_rounding_of_the_graph(session, unet):
    """The backend runs the module channels-last on the CPU (1.2-1.3x faster): oneDNN then sums
    the convolutions in another order, and across 196 of them the output moves by up to ~1.3e-4
    (about 4 levels of the 16-bit heightmap) — rounding, not a different function."""
    model = copy.deepcopy(unet).to(memory_format=torch.channels_last)
    assert _worst_difference(session, model, torch.channels_last) <= 3e-4


def test_batch_chunks_return_each_tile_in_order_as_it_would_alone():
    """predict() runs a CPU batch in chunks of CPU_CHUNK tiles: the tiles come back in order,
    each as it would alone."""
    from paradiff_gui.engine.models.terrain import CPU_CHUNK, TerrainConditioning, TerrainDenoiser

    den = TerrainDenoiser(torch.device("cpu"))
    x, sig, _ = _inputs(CPU_CHUNK + 2, 20.0, 35, seed=0)
    batched = den.predict(x, sig[0], [None] * len(x), TerrainConditioning(35))
    picks = (0, CPU_CHUNK - 1, CPU_CHUNK, len(x) - 1)
    alone = torch.cat([den.predict(x[i:i + 1], sig[0], [None], TerrainConditioning(35)) for i in picks])
    assert (batched[list(picks)] - alone).abs().max() < 3e-4  # rounding only; a swapped tile differs by ~1
    assert (batched[0] - batched[1]).abs().max() > 0.1


def test_bf16_runs_close_to_fp32(unet):
    model = copy.deepcopy(unet)
    x, sig, label = _inputs(1, 5.0, 35, seed=3)  # one tile: bf16 convolutions are slow on a CPU
    with torch.inference_mode():
        full = model(x, sig, label)
        half = model.set_compute_dtype(torch.bfloat16)(x, sig, label)
    assert half.dtype == torch.float32  # the preconditioning stays in fp32
    assert model.sigma_min.dtype == torch.float32 and float(model.sigma_min) == pytest.approx(0.002)
    assert (half - full).abs().mean() < 0.02


def test_weights_are_converted_once_then_read_from_the_cache(monkeypatch):
    target = weights.cache_file(weights.file_sha256(weights.onnx_path()))
    assert not target.exists()
    first = weights.load_unet()
    assert target.is_file() and not list(target.parent.glob("*.part"))

    def no_conversion(source):
        raise AssertionError("converted again although the cache is good")

    monkeypatch.setattr(weights, "convert", no_conversion)
    second = weights.load_unet()
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape", "other_source"])
def test_a_damaged_or_foreign_cache_file_is_made_again(damage):
    from safetensors.torch import load_file, save_file

    sha = weights.file_sha256(weights.onnx_path())
    target = weights.cache_file(sha)
    good = weights.load_unet()
    state = load_file(str(target))
    if damage == "garbage":
        target.write_bytes(b"\x00not a safetensors file" * 100)
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "wrong_shape":
        state["out.2.weight"] = torch.zeros(1, 32, 1, 1)
        save_file(state, str(target), metadata={"source_sha256": sha, "format": weights.FORMAT})
    else:  # right names and shapes, but made from another file (and so other values)
        state["out.2.weight"] = torch.zeros_like(state["out.2.weight"])
        save_file(state, str(target), metadata={"source_sha256": "0" * 64, "format": weights.FORMAT})
    again = weights.load_unet()
    assert torch.equal(again.out[2].weight, good.out[2].weight)
    assert load_file(str(target))["out.2.weight"].shape == good.out[2].weight.shape  # re-made on disk


def test_a_changed_source_gets_its_own_cache_file(tmp_path):
    import onnx

    model = onnx.load(str(weights.onnx_path()))
    onnx.helper.set_model_props(model, {"note": "a reinstalled, different build"})  # same weights, new sha256
    copy = tmp_path / weights.ONNX_NAME
    onnx.save(model, str(copy))
    weights.load_unet()
    weights.load_unet(copy)
    names = sorted(p.name for p in weights.cache_file("0" * 64).parent.glob("*.safetensors"))
    assert len(names) == 2, names


def test_an_unreadable_onnx_file_is_refused_with_what_to_reinstall(tmp_path):
    bad = tmp_path / weights.ONNX_NAME
    bad.write_bytes(b"this is not an onnx model")
    with pytest.raises(ModelUnavailable, match=r"^model: builtin:terrain's weights file .* cannot be read .*"
                                               r"pip install --force-reinstall adaptive-terrain-diffusion"):
        weights.load_unet(bad)


@pytest.mark.parametrize("change", ["renamed", "reshaped"])
def test_a_graph_whose_names_or_shapes_do_not_match_is_refused(tmp_path, change):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(weights.onnx_path()))
    for tensor in model.graph.initializer:
        if tensor.name == "network.input_blocks.3.0.emb_layers.1.weight":
            if change == "renamed":
                tensor.name = "network.input_blocks.3.0.emb_layers.9.weight"
            else:
                tensor.CopyFrom(numpy_helper.from_array(np.zeros((32, 128), np.float32), tensor.name))
    bad = tmp_path / weights.ONNX_NAME
    onnx.save(model, str(bad))
    with pytest.raises(ModelUnavailable, match="is not the terrain graph Paradiff knows"):
        weights.load_unet(bad)
    assert not weights.cache_file(weights.file_sha256(bad)).exists()  # nothing half-made is kept


def test_the_cli_exits_3_with_what_to_reinstall_when_the_weights_are_damaged(tmp_path, monkeypatch, capsys):
    from paradiff_gui.cli import main

    bad = tmp_path / weights.ONNX_NAME
    bad.write_bytes(b"\x08\x07broken")
    monkeypatch.setattr(weights, "onnx_path", lambda: bad)
    out = tmp_path / "t.png"
    code = main(["generate", "--size", "128x128", "--steps", "1", "--device", "cpu", "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "reinstall" in err and "Traceback" not in err
    assert not out.exists()


def test_a_module_with_other_shapes_cannot_take_the_weights():
    state = weights.load_unet().state_dict()
    state["input_blocks.0.0.weight"] = torch.zeros(32, 2, 3, 3)
    with pytest.raises(RuntimeError, match="size mismatch"):
        TerrainUNet().load_state_dict(state)


def test_a_missing_package_or_weights_file_says_what_to_install(tmp_path, monkeypatch):
    from importlib.machinery import ModuleSpec

    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailable, match=r"needs the package adaptive-terrain-diffusion \(pip install "
                                               r"adaptive-terrain-diffusion==0.4.2\)"):
        weights.onnx_path()
    empty = ModuleSpec("terrain_diffusion", None, origin=str(tmp_path / "terrain_diffusion" / "__init__.py"))
    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: empty)
    with pytest.raises(ModelUnavailable, match=r"weights are missing .*pip install --force-reinstall"):
        weights.onnx_path()
