"""ControlNets for the UNet backend (SD 1.x/2.x/XL): loaded, checked against the base model, and
run per tile batch with each tile's own crop of the control map.

What diffusers' ControlNet pipelines do, tile by tile: the ControlNet sees the same scaled latents,
timestep and prompt embeddings as the UNet (both guidance halves get the control image; guess
mode off), its residuals times ``weight`` are added to the UNet's skip connections, several
ControlNets' residuals are summed, and a ControlNet steers step ``i`` of ``n`` only while
``start ≤ i/n`` and ``(i+1)/n ≤ end`` (``control_guidance_start/end``).

A union ControlNet (``ControlNetUnionModel``, SDXL) is what ``StableDiffusionXLControlNetUnionPipeline``
runs: the controls naming it are its conditions, each image with its control type (``mode``) and
its own scale, all in ONE call (its transformer weighs them against each other, so separate calls
summed would be another model). The maps stay on the host as uint8; each tile batch's crops go to
the device per call (control_images.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...core.control import UNION_MODES
from ...core.controlnet_files import describe_controlnet
from ...core.lora import safetensors_header
from ...core.plan import Tile, TilePlan
from ...core.request import GenerationRequest, RequestError
from ..base import ModelUnavailable
from ..control_images import control_map, crop, host_map, resized, upload

# Tensor names only a ControlNet has: diffusers' single files, and the original (A1111/lllyasviel) layout.
_CONTROLNET_KEYS = ("controlnet_cond_embedding.", "control_model.input_hint_block.")
# ... and only a union ControlNet (diffusers' layout, as xinsir ships it).
_UNION_KEYS = ("task_embedding", "control_add_embedding.")
_CLASSES = ("ControlNetModel", "ControlNetUnionModel")

_BASES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


def base_name(cross_attention_dim: Any, xl: bool) -> str:
    if xl:
        return "SDXL"
    return _BASES.get(cross_attention_dim, f"a base with cross-attention width {cross_attention_dim}")


def _is_controlnet_folder(folder: Path) -> bool:
    try:
        if json.loads((folder / "config.json").read_text()).get("_class_name") in _CLASSES:
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
    ``ControlNetModel`` or ``ControlNetUnionModel`` or a FLUX.1 ``FluxControlNetModel`` Paradiff
    runs, and ``.safetensors`` files whose header has such a ControlNet's tensors
    (core/controlnet_files.py). Only configs and headers are read; diffusers pipelines
    (``model_index.json``) are not walked into."""
    from ..folders import walk_parts

    return [p for p in walk_parts(folders, _is_controlnet_folder) if p.is_dir() or _is_controlnet_file(p)]


def union_modes(path: str) -> tuple[str, ...] | None:
    """The kinds of map a union ControlNet at ``path`` knows (its config's ``num_control_type``, or
    the rows of a file's ``task_embedding``), None for any other ControlNet or an unreadable one
    (the loader names the problem). Reads a config or a header only."""
    p = Path(path).expanduser()
    try:
        if p.is_dir():
            config = json.loads((p / "config.json").read_text())
            if config.get("_class_name") != "ControlNetUnionModel":
                return None
            return UNION_MODES[:int(config.get("num_control_type", 6))]
        header = safetensors_header(p)
        if not any(k.startswith(_UNION_KEYS) for k in header):
            return None
        return UNION_MODES[:int(header["task_embedding"]["shape"][0])]
    except (OSError, ValueError, AttributeError, KeyError, TypeError, IndexError):
        return None


def is_union(path: str) -> bool:
    """Whether ``path`` is a union ControlNet (a folder's config or a file's header says so)."""
    return union_modes(path) is not None


def _load_union_file(p: Path, name: str, dtype: torch.dtype) -> Any:
    """A union ControlNet's single file (e.g. xinsir's ``diffusion_pytorch_model_promax.safetensors``):
    diffusers has no single-file loader for it, but the file is in diffusers' layout, so the
    ``config.json`` beside it builds the model and the file's tensors fill it."""
    from diffusers import ControlNetUnionModel
    from safetensors.torch import load_file

    config = p.parent / "config.json"
    if not config.is_file():
        raise ModelUnavailable(f"{name}: {p.name} is a union ControlNet without its config.json beside it; keep "
                               "the file in its diffusers folder (config.json + weights), or give that folder")
    with torch.device("meta"):  # no weights built only to be overwritten
        net = ControlNetUnionModel.from_config(ControlNetUnionModel.load_config(str(p.parent)))
    net.load_state_dict({k: v.to(dtype) for k, v in load_file(str(p)).items()}, strict=True, assign=True)
    return net


def load_controlnet(path: str, index: int, dtype: torch.dtype, device: torch.device) -> Any:
    """A ``ControlNetModel`` or ``ControlNetUnionModel`` from a diffusers folder or a single
    ``.safetensors`` file. A file that cannot be loaded raises ModelUnavailable naming it (exit 3)."""
    from diffusers import ControlNetModel, ControlNetUnionModel

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
            if cls_name not in _CLASSES:
                raise ModelUnavailable(f"{name}: {p.name} is a {cls_name or 'model'}, not a ControlNetModel; use an "
                                       "SD/SDXL ControlNet (ControlNetModel, or ControlNetUnionModel for SDXL)")
            cls = ControlNetUnionModel if cls_name == "ControlNetUnionModel" else ControlNetModel
            net = cls.from_pretrained(str(p), torch_dtype=dtype, local_files_only=True)
        elif p.suffix == ".safetensors" and p.is_file():
            if (found := describe_controlnet(p)) is not None and found.family != "SD":  # for another base (exit 2)
                raise RequestError(name, f"{p.name} is a {found.family} ControlNet, and the model is SD: use an "
                                         "SD 1.x/2.x/SDXL ControlNet, or a model of its family")
            if is_union(str(p)):
                net = _load_union_file(p, name, dtype)
            else:
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
    if _union(net) and not xl:
        raise RequestError(
            f"controls[{index}].model",
            f"{Path(path).name} is a union ControlNet, made for SDXL, and the model is "
            f"{base_name(uc.get('cross_attention_dim'), xl)}: use it with an SDXL model, or a single-condition "
            f"ControlNet made for {base_name(uc.get('cross_attention_dim'), xl)}")
    net_xl = nc.get("addition_embed_type") == "text_time"
    if (net_xl != xl or nc.get("cross_attention_dim") != uc.get("cross_attention_dim")
            or tuple(nc.get("block_out_channels")) != tuple(uc.get("block_out_channels"))):
        raise RequestError(
            f"controls[{index}].model",
            f"{Path(path).name} is a ControlNet for {base_name(nc.get('cross_attention_dim'), net_xl)}, and the "
            f"model is {base_name(uc.get('cross_attention_dim'), xl)}: use a ControlNet made for "
            f"{base_name(uc.get('cross_attention_dim'), xl)}")


def _union(net: Any) -> bool:
    from diffusers import ControlNetUnionModel

    return isinstance(net, ControlNetUnionModel)


def per_view_union(net: Any) -> None:
    """Make a union ControlNet weigh each view's conditions on their own. Its control transformer
    is an ``nn.MultiheadAttention`` without ``batch_first`` over (batch, conditions, channels): it
    attends across the *batch*. In diffusers' one-picture pipeline the batch is the two guidance
    halves, identical at that point (same image, same latents), so a row attending to its twin
    equals it attending to itself alone; a tile batch holds different tiles, which would steer each
    other. Each (view, condition) token becomes its own length-1 sequence here, which is what the
    pipeline computes for one picture, and a tile's result no longer depends on its batch."""
    if getattr(net, "_paradiff_per_view", False):
        return
    layers = net.transformer_layes
    shape: dict[str, torch.Size] = {}

    def flatten(_module: Any, args: tuple) -> tuple:
        shape["x"] = args[0].shape  # (views, conditions + 1, channels)
        return (args[0].reshape(1, -1, args[0].shape[-1]), *args[1:])

    def restore(_module: Any, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        return out.reshape(shape["x"])

    layers[0].register_forward_pre_hook(flatten)
    layers[-1].register_forward_hook(restore)
    net._paradiff_per_view = True


def check_mode(control: Any, known: tuple[str, ...] | None, index: int, path: str) -> int | None:
    """The ``control_mode`` index of ``control`` for a ControlNet that knows the modes ``known``
    (None: not a union ControlNet, which takes no mode). Refuses a mode the model lacks, a
    ready-made map without a mode, and a mode for a plain ControlNet, each naming
    ``controls[i].mode`` (the app's form says the same under the row)."""
    field_name, file = f"controls[{index}].mode", Path(path).name
    if known is None:
        if control.mode is not None:
            raise RequestError(field_name, f"{file} is a single-condition ControlNet, which takes no mode (only a "
                                           "union ControlNet does): leave the mode unset")
        return None
    mode = control.union_mode
    if mode is None:
        raise RequestError(field_name, f"{file} is a union ControlNet: say which kind of map the image is, one of "
                                       f"{', '.join(known)} (tile and canny preprocessors imply their own)")
    if mode not in known:
        raise RequestError(field_name, f"{file} knows {len(known)} kinds of map ({', '.join(known)}), not {mode}: "
                                       "choose one of those, or a union ControlNet that has it (ProMax has "
                                       "tile and repaint)")
    return UNION_MODES.index(mode)


def union_mode_index(net: Any, control: Any, index: int, path: str) -> int | None:
    """``check_mode`` for a loaded ControlNet."""
    known = UNION_MODES[:int(net.config.num_control_type)] if _union(net) else None
    return check_mode(control, known, index, path)


@dataclass
class _Unit:
    """One control: its map on the host, and how and when it steers."""

    canvas: torch.Tensor  # (1, 3, H, W) uint8 on the host: the whole control map, image px
    weight: float
    start: float
    end: float
    mode: int | None = None  # a union ControlNet's control_mode index
    sized: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def at(self, h: int, w: int) -> torch.Tensor:
        """The map at another canvas size (global context's small pass), made once, on the host."""
        if self.canvas.shape[-2:] == (h, w):
            return self.canvas
        if (h, w) not in self.sized:
            self.sized[(h, w)] = resized(self.canvas, h, w)
        return self.sized[(h, w)]


@dataclass
class _Net:
    """A ControlNet and its units: one call a tile batch. A union ControlNet takes all of its
    units in that call; a plain one has exactly one (the same file twice is two nets, summed)."""

    net: Any
    units: list[_Unit]
    union: bool = False


class ControlSet:
    """The run's ControlNets with their maps, and where in the schedule the loop is."""

    def __init__(self, nets: list[_Net], scale: int, device: torch.device, dtype: torch.dtype) -> None:
        self.nets = nets
        self.scale = scale
        self.device, self.dtype = device, dtype
        self.key: Any = None  # what it was made from (the backend reuses it for the same controls)
        self.step, self.total = 0, 1
        self.canvas_hw = nets[0].units[0].canvas.shape[-2:] if nets else (0, 0)

    @property
    def units(self) -> list[_Unit]:
        return [u for n in self.nets for u in n.units]

    def begin_step(self, plan: TilePlan, step: int, total: int) -> None:
        self.step, self.total = step, total
        self.canvas_hw = (plan.height * self.scale, plan.width * self.scale)

    def scale_now(self, unit: _Unit) -> float:
        i, n = self.step, self.total
        keep = not (i / n < unit.start or (i + 1) / n > unit.end)
        return unit.weight if keep else 0.0

    def _image(self, unit: _Unit, tiles: Sequence[Tile], halves: int) -> torch.Tensor:
        """This batch's crops of ``unit``'s map on the device, both guidance halves."""
        image = upload(crop(unit.at(*self.canvas_hw), tiles, self.scale), self.device, self.dtype)
        return torch.cat([image] * halves) if halves > 1 else image

    def residuals(self, x: torch.Tensor, t: torch.Tensor, tiles: Sequence[Tile], halves: int,
                  **kwargs: Any) -> dict[str, Any]:
        """The UNet's extra keyword arguments for this batch: the summed ControlNet residuals of
        each tile's crop (both guidance halves), or nothing when no ControlNet steers this step."""
        down = mid = None
        for n in self.nets:
            scales = [self.scale_now(u) for u in n.units]
            # A scale of 0 gives residuals of exactly zero — but not for a union ControlNet with
            # several conditions, whose outputs are not scaled at the end: diffusers runs it anyway.
            if len(scales) == 1 and scales[0] == 0.0:
                continue
            images = [self._image(u, tiles, halves) for u in n.units]
            if n.union:
                modes = [u.mode for u in n.units]
                kind = torch.zeros(n.net.config.num_control_type).scatter_(0, torch.tensor(modes), 1)
                d, m = n.net(x, t, controlnet_cond=images, control_type=kind[None].to(x.device, self.dtype)
                             .repeat(len(x), 1), control_type_idx=modes, conditioning_scale=scales,
                             guess_mode=False, return_dict=False, **kwargs)
            else:
                d, m = n.net(x, t, controlnet_cond=images[0], conditioning_scale=scales[0], guess_mode=False,
                             return_dict=False, **kwargs)
            down = list(d) if down is None else [a + b for a, b in zip(down, d, strict=True)]
            mid = m if mid is None else mid + m
        if down is None:
            return {}
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def control_set(den: Any, request: GenerationRequest, cache: dict[str, Any]) -> ControlSet | None:
    """The request's ControlNets (loaded once per base model, kept in ``cache``) with their maps,
    the controls naming one union ControlNet gathered into its one call."""
    if not request.controls:
        return None
    nets: list[_Net] = []
    unions: dict[str, _Net] = {}
    for i, c in enumerate(request.controls):
        key = str(Path(c.model).expanduser().resolve())
        if key not in cache:
            net = load_controlnet(c.model, i, den.dtype, den.device)
            check_base(net, den.unet, den.is_xl, i, c.model)
            cache[key] = net
        else:
            check_base(cache[key], den.unet, den.is_xl, i, c.model)
        mode = union_mode_index(cache[key], c, i, c.model)
        if mode is not None:
            per_view_union(cache[key])
        pixels, _ = control_map(request, i)
        unit = _Unit(host_map(pixels), c.weight, c.start, c.end, mode)
        if mode is None:
            nets.append(_Net(cache[key], [unit]))
        elif key in unions:
            unions[key].units.append(unit)
        else:
            unions[key] = _Net(cache[key], [unit], union=True)
            nets.append(unions[key])
    return ControlSet(nets, den.scale, den.device, den.dtype)
