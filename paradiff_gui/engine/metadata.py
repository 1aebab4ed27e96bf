"""Image files with their recipe: PNG text chunks, atomic writes, and reading requests back.

A PNG written by Paradiff carries two text chunks:

- ``parameters``: the A1111-style summary other tools read (prompt, ``Negative prompt:``, then
  ``Steps: …, Sampler: …, CFG scale: …, Seed: …, Size: …, Model: …`` plus the tile grid);
- ``paradiff``: JSON with the exact request (``GenerationRequest.to_dict``), the tile plan and
  run info; ``--request IMAGE.png`` replays it bit for bit.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from .. import __version__
from .plan import TilePlan
from .request import GenerationRequest, RequestError
from .schedulers import DISPLAY

PARADIFF_KEY = "paradiff"
PARAMETERS_KEY = "parameters"
MAX_METADATA_BYTES = 1 << 20  # a recipe is a few kB; refuse anything absurd before parsing it


def parameters_text(request: GenerationRequest, plan: TilePlan, model_name: str) -> str:
    """The A1111-style ``parameters`` summary."""
    overlaps = [o for o in plan.actual_overlap if o is not None]
    fields = [
        f"Steps: {request.steps}",
        f"Sampler: {DISPLAY[request.sampler]}",
        f"CFG scale: {request.guidance:g}",
        f"Seed: {request.seed}",
        f"Size: {request.width}x{request.height}",
        f"Model: {model_name}",
        f"Tile grid: {plan.rows}x{plan.cols}",
        f"Tile size: {plan.tile_w * plan.scale}x{plan.tile_h * plan.scale}",
        f"Tile overlap: {min(overlaps) * plan.scale if overlaps else 0}",
        f"Fusion: {request.fusion}",
        f"Version: Paradiff {__version__}",
    ]
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def recipe(request: GenerationRequest, plan: TilePlan, info: dict[str, Any]) -> dict[str, Any]:
    return {"version": __version__, "request": request.to_dict(), "plan": plan.to_dict(), "info": info}


def atomic_write(path: str | os.PathLike[str], write: Any) -> Path:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it into place.

    A crash or Ctrl-C mid-write leaves the target untouched (an older file of that name
    survives); the temporary file is removed on any error.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def save_png(path: str | os.PathLike[str], image: np.ndarray, request: GenerationRequest, plan: TilePlan,
             info: dict[str, Any]) -> Path:
    """Write ``image`` as PNG with both metadata chunks, atomically."""
    meta = PngImagePlugin.PngInfo()
    meta.add_itxt(PARAMETERS_KEY, parameters_text(request, plan, info.get("model_name", request.model)))
    meta.add_itxt(PARADIFF_KEY, json.dumps(recipe(request, plan, info), ensure_ascii=False))
    pil = Image.fromarray(image)
    return atomic_write(path, lambda f: pil.save(f, format="PNG", pnginfo=meta))


def read_recipe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``paradiff`` metadata of an image made by Paradiff (parsed as data, size-limited)."""
    p = Path(path)
    try:
        with Image.open(p) as im:  # reads headers and text chunks, not the pixels
            text = im.info.get(PARADIFF_KEY)
    except FileNotFoundError:
        raise RequestError("request", f"no such file {p}") from None
    except (OSError, Image.DecompressionBombError) as exc:
        raise RequestError("request", f"{p} is not a readable image ({exc})") from None
    if not text:
        raise RequestError("request", f"{p} has no Paradiff metadata (was it made by Paradiff?)")
    if len(text.encode("utf-8", "replace")) > MAX_METADATA_BYTES:
        raise RequestError("request", f"{p}: the Paradiff metadata is larger than {MAX_METADATA_BYTES} bytes")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError("request", f"{p}: the Paradiff metadata is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("request"), dict):
        raise RequestError("request", f"{p}: the Paradiff metadata holds no request")
    return data


def load_request(path: str | os.PathLike[str]) -> GenerationRequest:
    """A request from a ``.json`` file (a request, or a Paradiff recipe) or a Paradiff image."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise RequestError("request", f"cannot read {p} ({exc.strerror or exc})") from None
        if len(raw) > MAX_METADATA_BYTES:
            raise RequestError("request", f"{p} is larger than {MAX_METADATA_BYTES} bytes; not a request file")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError("request", f"{p} is not valid JSON ({exc})") from None
        if isinstance(data, dict) and isinstance(data.get("request"), dict):
            data = data["request"]
        return GenerationRequest.from_dict(data)
    return GenerationRequest.from_dict(read_recipe(p)["request"])


def save_request(path: str | os.PathLike[str], request: GenerationRequest) -> Path:
    data = (request.to_json() + "\n").encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))
