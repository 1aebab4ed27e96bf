"""The terrain weights: read once from the bundled ONNX graph, kept as safetensors in the user cache.

Reading uses the ``onnx`` package — the format's reference reader, which handles every way a
tensor can be stored in the protobuf (raw bytes, typed fields, external data); a hand-written
reader would have to get all of them right for a file we only read once per install.

The cache file is named by the ONNX file's sha256 and a format number, so a reinstalled or
changed package (or a change to the conversion) makes a new one. A cache file that cannot be
read, or whose tensors do not match the module's names and shapes, is made again, never trusted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from ..base import ModelUnavailable
from .unet import TerrainUNet

ONNX_NAME = "terrain_consistency_unet_difficulty100.onnx"
PACKAGE = "adaptive-terrain-diffusion==0.4.2"
FORMAT = "1"  # bump when the conversion below changes what it writes
REINSTALL = f"reinstall it: pip install --force-reinstall {PACKAGE}"

log = logging.getLogger(__name__)


def onnx_path() -> Path:
    """The bundled ONNX file, located without importing its package (which loads its own runtime)."""
    spec = importlib.util.find_spec("terrain_diffusion")
    if spec is None or spec.origin is None:
        raise ModelUnavailable(
            f"model: builtin:terrain needs the package adaptive-terrain-diffusion (pip install {PACKAGE}); "
            "it carries the weights, no download at run time")
    path = Path(spec.origin).parent / "weights" / ONNX_NAME
    if not path.is_file():
        raise ModelUnavailable(f"model: builtin:terrain's weights are missing ({path}); {REINSTALL}")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_file(sha256: str) -> Path:
    from platformdirs import user_cache_path

    name = f"terrain-unet-{sha256[:16]}-v{FORMAT}.safetensors"
    return user_cache_path("paradiff", appauthor=False) / "terrain" / name


def load_unet(source: Path | None = None) -> TerrainUNet:
    """A ``TerrainUNet`` (fp32, CPU) with the bundled weights, converted on first use.

    Raises ModelUnavailable (the CLI's exit 3) when the ONNX file is missing, unreadable or not
    the graph this module was written from; the model is either whole or not returned.
    """
    source = source or onnx_path()
    try:
        sha = file_sha256(source)
    except OSError as exc:
        raise ModelUnavailable(f"model: builtin:terrain's weights cannot be read ({exc}); {REINSTALL}") from None
    model = TerrainUNet()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    cached = cache_file(sha)
    state = _read_cache(cached, sha, expected)
    if state is None:
        state = convert(source)
        problem = _mismatch(state, expected)
        if problem:
            raise ModelUnavailable(f"model: {source.name} is not the terrain graph Paradiff knows ({problem}); "
                                   f"{REINSTALL}")
        _write_cache(cached, state, sha)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def _mismatch(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> str | None:
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        return f"missing {missing[:3]}, unexpected {extra[:3]}"
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            return f"{key} has shape {tuple(state[key].shape)}, expected {shape}"
    return None


def _read_cache(path: Path, sha: str, expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor] | None:
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as exc:  # truncated or garbage: make it again
        log.warning("terrain weights cache %s is unreadable (%s); converting again", path, exc)
        return None
    if meta.get("source_sha256") != sha or meta.get("format") != FORMAT:
        log.warning("terrain weights cache %s belongs to another source; converting again", path)
        return None
    problem = _mismatch(state, expected)
    if problem:
        log.warning("terrain weights cache %s does not fit the model (%s); converting again", path, problem)
        return None
    return state


def _write_cache(path: Path, state: dict[str, torch.Tensor], sha: str) -> None:
    """Atomic (the project's atomic_write); a cache that can't be written only costs a conversion
    next time. Imported here: metadata loads diffusers, and this runs once per install."""
    from safetensors.torch import save

    from ...io.metadata import atomic_write

    data = save({k: v.contiguous() for k, v in state.items()},
                metadata={"source_sha256": sha, "format": FORMAT, "source": ONNX_NAME})
    try:
        atomic_write(path, lambda f: f.write(data))
    except OSError as exc:
        log.warning("could not cache the terrain weights in %s (%s); they will be converted again", path, exc)


# -- Conversion -----------------------------------------------------------------------------------

_NORM_OWNERS = {  # the first named convolution after a GroupNorm → that GroupNorm's module name
    "in_layers.2.weight": "in_layers.0",
    "out_layers.3.weight": "out_layers.0",
    "qkv.weight": "norm",
    "out.2.weight": "out.0",
}


def convert(source: Path) -> dict[str, torch.Tensor]:
    """The state dict of ``TerrainUNet`` read from the ONNX graph.

    Convolution and linear weights keep their module names in the graph (``network.…``). The
    GroupNorms were exported as InstanceNormalization on (N, 32, −1) followed by a Mul and an Add
    with unnamed constants: each is named here after the first named convolution its output
    reaches (in_layers.2 → in_layers.0 and so on). The preconditioning constants are read from
    the nodes that use them.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ModelUnavailable("model: converting builtin:terrain's weights needs the onnx package "
                               "(pip install onnx)") from None
    try:
        graph = onnx.load(str(source)).graph
    except Exception as exc:
        raise ModelUnavailable(f"model: builtin:terrain's weights file {source} cannot be read "
                               f"({type(exc).__name__}: {exc}); {REINSTALL}") from None
    init = {t.name: t for t in graph.initializer}

    def array(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(init[name]).copy()).float()

    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def bad(what: str) -> ModelUnavailable:
        return ModelUnavailable(f"model: {source.name} is not the terrain graph Paradiff knows ({what}); {REINSTALL}")

    def only(nodes: list[Any], op: str, where: str) -> Any:
        found = [n for n in nodes if n.op_type == op]
        if len(found) != 1:
            raise bad(f"expected one {op} after {where}, found {len(found)}")
        return found[0]

    def constant(node: Any) -> str:
        names = [i for i in node.input if i in init]
        if len(names) != 1:
            raise bad(f"{node.op_type} {node.name or node.output[0]} has {len(names)} constant inputs")
        return names[0]

    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    if inputs != {"noisy", "sigma", "difficulty"} or outputs != {"denoised"}:
        raise bad(f"inputs {sorted(inputs)}, outputs {sorted(outputs)}")

    state = {name.removeprefix("network."): array(name) for name in init if name.startswith("network.")}

    for node in graph.node:
        if node.op_type != "InstanceNormalization":
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        if abs(eps - 1e-5) > 1e-9 or not (array(node.input[1]) == 1).all() or (array(node.input[2]) != 0).any():
            raise bad(f"InstanceNormalization {node.output[0]} is not a plain group normalisation")
        reshape = only(consumers[node.output[0]], "Reshape", node.output[0])
        mul = only(consumers[reshape.output[0]], "Mul", reshape.output[0])
        add = only(consumers[mul.output[0]], "Add", mul.output[0])
        owner = _first_named_conv(add.output[0], consumers)
        if owner is None:
            raise bad(f"no named convolution follows the normalisation {node.output[0]}")
        module = next((owner.removesuffix(suffix) + short for suffix, short in _NORM_OWNERS.items()
                       if owner.endswith(suffix)), None)
        if module is None:
            raise bad(f"the normalisation {node.output[0]} feeds {owner}")
        module = module.removeprefix("network.")
        if f"{module}.weight" in state:
            raise bad(f"two normalisations map to {module}")
        state[f"{module}.weight"] = array(constant(mul)).reshape(-1)
        state[f"{module}.bias"] = array(constant(add)).reshape(-1)

    # Preconditioning constants, from the nodes that use them.
    by_op: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        by_op[node.op_type].append(node)
    sub = only(consumers["sigma"], "Sub", "sigma")
    state["sigma_min"] = array(constant(sub)).reshape(())
    state["sigma_data"] = array(constant(only(consumers[sub.output[0]], "Mul", sub.output[0]))).reshape(())
    log_node = only(consumers["sigma"], "Log", "sigma")
    state["noise_scale"] = array(constant(only(consumers[log_node.output[0]], "Mul", "log σ"))).reshape(())
    cos = only(by_op["Cos"], "Cos", "the timestep embedding")
    freq_mul = next((n for n in graph.node if cos.input[0] in n.output), None)
    if freq_mul is None or freq_mul.op_type != "Mul":
        raise bad("the timestep embedding's frequencies")
    state["freqs"] = array(constant(freq_mul)).reshape(1, -1)
    clip = only(by_op["Clip"], "Clip", "the output")
    state["clip"] = torch.stack([array(clip.input[1]).reshape(()), array(clip.input[2]).reshape(())])
    # σ_data² appears on its own in c_skip and c_in: it must agree with σ_data.
    pow_sigma = only(consumers["sigma"], "Pow", "sigma")
    sd2 = array(constant(only(consumers[pow_sigma.output[0]], "Add", "σ²")))
    if abs(float(sd2) - float(state["sigma_data"]) ** 2) > 1e-6:
        raise bad(f"σ_data² = {float(sd2)} but σ_data = {float(state['sigma_data'])}")
    return state


def _first_named_conv(start: str, consumers: dict[str, list[Any]]) -> str | None:
    """Breadth-first from ``start``: the weight name of the first Conv with a named weight."""
    queue, seen = [start], {start}
    while queue:
        tensor = queue.pop(0)
        for node in consumers.get(tensor, []):
            if node.op_type == "Conv" and node.input[1].startswith("network."):
                return node.input[1]
            for out in node.output:
                if out not in seen:
                    seen.add(out)
                    queue.append(out)
    return None
