"""The picture an image-to-image run starts from: read, checked, resized to the canvas.

A colour model gets (H, W, 3) in [0, 1]; a heightmap model (``ModelInfo.output == "height"``)
gets (H, W) in [0, 1] of its 16-bit range, and refuses colour pictures. Pillow resizes (bicubic,
in float, so 16-bit heightmaps keep their depth).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.request import RequestError
from .export import open_image


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file (recorded in the recipe, so a replay can tell whether it starts from the same picture)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _resize(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    if plane.shape == (height, width):
        return plane.astype(np.float32)
    return np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize(
        (width, height), Image.Resampling.BICUBIC), dtype=np.float32)


def image_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(width, height) from the file's header, or None when it cannot be read (the loader says why)."""
    from .export import pillow_pixel_limit

    try:
        with pillow_pixel_limit(None), Image.open(path) as im:
            return im.size
    except OSError:
        return None


def check_init_pixels(pixels: np.ndarray, name: str, output: str) -> None:
    """Refuse pixels (as ``open_image`` reads them) that a model with ``output`` cannot start from:
    shared with the app's Restyle…, which checks a source before its run."""
    if output == "height" and pixels.ndim == 3:
        raise RequestError("init_image", f"{name} is a colour picture; this model starts from a grayscale "
                                         "heightmap (a 16-bit PNG or TIFF, like its own exports)")


def load_init_image(path: str | os.PathLike[str], width: int, height: int, output: str) -> tuple[np.ndarray, list[str]]:
    """``path`` as float32 in [0, 1] at ``width`` x ``height``, and notes for the person (what was
    resized or converted). ``output`` is the model's: "rgb" or "height"."""
    p = Path(path)
    try:
        a = open_image(p)
    except RequestError as exc:
        raise RequestError("init_image", exc.message) from None
    notes: list[str] = []
    top = 65535.0 if a.dtype == np.uint16 else 255.0
    check_init_pixels(a, p.name, output)
    if output == "height":
        if a.dtype == np.uint8:
            notes.append(f"init image {p.name} is 8-bit: its 256 levels are spread over the model's height range")
        planes = [a]
    else:
        planes = [a[..., k] for k in range(3)] if a.ndim == 3 else [a] * 3
    h, w = a.shape[:2]
    if (w, h) != (width, height):
        how = "upscaled" if w * h < width * height else "resized"
        notes.append(f"init image {p.name} ({w}x{h}) {how} to {width}x{height} (bicubic)")
        if abs(w / h - width / height) > 0.01 * width / height:
            notes.append(f"init image {p.name}: its aspect ratio {w / h:.3f} differs from the canvas's "
                         f"{width / height:.3f}, so it is stretched")
    out = np.stack([_resize(pl, width, height) for pl in planes], axis=-1) / top
    out = np.clip(out, 0.0, 1.0)
    return (out[..., 0] if output == "height" else out), notes
