"""What a model is, learnt without loading it, and what a request will cost.

The GUI draws the tile plan, shows the right controls and estimates time and memory while the
user types, long before any weights are loaded. Everything here reads small JSON configs or
file sizes; nothing imports diffusers or touches a device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .denoisers import builtin_info
from .plan import TilePlan
from .request import SAMPLERS, GenerationRequest

# SD VAEs downsample by 8 and were trained on 512² (SD1.x), 768² (SD2.x) or 1024² (SDXL).
_SD_SCALE = 8
_SD_NATIVE = 512


@dataclass(frozen=True)
class ModelInfo:
    """A model as the GUI and the estimator see it."""

    id: str
    label: str
    scale: int = _SD_SCALE  # image px per latent px
    native_tile: int = _SD_NATIVE  # image px
    fixed_tile: bool = False  # the model only accepts tiles of native_tile
    text: bool = True  # conditioned on a prompt
    guidance: bool = True  # classifier-free guidance applies (2 views per tile when > 1)
    channels: int = 4  # latent channels
    samplers: tuple[str, ...] = SAMPLERS
    output: str = "rgb"  # "rgb" (8-bit colour) or "height" (16-bit single channel)
    controls: tuple[tuple[str, str, int, int, int], ...] = ()  # (extra key, label, min, max, default)
    weight_bytes: int | None = None  # on disk, in the stored precision; None when unknown
    weight_dtype_bytes: int = 4  # bytes per stored weight (fp32 checkpoints: 4, fp16 ones: 2)
    unet_channels: int | None = None  # the UNet's base width (320 for SD1.5/2.x, 320 for SDXL)
    # Measured activations of one view: bytes per tile px per dtype byte (None: a rule of thumb).
    view_bytes_per_px: int | None = None
    seconds_per_view: dict[str, float] = field(default_factory=dict)  # device type -> prior

    def plan(self, request: GenerationRequest) -> TilePlan:
        return TilePlan.for_request(request, self.scale, self.native_tile)


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


def _from_folder(model: str, folder: Path) -> ModelInfo:
    index = _read_json(folder / "model_index.json")
    unet = _read_json(folder / "unet" / "config.json")
    vae = _read_json(folder / "vae" / "config.json")
    blocks = vae.get("block_out_channels") or [0] * 4
    scale = 2 ** (len(blocks) - 1) if blocks else _SD_SCALE
    sample = unet.get("sample_size") or _SD_NATIVE // scale
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
        return ModelInfo(id=model, label=f"{path.name} (single file)", native_tile=1024 if sdxl else _SD_NATIVE,
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


@dataclass(frozen=True)
class Estimate:
    """What a request will cost, before running it."""

    tiles: int
    views_per_step: int  # model evaluations per step (tiles x 2 with classifier-free guidance)
    evaluations: int  # steps that evaluate the model (second-order samplers evaluate twice)
    seconds: float | None  # None when no speed is known for this model and device yet
    canvas_bytes: int  # host memory for the canvas, its fusion buffers and the decoded image
    weight_bytes: int | None

    @property
    def total_views(self) -> int:
        return self.views_per_step * self.evaluations


def estimate(request: GenerationRequest, info: ModelInfo, seconds_per_view: float | None = None,
             device: str = "cpu") -> Estimate:
    """Views, time and memory of ``request``. ``seconds_per_view`` (measured on this machine)
    wins over the model's prior for ``device``."""
    plan = info.plan(request)
    cfg = 2 if info.guidance and info.text and request.guidance > 1.0 else 1
    views = len(plan) * cfg
    evals = request.steps * (2 if request.sampler == "heun" else 1)
    if request.global_context > 0 and request.fusion != "independent":
        evals *= 2
    if request.jitter:
        # A shifted grid needs up to one more row and column of tiles.
        views = (plan.rows + 1) * (plan.cols + 1) * cfg
    rate = seconds_per_view if seconds_per_view is not None else info.seconds_per_view.get(device)
    seconds = rate * views * evals if rate is not None else None
    from .memory import footprint  # one rule for the canvas buffers (memory imports this module)

    canvas = footprint(request, info, "fp32").canvas
    image = request.width * request.height * (2 if info.output == "height" else 3)
    return Estimate(len(plan), views, evals, seconds, canvas + image, info.weight_bytes)
