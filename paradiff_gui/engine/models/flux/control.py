"""FLUX.1 ControlNets (``FluxControlNetModel``, InstantX layout): loaded, checked against the base,
and run per tile batch with each tile's own crop of the control *latents*.

What diffusers' ``FluxControlNetPipeline`` does, tile by tile: the control image (in [-1, 1]) is
VAE-encoded, shifted and scaled like an init image and packed into 2×2-patch tokens like the image
tokens; the ControlNet sees the same tokens, timestep, guidance (when the ControlNet has a
guidance embedding), pooled and text embeddings and positions as the transformer; its block
samples, times ``weight``, go to the transformer as ``controlnet_block_samples`` and
``controlnet_single_block_samples``; several ControlNets' samples are summed; the start/end
range is the SD one (``sd/control.py``: step ``i`` of ``n`` steers while ``start ≤ i/n`` and
``(i+1)/n ≤ end``).

Ours: the control image is encoded once per canvas size (not per tile: a tile's crop of the canvas's
latents is what the tile's share of the picture encodes to, up to the VAE's receptive field at
the crop's edge), and each tile takes its crop in latent px (wrapped plans read across the edge).
The pipeline *samples* the latent distribution with its generator; we take its mean, as the
init image's encode does (a control should not depend on noise; the VAE's spread is tiny).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...core.controlnet_files import describe_controlnet
from ...core.plan import Tile
from ...core.request import GenerationRequest, RequestError
from ..base import ModelUnavailable
from ..control_images import control_map, crop
from ..sd.control import ControlSet

KIND = "FLUX.1"


def load_flux_controlnet(path: str, index: int, dtype: torch.dtype, device: torch.device, transformer: Any) -> Any:
    """A ``FluxControlNetModel`` from a diffusers folder or from its single ``.safetensors`` file
    (diffusers' names, as InstantX and Shakker-Labs publish it: the config is read off the tensors'
    names and shapes, the rotary axes are the base transformer's, and it is checked against
    ``transformer`` before the weights load; a folder is checked once loaded, by ``control_set``).
    A ControlNet for another family is refused by name (exit 2); a layout Paradiff or diffusers
    does not run, or a file that cannot be loaded, raises ModelUnavailable naming it and what
    would work (exit 3)."""
    name = f"controls[{index}].model"
    p = Path(path).expanduser()
    folder = p.is_dir() and (p / "config.json").is_file()
    if not folder and not (p.suffix == ".safetensors" and p.is_file()):
        raise ModelUnavailable(f"{name}: no FLUX.1 ControlNet at {p} ({_WHAT_WORKS})")
    if folder:
        try:
            cls_name = json.loads((p / "config.json").read_text()).get("_class_name", "")
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelUnavailable(f"{name}: could not read {p / 'config.json'} ({exc})") from None
    found = describe_controlnet(p)
    if found is None:
        if folder:
            raise RequestError(name, f"{p.name} is a {cls_name or 'model'}, not a FLUX.1 ControlNet: use a "
                                     "FluxControlNetModel folder")
        raise ModelUnavailable(f"{name}: {p.name} holds no ControlNet tensors Paradiff knows ({_WHAT_WORKS})")
    if found.family != KIND:
        what = "an SD ControlNet" if found.family == "SD" else f"an {found.family} ControlNet"
        raise RequestError(name, f"{p.name} is {what} ({found.layout}), and the model is {KIND}: use a "
                                 "FLUX.1 ControlNet (FluxControlNetModel), or a model of its family")
    if not found.runs:
        what = _LAYOUTS.get(found.layout) or f"an incomplete FluxControlNetModel file ({found.config.get('error')})"
        raise ModelUnavailable(f"{name}: {p.name} is {what}; {_WHAT_WORKS}")
    if not folder:  # its config is whole (read off the tensors): checked before the weights load
        check_base(found.config, transformer, index, path)
    try:
        with warnings.catch_warnings():  # diffusers 0.42's own FluxControlNetModel uses its deprecated FluxPosEmbed
            warnings.filterwarnings("ignore", message=".*FluxPosEmbed.*", category=FutureWarning)
            net = _from_pretrained(p, dtype) if folder else _from_file(p, found.config, transformer, dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelUnavailable(f"{name}: could not load {p.name} as a FLUX.1 ControlNet ({first}); {_WHAT_WORKS}") \
            from None
    return net.to(device).eval()


_WHAT_WORKS = ("a FLUX.1 ControlNet in diffusers' FluxControlNetModel layout works, as its folder (config.json + "
               "weights) or its single .safetensors file: InstantX's or Shakker-Labs' single-condition ones")
_LAYOUTS = {
    "union": "a union FLUX.1 ControlNet (control modes), which Paradiff does not run yet",
    "hint": "a FLUX.1 ControlNet that takes the control image as pixels (an input hint block, XLabs' layout), "
            "which Paradiff does not run yet",
    "xlabs": "a FLUX.1 ControlNet in XLabs' own format (BFL's tensor names), which diffusers 0.42 cannot load",
}


def _from_pretrained(p: Path, dtype: torch.dtype) -> Any:
    from diffusers import FluxControlNetModel

    return FluxControlNetModel.from_pretrained(str(p), torch_dtype=dtype, local_files_only=True)


def _from_file(p: Path, config: dict[str, Any], transformer: Any, dtype: torch.dtype) -> Any:
    """diffusers 0.42 has no ``from_single_file`` for FLUX ControlNets: the model is built from the
    config the tensors imply (on the meta device: no memory), and the file's tensors are assigned."""
    from diffusers import FluxControlNetModel
    from safetensors.torch import load_file

    config = {**config, "axes_dims_rope": tuple(transformer.config.axes_dims_rope)}
    with torch.device("meta"):
        net = FluxControlNetModel.from_config(config)
    state = {k: v.to(dtype) for k, v in load_file(str(p)).items()}
    net.load_state_dict(state, strict=True, assign=True)
    return net


def check_base(config: Any, transformer: Any, index: int, path: str) -> None:
    """Refuse a FLUX ControlNet (its config) whose token and text widths do not fit the transformer."""
    tc = transformer.config
    keys = ("in_channels", "joint_attention_dim", "pooled_projection_dim", "attention_head_dim",
            "num_attention_heads")
    bad = [k for k in keys if config.get(k) != tc.get(k)]
    if bad:
        raise RequestError(f"controls[{index}].model",
                           f"{Path(path).name} does not fit this {KIND} transformer ({bad[0]}: {config.get(bad[0])} "
                           f"vs {tc.get(bad[0])}): use a ControlNet made for this model")


@dataclass
class _Unit:
    net: Any
    pixels: np.ndarray  # (H, W, 3) uint8: the control map at canvas size (image px)
    weight: float
    start: float
    end: float
    latents: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # per canvas size (latent px)


class FluxControlSet(ControlSet):
    """The run's FLUX ControlNets with their encoded maps, and where in the schedule the loop is
    (``begin_step``/``scale_now`` as for SD; ``canvas_hw`` in latent px, hence scale 1)."""

    def __init__(self, units: list[_Unit], den: Any, guidance: float) -> None:
        super().__init__([], 1, den.device, den.dtype)
        self._units = units
        self.den = den
        self.guidance = guidance  # the ControlNet's guidance embedding takes the request's (as the pipeline)
        h, w = units[0].pixels.shape[:2]
        self.canvas_hw = (h // den.scale, w // den.scale)

    @property
    def units(self) -> list[_Unit]:  # type: ignore[override]
        return self._units

    def begin_step(self, plan: Any, step: int, total: int) -> None:
        self.step, self.total = step, total
        self.canvas_hw = (plan.height, plan.width)

    def latents_at(self, unit: _Unit, h: int, w: int) -> torch.Tensor:
        """The map's latents for a canvas of (h, w) latent px, encoded once per size (the global
        context's small pass takes a resized map)."""
        if (h, w) not in unit.latents:
            from PIL import Image

            a = unit.pixels
            sh, sw = h * self.den.scale, w * self.den.scale
            if a.shape[:2] != (sh, sw):
                a = np.asarray(Image.fromarray(a).resize((sw, sh), Image.Resampling.LANCZOS))
            z = self.den.encode(np.asarray(a, dtype=np.float32) / 255.0, lambda _d, _n: None)
            unit.latents[(h, w)] = z.to(self.den.device, self.den.dtype)
        return unit.latents[(h, w)]

    def samples(self, tiles: Sequence[Tile], call: Any) -> dict[str, Any]:
        """The transformer's extra keyword arguments for this batch: the summed block samples of
        each ControlNet on each tile's crop, or nothing when none steers this step. ``call(net,
        cond, scale)`` runs one ControlNet with the batch's own inputs."""
        double = single = None
        for unit in self.units:
            w = self.scale_now(unit)
            if w == 0.0:  # diffusers runs it at scale 0: samples of exactly zero
                continue
            cond = crop(self.latents_at(unit, *self.canvas_hw), tiles, 1)  # latent px
            d, s = call(unit.net, cond, w)
            double = list(d) if double is None else [a + b for a, b in zip(double, d, strict=True)]
            single = list(s) if single is None else [a + b for a, b in zip(single, s, strict=True)]
        if double is None:
            return {}
        # (A ControlNet without single blocks gives none: the transformer takes None, not an empty list.)
        return {"controlnet_block_samples": double or None, "controlnet_single_block_samples": single or None,
                "controlnet_blocks_repeat": False}


def control_set(den: Any, request: GenerationRequest, cache: dict[str, Any]) -> FluxControlSet | None:
    """The request's FLUX ControlNets (loaded once per base model, kept in ``cache``) with their maps."""
    if not request.controls:
        return None
    units = []
    layers = None
    for i, c in enumerate(request.controls):
        key = str(Path(c.model).expanduser().resolve())
        if key not in cache:
            cache[key] = load_flux_controlnet(c.model, i, den.dtype, den.device, den.transformer)
        net = cache[key]
        check_base(net.config, den.transformer, i, c.model)
        shape = (net.config.num_layers, net.config.num_single_layers)
        if layers is not None and shape != layers:  # their samples are summed block by block
            raise RequestError(f"controls[{i}].model", f"{Path(c.model).name} has {shape[0]}+{shape[1]} blocks and "
                                                       f"controls[0] {layers[0]}+{layers[1]}: several FLUX.1 "
                                                       "ControlNets must have the same blocks")
        layers = shape
        pixels, _ = control_map(request, i)
        units.append(_Unit(net, pixels, c.weight, c.start, c.end))
    return FluxControlSet(units, den, request.guidance)
