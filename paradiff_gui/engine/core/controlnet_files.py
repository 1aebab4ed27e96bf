"""What a ControlNet on disk is, from its ``config.json`` or its ``.safetensors`` header alone
(names and shapes, no tensors, no torch): which base family it steers, in which layout, and —
for FLUX.1 — the ``FluxControlNetModel`` config its tensors imply.

Used by the ControlNet finder (models/sd/control.py), the loaders (models/sd/control.py,
models/flux/control.py: refusals by name before anything loads) and the memory planner
(runtime/memory.py: a FLUX ControlNet's block count). Plain data, stdlib only.

FLUX.1 ControlNets come in these layouts:

- ``instantx``: diffusers' ``FluxControlNetModel`` names (InstantX, Shakker-Labs single-condition
  and Union-Pro-2.0, which dropped the control modes): the control image enters as VAE latents.
  Paradiff runs them, as a diffusers folder or as the folder's single weight file;
- ``union``: the same with a control-mode embedding (``num_mode``: InstantX / Shakker-Labs Union):
  not run yet (the mode per control is not part of a request);
- ``hint``: diffusers names with an ``input_hint_block`` (XLabs converted to diffusers): the
  control image enters as pixels through a small CNN; not run yet;
- ``xlabs``: XLabs' own files (BFL names: ``double_blocks.N.img_attn.qkv``, ``pos_embed_input``):
  diffusers 0.42 has no loader for them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .lora import safetensors_header

SD, FLUX, SD3 = "SD", "FLUX.1", "SD3"
_SD_FILE_KEYS = ("controlnet_cond_embedding.", "control_model.input_hint_block.")  # diffusers / original names
_FLUX_CLASS = "FluxControlNetModel"
_SD_CLASSES = ("ControlNetModel", "ControlNetUnionModel", "ControlNetXSAdapter")


@dataclass(frozen=True)
class ControlNetFile:
    """A ControlNet found on disk. ``family``: SD, FLUX.1 or SD3; ``layout``: for SD the class
    name (``ControlNetModel``…) or ``single file``; for FLUX.1 one of the layouts above.
    ``config``: a FLUX.1 ControlNet's ``FluxControlNetModel`` arguments (from its config.json,
    or implied by a single file's tensor names and shapes; without ``axes_dims_rope``, which no
    tensor carries — the base transformer's is taken)."""

    family: str
    layout: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def runs(self) -> bool:
        """Whether Paradiff runs it (SD: a ``ControlNetModel``; FLUX.1: the InstantX layout)."""
        return self.layout in ("ControlNetModel", "single file", "instantx")

    @property
    def flux_blocks(self) -> int:
        """A FLUX.1 ControlNet's double + single blocks: how many block samples it hands the
        transformer (0 when not known)."""
        return int(self.config.get("num_layers") or 0) + int(self.config.get("num_single_layers") or 0)


def _indices(keys: list[str], prefix: str) -> int:
    """How many ``prefix.N.`` blocks the names have."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return len({m.group(1) for k in keys if (m := pattern.match(k))})


def _flux_layout(config_or_keys: dict[str, Any] | list[str]) -> str:
    if isinstance(config_or_keys, dict):
        if config_or_keys.get("num_mode") is not None:
            return "union"
        return "hint" if config_or_keys.get("conditioning_embedding_channels") is not None else "instantx"
    keys = config_or_keys
    if "controlnet_mode_embedder.weight" in keys:
        return "union"
    return "hint" if any(k.startswith("input_hint_block.") for k in keys) else "instantx"


def flux_config(header: dict[str, Any]) -> dict[str, Any]:
    """The ``FluxControlNetModel`` arguments a diffusers-named FLUX.1 ControlNet file implies (its
    tensor names and shapes); raises ValueError naming a tensor it needs but lacks."""
    keys = [k for k in header if k != "__metadata__"]

    def shape(name: str) -> list[int]:
        entry = header.get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
            raise ValueError(f"no tensor {name}")
        return entry["shape"]

    double, single = _indices(keys, "transformer_blocks"), _indices(keys, "single_transformer_blocks")
    inner, in_channels = shape("x_embedder.weight")
    head = shape("transformer_blocks.0.attn.norm_q.weight" if double else
                 "single_transformer_blocks.0.attn.norm_q.weight")[0]
    config: dict[str, Any] = {
        "patch_size": 1, "in_channels": in_channels, "num_layers": double, "num_single_layers": single,
        "attention_head_dim": head, "num_attention_heads": inner // head,
        "joint_attention_dim": shape("context_embedder.weight")[1],
        "pooled_projection_dim": shape("time_text_embed.text_embedder.linear_1.weight")[1],
        "guidance_embeds": any(k.startswith("time_text_embed.guidance_embedder.") for k in keys),
    }
    if "controlnet_mode_embedder.weight" in header:
        config["num_mode"] = shape("controlnet_mode_embedder.weight")[0]
    if any(k.startswith("input_hint_block.") for k in keys):
        config["conditioning_embedding_channels"] = 16  # diffusers' only value (its hint block's output)
    return config


def describe_controlnet(path: str | Path) -> ControlNetFile | None:
    """What ``path`` (a diffusers folder or a ``.safetensors`` file) is as a ControlNet; None when
    it is not one, cannot be read, or is neither."""
    p = Path(path).expanduser()
    if p.is_dir():
        try:
            config = json.loads((p / "config.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(config, dict):
            return None
        cls = config.get("_class_name", "")
        if cls == _FLUX_CLASS:
            return ControlNetFile(FLUX, _flux_layout(config), config)
        if cls in _SD_CLASSES:
            return ControlNetFile(SD, cls)
        if cls == "SD3ControlNetModel":
            return ControlNetFile(SD3, cls)
        return None
    if p.suffix != ".safetensors" or not p.is_file():
        return None
    try:
        header = safetensors_header(p)
    except (OSError, ValueError):
        return None
    keys = [k for k in header if k != "__metadata__"]
    if any(k.startswith(_SD_FILE_KEYS) for k in keys):
        return ControlNetFile(SD, "single file")
    if "controlnet_x_embedder.weight" in header:  # diffusers' FluxControlNetModel names
        try:
            return ControlNetFile(FLUX, _flux_layout(keys), flux_config(header))
        except (ValueError, TypeError, IndexError) as exc:
            return ControlNetFile(FLUX, "incomplete", {"error": str(exc) or type(exc).__name__})
    if any(k.startswith("double_blocks.") for k in keys) and any(k.startswith("controlnet_blocks.") for k in keys):
        return ControlNetFile(FLUX, "xlabs")
    return None
