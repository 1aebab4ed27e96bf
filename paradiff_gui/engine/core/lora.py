"""A LoRA in a request: which file, how strongly, and (once a run has read it) its sha256.

Plain data (stdlib only). Applying a LoRA to a model is ``engine/models/lora.py``; this module
also reads a ``.safetensors`` header (a JSON prefix: names, dtypes, shapes, no tensors), so the
memory planner can count a LoRA's weights, and the layers it changes, without torch.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A LoRA's weight multiplies its change to the model (A1111's ``<lora:name:WEIGHT>``). Trained
# LoRAs are used from about -1 to 2; beyond ±4 a picture is noise, so such a value is a typo.
MIN_LORA_WEIGHT, MAX_LORA_WEIGHT = -4.0, 4.0
MAX_LORAS = 16
MAX_HEADER_BYTES = 64 << 20  # safetensors headers are kB to a few MB; refuse anything absurd
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class LoraError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a request. ``sha256`` is the file's digest (lower-case hex) when known: a
    replayed recipe carries it, and the run looks the file up by it when ``path`` is not there."""

    path: str
    weight: float = 1.0
    sha256: str | None = None

    @property
    def name(self) -> str:
        """The file's name without ``.safetensors`` (what A1111 calls a LoRA)."""
        return Path(self.path).stem

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "weight": self.weight, "sha256": self.sha256}


def parse_lora(value: Any, index: int) -> LoraSpec:
    """A :class:`LoraSpec` from a spec, a ``{"path", "weight", "sha256"}`` object, a
    ``[path, weight]`` pair or a path; raises :class:`LoraError` naming ``loras[index]``."""
    field = f"loras[{index}]"
    if isinstance(value, LoraSpec):
        path, weight, sha = value.path, value.weight, value.sha256
    elif isinstance(value, dict):
        unknown = sorted(set(value) - {"path", "weight", "sha256"})
        if unknown:
            raise LoraError(f"{field}.{unknown[0]}", "is not a LoRA field (known: path, weight, sha256)")
        path, weight, sha = value.get("path"), value.get("weight", 1.0), value.get("sha256")
    elif isinstance(value, (list, tuple)) and len(value) in (1, 2):
        path, weight, sha = value[0], value[1] if len(value) == 2 else 1.0, None
    elif isinstance(value, str):
        path, weight, sha = value, 1.0, None
    else:
        raise LoraError(field, f"must be a LoRA file with a weight ({{\"path\": ..., \"weight\": ...}}), got {value!r}")
    if not isinstance(path, str) or not path.strip() or len(path) > 4096:
        raise LoraError(f"{field}.path", f"must be the path of a LoRA .safetensors file, got {path!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
            or not MIN_LORA_WEIGHT <= float(weight) <= MAX_LORA_WEIGHT:  # also NaN
        raise LoraError(f"{field}.weight", f"must be a number from {MIN_LORA_WEIGHT:g} to {MAX_LORA_WEIGHT:g} "
                                           f"({Path(str(path)).name}), got {weight!r}")
    if sha is not None and (not isinstance(sha, str) or not _SHA256.fullmatch(sha)):
        raise LoraError(f"{field}.sha256", f"must be 64 lower-case hex digits or none, got {sha!r}")
    return LoraSpec(path, float(weight), sha)


def parse_loras(values: Any) -> tuple[LoraSpec, ...]:
    if not isinstance(values, (list, tuple)):
        raise LoraError("loras", "must be a list of LoRAs (path and weight)")
    if len(values) > MAX_LORAS:
        raise LoraError("loras", f"at most {MAX_LORAS} LoRAs; got {len(values)}")
    return tuple(parse_lora(v, i) for i, v in enumerate(values))


def parse_lora_arg(text: str) -> tuple[str, float]:
    """``FILE[:WEIGHT]`` (the CLI's ``--lora``) → (path, weight). A Windows drive letter's colon
    is part of the path; only a last ``:NUMBER`` is a weight."""
    path, sep, tail = text.rpartition(":")
    if sep and path and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)\s*", tail):
        return path, float(tail)
    return text, 1.0


def safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file: ``{name: {"dtype", "shape", ...}}`` plus
    ``__metadata__``. Raises ``OSError`` or ``ValueError`` when the file is not one."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("too short to be a .safetensors file")
        (n,) = struct.unpack("<Q", head)
        if not 2 <= n <= MAX_HEADER_BYTES:
            raise ValueError("not a .safetensors file (no valid header)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("not a .safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError("not a .safetensors file (its header is not an object)")
    return header


def _is_down(name: str) -> bool:
    return any(s in name for s in (".lora_A.", ".lora.down.", ".lora_down.", "_lora.down."))


def is_lora_header(header: dict[str, Any]) -> bool:
    """Whether a header's tensor names are a LoRA's (diffusers/PEFT ``lora_A``/``lora_B``,
    Kohya ``lora_down``/``lora_up``, older diffusers ``lora.down``/``lora.up``)."""
    return any(_is_down(k) for k in header if k != "__metadata__")


def lora_pairs(header: dict[str, Any]) -> int:
    """How many down/up pairs (layers, as the file names them) a LoRA header holds."""
    return sum(1 for k in header if k != "__metadata__" and _is_down(k))


# What a file's tensor names say about the model it was made for, first match wins. Kohya's
# sd-scripts names SDXL's UNet after Stability's original one (input_blocks, middle_block) and its
# two text encoders te1/te2, SD 1.x's after diffusers' (down_blocks) with one text encoder (te);
# FLUX.1's transformer after Black Forest Labs' (double_blocks, single_blocks) or diffusers'
# (single_transformer_blocks); SD3's after its MMDiT (joint_blocks). A diffusers-format UNet or
# transformer LoRA without those marks is not guessed (SD 1.x and SDXL share diffusers' names).
_BASES = (
    ("FLUX.1", re.compile(r"(^|[._])(double_blocks|single_blocks|single_transformer_blocks)[._]")),
    ("SD3", re.compile(r"(^|[._])joint_blocks[._]")),
    ("SDXL", re.compile(r"^lora_te2_|^lora_unet_(input_blocks|middle_block|output_blocks)_|(^|\.)text_encoder_2\.")),
    ("SD 1.x/2.x", re.compile(r"^lora_te_|^lora_unet_(down_blocks|mid_block|up_blocks)_")),
)


def lora_base(header: dict[str, Any]) -> str | None:
    """The kind of model a LoRA file was made for, when its tensor names tell (``"SDXL"``,
    ``"FLUX.1"``, ``"SD3"``, ``"SD 1.x/2.x"``); None when they do not."""
    names = [k for k in header if k != "__metadata__"]
    for base, pattern in _BASES:
        if any(pattern.search(k) for k in names):
            return base
    return None


@dataclass(frozen=True)
class LoraSize:
    """What a LoRA file means for memory: its own weights, and the base model's parameters in
    the layers it changes (each a ``down`` (rank, in[, kh, kw]) and ``up`` (out, rank[, 1, 1]) pair)."""

    lora_params: int
    lora_bytes: int  # as stored
    base_params: int  # of the model: parameters of the layers the LoRA changes


def lora_size(path: str | Path) -> LoraSize:
    header = safetensors_header(path)
    params = nbytes = base = 0
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict):
            continue
        shape = [int(s) for s in entry.get("shape", [])]
        count = 1
        for s in shape:
            count *= s
        params += count
        nbytes += count * _DTYPE_BYTES.get(str(entry.get("dtype")), 4)
        if _is_down(name) and len(shape) >= 2:
            up = name.replace(".lora_A.", ".lora_B.").replace(".lora.down.", ".lora.up.") \
                .replace(".lora_down.", ".lora_up.").replace("_lora.down.", "_lora.up.")
            up_shape = header.get(up, {}).get("shape") if isinstance(header.get(up), dict) else None
            if up_shape:
                kernel = 1
                for s in shape[2:]:
                    kernel *= int(s)
                base += int(up_shape[0]) * shape[1] * kernel
    return LoraSize(params, nbytes, base)
