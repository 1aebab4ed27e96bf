"""Describing a model without loading it: ``describe_model`` reads small JSON configs, file
sizes or a built-in's declaration; nothing imports diffusers or touches a device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.modelinfo import SD_NATIVE, SD_SCALE, ModelInfo
from ..core.request import SAMPLERS
from .flow import describe_folder
from .registry import builtin_info


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _weights_size(folder: Path, parts: tuple[str, ...]) -> int | None:
    total = 0
    for part in parts:
        files = list((folder / part).glob("*.safetensors")) if (folder / part).is_dir() else []
        # A folder may hold both fp32 and fp16 variants; count one of each part.
        plain = [f for f in files if ".fp16." not in f.name] or files
        total += sum(f.stat().st_size for f in plain)
    return total or None


def _stored_dtype_bytes(folder: Path) -> int:
    """Bytes per weight of the first tensor in a folder's (non-fp16-variant) safetensors file,
    read from the file's JSON header; 4 when unknown."""
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    plain = [f for f in files if ".fp16." not in f.name] or files
    if not plain:
        return 4
    try:
        with plain[0].open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(min(n, 1 << 24)))
    except (OSError, ValueError):
        return 4
    dtypes = [v.get("dtype") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    return {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}.get(dtypes[0] if dtypes else "", 4)


def _from_flow_folder(model: str, folder: Path, info: dict[str, Any]) -> ModelInfo:
    """A FLUX or SD3 folder (models/flow.describe_folder), with its weights' size on disk: the
    transformer and the VAE on the device, the text encoders on the host (flow.encoders_on)."""
    transformer = _weights_size(folder, ("transformer",))
    on_device = _weights_size(folder, ("transformer", "vae"))
    return ModelInfo(
        id=model, **info,
        weight_bytes=on_device, transformer_bytes=transformer,
        host_weight_bytes=_weights_size(folder, ("text_encoder", "text_encoder_2", "text_encoder_3")) or 0,
        weight_dtype_bytes=_stored_dtype_bytes(folder / "transformer"),
    )


def _from_folder(model: str, folder: Path) -> ModelInfo:
    described = describe_folder(folder)
    if described is not None:
        return _from_flow_folder(model, folder, described["info"])
    index = _read_json(folder / "model_index.json")
    unet = _read_json(folder / "unet" / "config.json")
    vae = _read_json(folder / "vae" / "config.json")
    blocks = vae.get("block_out_channels") or [0] * 4
    scale = 2 ** (len(blocks) - 1) if blocks else SD_SCALE
    sample = unet.get("sample_size") or SD_NATIVE // scale
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    sdxl = "text_encoder_2" in index
    kind = "SDXL" if sdxl else "Stable Diffusion"
    widths = unet.get("block_out_channels") or [320]
    return ModelInfo(
        id=model,
        label=f"{folder.name} ({kind})",
        scale=scale,
        native_tile=int(sample) * scale,
        channels=int(unet.get("in_channels", 4)),
        weight_bytes=_weights_size(folder, ("unet", "vae", "text_encoder", "text_encoder_2")),
        weight_dtype_bytes=_stored_dtype_bytes(folder / "unet"),
        unet_channels=int(widths[0]),
    )


def describe_model(model: str) -> ModelInfo:
    """Describe ``model`` (a ``builtin:`` id, a diffusers folder, a .safetensors file or a hub
    id in the local cache) from its configs. Unknown details fall back to SD1.x values."""
    if model.startswith("builtin:"):
        name = model.split(":", 1)[1]
        info = builtin_info(name)
        if info is None:
            return ModelInfo(id=model, label=f"{model} (unknown built-in)")
        fields = {k: v for k, v in info.items() if k in ModelInfo.__dataclass_fields__}
        fields["samplers"] = tuple(fields.get("samplers", SAMPLERS))
        fields["controls"] = tuple(tuple(c) for c in fields.get("controls", ()))
        return ModelInfo(id=model, **{"label": model, **fields})
    path = Path(model).expanduser()
    if path.is_dir():
        return _from_folder(model, path)
    if path.suffix == ".safetensors":
        size = path.stat().st_size if path.is_file() else None
        sdxl = size is not None and size > 5 * 2**30  # SDXL checkpoints are ~6.5 GiB, SD1.x ~2-4
        return ModelInfo(id=model, label=f"{path.name} (single file)", native_tile=1024 if sdxl else SD_NATIVE,
                         weight_bytes=size, weight_dtype_bytes=2 if size and size < 3 * 2**30 else 4,
                         unet_channels=320)
    try:
        from huggingface_hub import try_to_load_from_cache

        index = try_to_load_from_cache(model, "model_index.json")
    except Exception:  # an id the hub library rejects is simply not cached
        index = None
    if isinstance(index, str):
        return _from_folder(model, Path(index).parent)
    return ModelInfo(id=model, label=model, unet_channels=320)
