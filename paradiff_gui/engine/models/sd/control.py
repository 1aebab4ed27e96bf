"""ControlNets for the UNet backend (SD 1.x/2.x/XL): loaded, checked against the base model, and
run per tile batch with each tile's own crop of the control map.

What diffusers' ControlNet pipelines do, tile by tile: the ControlNet sees the same scaled latents,
timestep and prompt embeddings as the UNet (both guidance halves get the control image; guess
mode off), its residuals times ``weight`` are added to the UNet's skip connections, several
ControlNets' residuals are summed, and a ControlNet steers step ``i`` of ``n`` only while
``start ≤ i/n`` and ``(i+1)/n ≤ end`` (``control_guidance_start/end``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...core.controlnet_files import describe_controlnet
from ...core.lora import safetensors_header
from ...core.plan import Tile, TilePlan
from ...core.request import GenerationRequest, RequestError
from ..base import ModelUnavailable
from ..control_images import control_map, crop

# Tensor names only a ControlNet has: diffusers' single files, and the original (A1111/lllyasviel) layout.
_CONTROLNET_KEYS = ("controlnet_cond_embedding.", "control_model.input_hint_block.")

_BASES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


def base_name(cross_attention_dim: Any, xl: bool) -> str:
    if xl:
        return "SDXL"
    return _BASES.get(cross_attention_dim, f"a base with cross-attention width {cross_attention_dim}")


def _is_controlnet_folder(folder: Path) -> bool:
    try:
        if json.loads((folder / "config.json").read_text()).get("_class_name") == "ControlNetModel":
            return True
    except (OSError, ValueError, AttributeError):
        return False
    return _runs_on_flux(folder)


def _runs_on_flux(path: Path) -> bool:
    """A FLUX.1 ControlNet that flux/control.py runs (folder or single file)."""
    found = describe_controlnet(path)
    return found is not None and found.family == "FLUX.1" and found.runs


def _is_controlnet_file(path: Path) -> bool:
    try:
        header = safetensors_header(path)
    except (OSError, ValueError):
        return False
    return any(k.startswith(_CONTROLNET_KEYS) for k in header) or _runs_on_flux(path)


def find_controlnets(folders: Sequence[Path] | None = None) -> list[Path]:
    """The ControlNets in the model folders: diffusers folders whose ``config.json`` names a
    ``ControlNetModel`` or a FLUX.1 ``FluxControlNetModel`` Paradiff runs, and ``.safetensors``
    files whose header has such a ControlNet's tensors (core/controlnet_files.py). Only
    configs and headers are read; diffusers pipelines (``model_index.json``) are not walked into."""
    from ..folders import walk_parts

    return [p for p in walk_parts(folders, _is_controlnet_folder) if p.is_dir() or _is_controlnet_file(p)]


def load_controlnet(path: str, index: int, dtype: torch.dtype, device: torch.device) -> Any:
    """A ``ControlNetModel`` from a diffusers folder or a single ``.safetensors`` file. A file that
    cannot be loaded raises ModelUnavailable naming it (exit 3)."""
    from diffusers import ControlNetModel

    name = f"controls[{index}].model"
    p = Path(path).expanduser()
    try:
        if p.is_dir():
            config = p / "config.json"
            if not config.is_file():
                raise ModelUnavailable(f"{name}: {p} is a folder but not a diffusers ControlNet (no config.json)")
            cls_name = json.loads(config.read_text()).get("_class_name", "")
            if cls_name.startswith("Flux"):  # bad input (exit 2), named: it is for another base
                raise RequestError(name, f"{p.name} is a FLUX.1 ControlNet ({cls_name}), and the model is SD: use an "
                                         "SD 1.x/2.x/SDXL ControlNet (ControlNetModel), or a FLUX.1 model")
            if cls_name != "ControlNetModel":
                what = "a union ControlNet, which Paradiff does not run yet" if "Union" in cls_name else \
                    f"a {cls_name or 'model'}, not a ControlNetModel"
                raise ModelUnavailable(f"{name}: {p.name} is {what}; use a single-condition SD/SDXL ControlNet")
            net = ControlNetModel.from_pretrained(str(p), torch_dtype=dtype, local_files_only=True)
        elif p.suffix == ".safetensors" and p.is_file():
            if (found := describe_controlnet(p)) is not None and found.family != "SD":  # for another base (exit 2)
                raise RequestError(name, f"{p.name} is a {found.family} ControlNet, and the model is SD: use an "
                                         "SD 1.x/2.x/SDXL ControlNet, or a model of its family")
            net = ControlNetModel.from_single_file(str(p), torch_dtype=dtype, local_files_only=True)
        else:
            raise ModelUnavailable(f"{name}: no such ControlNet {p} (a diffusers folder or a .safetensors file)")
    except (ModelUnavailable, RequestError):
        raise
    except (OSError, ValueError, KeyError, json.JSONDecodeError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelUnavailable(f"{name}: could not load {p.name} as a ControlNet ({first}); give a diffusers "
                               "ControlNet folder (config.json + weights) or its single .safetensors file") from None
    return net.to(device).eval()


def check_base(net: Any, unet: Any, xl: bool, index: int, path: str) -> None:
    """Refuse a ControlNet made for another base model (its residuals would not fit the UNet)."""
    nc, uc = net.config, unet.config
    net_xl = nc.get("addition_embed_type") == "text_time"
    if (net_xl != xl or nc.get("cross_attention_dim") != uc.get("cross_attention_dim")
            or tuple(nc.get("block_out_channels")) != tuple(uc.get("block_out_channels"))):
        raise RequestError(
            f"controls[{index}].model",
            f"{Path(path).name} is a ControlNet for {base_name(nc.get('cross_attention_dim'), net_xl)}, and the "
            f"model is {base_name(uc.get('cross_attention_dim'), xl)}: use a ControlNet made for "
            f"{base_name(uc.get('cross_attention_dim'), xl)}")


@dataclass
class _Unit:
    net: Any
    canvas: torch.Tensor  # (1, 3, H, W) in [0, 1] on the device: the whole control map, image px
    weight: float
    start: float
    end: float
    sized: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def at(self, h: int, w: int) -> torch.Tensor:
        """The map at another canvas size (global context's small pass), made once."""
        if self.canvas.shape[-2:] == (h, w):
            return self.canvas
        if (h, w) not in self.sized:
            self.sized[(h, w)] = torch.nn.functional.interpolate(
                self.canvas.float(), size=(h, w), mode="bilinear", antialias=True).to(self.canvas.dtype)
        return self.sized[(h, w)]


class ControlSet:
    """The run's ControlNets with their maps, and where in the schedule the loop is."""

    def __init__(self, units: list[_Unit], scale: int) -> None:
        self.units = units
        self.scale = scale
        self.key: Any = None  # what it was made from (the backend reuses it for the same controls)
        self.step, self.total = 0, 1
        self.canvas_hw = units[0].canvas.shape[-2:] if units else (0, 0)

    def begin_step(self, plan: TilePlan, step: int, total: int) -> None:
        self.step, self.total = step, total
        self.canvas_hw = (plan.height * self.scale, plan.width * self.scale)

    def scale_now(self, unit: _Unit) -> float:
        i, n = self.step, self.total
        keep = not (i / n < unit.start or (i + 1) / n > unit.end)
        return unit.weight if keep else 0.0

    def residuals(self, x: torch.Tensor, t: torch.Tensor, tiles: Sequence[Tile], halves: int,
                  **kwargs: Any) -> dict[str, Any]:
        """The UNet's extra keyword arguments for this batch: the summed ControlNet residuals of
        each tile's crop (both guidance halves), or nothing when no ControlNet steers this step."""
        down = mid = None
        for unit in self.units:
            w = self.scale_now(unit)
            if w == 0.0:  # diffusers runs it at scale 0: residuals of exactly zero
                continue
            image = crop(unit.at(*self.canvas_hw), tiles, self.scale)
            image = torch.cat([image] * halves) if halves > 1 else image
            d, m = unit.net(x, t, controlnet_cond=image, conditioning_scale=w, guess_mode=False,
                            return_dict=False, **kwargs)
            down = list(d) if down is None else [a + b for a, b in zip(down, d, strict=True)]
            mid = m if mid is None else mid + m
        if down is None:
            return {}
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def control_set(den: Any, request: GenerationRequest, cache: dict[str, Any]) -> ControlSet | None:
    """The request's ControlNets (loaded once per base model, kept in ``cache``) with their maps."""
    if not request.controls:
        return None
    units = []
    for i, c in enumerate(request.controls):
        key = str(Path(c.model).expanduser().resolve())
        if key not in cache:
            net = load_controlnet(c.model, i, den.dtype, den.device)
            check_base(net, den.unet, den.is_xl, i, c.model)
            cache[key] = net
        else:
            check_base(cache[key], den.unet, den.is_xl, i, c.model)
        pixels, _ = control_map(request, i)
        canvas = torch.from_numpy(np.asarray(pixels, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        units.append(_Unit(cache[key], canvas.to(den.device, den.dtype), c.weight, c.start, c.end))
    return ControlSet(units, den.scale)
