"""Image files with their recipe: PNG text chunks, atomic writes, and reading requests back.

A PNG written by Paradiff carries two text chunks:

- ``parameters``: the A1111-style summary other tools read (prompt, ``Negative prompt:``, then
  ``Steps: …, Sampler: …, CFG scale: …, Seed: …, Size: …, Model: …`` plus the tile grid);
- ``paradiff``: JSON with the exact request (``GenerationRequest.to_dict``), the tile plan and
  run info; ``--request IMAGE.png`` replays it bit for bit.

TIFF, JPEG and WebP files (written by :mod:`.export`) carry the same JSON in the TIFF/EXIF
``ImageDescription`` tag; :func:`read_recipe` finds it in all four.

The plan's tile rectangles are by far the largest part of a recipe. Where the whole recipe would
not fit (more than :data:`MAX_METADATA_BYTES`, or JPEG's 64 KiB EXIF segment) the plan is stored
without ``tiles`` but with its row and column starts and tile size, and :func:`read_recipe` puts
the same rectangles back, so readers always see ``plan["tiles"]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from ... import __version__
from ..core.plan import TilePlan
from ..core.request import SAMPLER_LABELS, GenerationRequest, RequestError
from . import partials

PARADIFF_KEY = "paradiff"
PARAMETERS_KEY = "parameters"
MAX_METADATA_BYTES = 1 << 20  # a recipe is a few kB; refuse anything absurd before parsing it
# Rebuilding a tile list this long takes ~100 MB of Python lists; a grid needs at most 64x64 tiles and
# a 64 px tile on the largest canvas ~1366x1366, so anything beyond is a broken or hostile file.
MAX_REBUILT_TILES = 1 << 21
SOFTWARE = f"Paradiff {__version__}"
EXIF_IMAGE_DESCRIPTION = 0x010E  # TIFF/EXIF tag 270, where non-PNG files keep the recipe JSON


def parameters_text(request: GenerationRequest, plan: TilePlan, model_name: str,
                    loras: list[dict[str, Any]] | None = None) -> str:
    """The A1111-style ``parameters`` summary; ``loras`` (the run's ``info["loras"]``) adds A1111's
    ``Lora hashes: "name: hash, …"`` (a hash: the first 12 hex digits of the file's sha256)."""
    overlaps = [o for o in plan.actual_overlap if o is not None]
    fields = [
        f"Steps: {request.steps}",
        f"Sampler: {SAMPLER_LABELS[request.sampler]}",
        f"CFG scale: {request.guidance:g}",
        f"Seed: {request.seed}",
        f"Size: {request.width}x{request.height}",
        f"Model: {model_name}",
        f"Tile grid: {plan.rows}x{plan.cols}",
        f"Tile size: {plan.tile_w * plan.scale}x{plan.tile_h * plan.scale}",
        f"Tile overlap: {min(overlaps) * plan.scale if overlaps else 0}",
        f"Fusion: {request.fusion}",
    ]
    if loras:
        listed = ", ".join(f"{lo['name']}: {lo['sha256'][:12]}" for lo in loras)
        fields.append(f'Lora hashes: "{listed}"')
    fields.append(f"Version: Paradiff {__version__}")
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def recipe(request: GenerationRequest, plan: TilePlan, info: dict[str, Any], *, tiles: bool = True) -> dict[str, Any]:
    """The ``paradiff`` metadata; ``tiles=False`` gives the plan in its compact form (see the module docs)."""
    data = request.to_dict()
    # The run found each LoRA's file and hashed it: the recipe keeps the digest, so a replay finds
    # the LoRA by it in the model folders when the path no longer holds it (models/lora.py).
    for entry, ran in zip(data["loras"], info.get("loras") or (), strict=False):
        entry["sha256"] = entry["sha256"] or ran.get("sha256")
    return {"version": __version__, "request": data, "plan": _plan_dict(plan, tiles), "info": info}


def recipe_json(request: GenerationRequest, plan: TilePlan, info: dict[str, Any], *, ascii: bool = False) -> str:
    """:func:`recipe` as JSON; compact (no tile list) when the full text would pass ``MAX_METADATA_BYTES``.

    ``ascii=True`` escapes non-ASCII characters, for TIFF/EXIF ``ASCII`` tags: Pillow writes those
    with ``encode("ascii", "replace")``, which would turn every ``é`` into ``?``.
    """
    text = json.dumps(recipe(request, plan, info), ensure_ascii=ascii)
    if len(text.encode("utf-8")) > MAX_METADATA_BYTES:
        text = json.dumps(recipe(request, plan, info, tiles=False), ensure_ascii=ascii)
    return text


def _plan_dict(plan: TilePlan, tiles: bool) -> dict[str, Any]:
    if tiles:
        return plan.to_dict()
    s = plan.scale
    # Every tile of a plan has one size and sits at (row start, col start), so these rebuild all rects.
    return {
        "rows": plan.rows,
        "cols": plan.cols,
        "scale": s,
        "tile_width": plan.tile_w * s,  # image px
        "tile_height": plan.tile_h * s,  # image px
        "row_starts": [y * s for y in plan.row_starts],  # image px
        "col_starts": [x * s for x in plan.col_starts],  # image px
        **({"wrap": plan.wrap} if plan.wrap != "none" else {}),
    }


def _rebuilt_tiles(plan: Any, p: Path) -> list[list[int]]:
    """The ``(x0, y0, x1, y1)`` image-px rects of a compact plan dict, in ``TilePlan.to_dict`` order."""

    def count(name: str) -> int:
        v = plan.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise RequestError("request", f"{p}: the Paradiff metadata's plan has no valid {name!r}")
        return v

    def starts(name: str, n: int) -> list[int]:
        v = plan.get(name)
        if not isinstance(v, list) or len(v) != n or not all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
            raise RequestError("request", f"{p}: the Paradiff metadata's plan has no valid {name!r}")
        return v

    if not isinstance(plan, dict):
        raise RequestError("request", f"{p}: the Paradiff metadata holds no tile plan")
    rows, cols = count("rows"), count("cols")
    if rows * cols > MAX_REBUILT_TILES:
        raise RequestError("request", f"{p}: the Paradiff metadata's plan has {rows}x{cols} tiles, "
                                      f"more than the {MAX_REBUILT_TILES} Paradiff reads")
    tw, th = count("tile_width"), count("tile_height")
    ys, xs = starts("row_starts", rows), starts("col_starts", cols)
    return [[x, y, x + tw, y + th] for y in ys for x in xs]


def png_info(request: GenerationRequest, plan: TilePlan, info: dict[str, Any]) -> PngImagePlugin.PngInfo:
    """The two PNG text chunks, ``parameters`` and ``paradiff``."""
    meta = PngImagePlugin.PngInfo()
    meta.add_itxt(PARAMETERS_KEY, parameters_text(request, plan, info.get("model_name", request.model),
                                                  info.get("loras")))
    meta.add_itxt(PARADIFF_KEY, recipe_json(request, plan, info))
    return meta


def atomic_write(path: str | os.PathLike[str], write: Any) -> Path:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it into place.

    A crash or Ctrl-C mid-write leaves the target untouched (an older file of that name
    survives); the temporary file is removed on any error, and after a kill at the next start.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    # A note in the journal while it writes: if the process is killed here, the next start
    # removes the temporary file (partials.sweep).
    with partials.noted(tmp):
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
    meta = png_info(request, plan, info)
    pil = Image.fromarray(image)
    return atomic_write(path, lambda f: pil.save(f, format="PNG", pnginfo=meta))


_PILLOW_LIMIT_LOCK = threading.RLock()


@contextlib.contextmanager
def pillow_pixel_limit(limit: int | None) -> Iterator[None]:
    """Run a block with Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) set to ``limit``.

    Paradiff's own images pass Pillow's default limit (~89 megapixels; 16384² is 268), and above
    twice that Pillow refuses to open them at all. The limit is one process-wide variable, so it
    is changed under a lock (nested use is fine) and put back on the way out; another thread
    opening an image meanwhile sees ``limit``. Callers check the image size themselves.
    """
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _embedded_recipe(im: Image.Image) -> str | None:
    """The recipe text of an opened image: PNG text chunk, else TIFF/EXIF ImageDescription."""
    text = im.info.get(PARADIFF_KEY)
    if text or im.format == "PNG":
        # A PNG's EXIF may sit after the pixel data, and Pillow decodes all pixels to reach it; ours
        # never has one (its text chunks come first), and a foreign PNG must not be decoded here.
        return text
    desc = im.getexif().get(EXIF_IMAGE_DESCRIPTION)
    if isinstance(desc, bytes):
        desc = desc.decode("latin-1")
    # Cameras and editors put their own captions here ("OLYMPUS DIGITAL CAMERA"); ours is a JSON object.
    if isinstance(desc, str) and desc.lstrip().startswith("{"):
        return desc
    return None


def read_recipe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``paradiff`` metadata of an image made by Paradiff (parsed as data, size-limited).

    Reads PNG, TIFF, JPEG and WebP. A compact plan (stored without its tile list, see the module
    docs) comes back with ``plan["tiles"]`` rebuilt, so callers always see the tile rects.
    """
    p = Path(path)
    try:
        # Only headers and metadata are read, never the pixels, so no size limit is needed here
        # (WebP's parser sees the whole file, and WebP is at most 16383² by its format).
        with pillow_pixel_limit(None), Image.open(p) as im:
            text = _embedded_recipe(im)
    except FileNotFoundError:
        raise RequestError("request", f"no such file {p}") from None
    except OSError as exc:
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
    plan = data.get("plan")
    if isinstance(plan, dict) and "tiles" not in plan:
        data["plan"] = {**plan, "tiles": _rebuilt_tiles(plan, p)}
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
