"""Control images for ControlNets: read once at canvas size, preprocessed, shared by every backend.

Each tile later takes its own crop of the result (``crop``); the whole map never goes into a
tile. The map stays on the host as uint8, as read (``host_map``: 3 bytes an image px, no float
copy), and only a tile batch's crops go to the device, each step (``upload``: a 16384² canvas's
map would take 1.5 GiB of the device in fp16, a tile batch's crops a few MB).

Preprocessors need no weights: ``tile`` (the picture itself, optionally shrunk by ``downscale``
and scaled back — a softer guide), ``canny`` (OpenCV's Canny, 100/200 thresholds as the canny
ControlNets' training maps were made), ``none`` (a ready-made map: depth, pose...).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.control import Control
from ..core.plan import Tile
from ..core.request import GenerationRequest, RequestError
from ..io.export import open_image
from ..io.init_image import file_digest

CANNY_LOW, CANNY_HIGH = 100, 200


def source_path(request: GenerationRequest, index: int) -> str:
    """The file control ``index`` reads: its own image, else the init image."""
    control = request.controls[index]
    path = control.image if control.image is not None else request.init_image
    assert path is not None  # the request refuses a control with neither
    return path


def _read(path: str, field: str) -> np.ndarray:
    try:
        a = open_image(Path(path))
    except RequestError as exc:
        raise RequestError(field, f"{exc.message}; give a PNG, JPEG, WebP or TIFF picture") from None
    if a.dtype == np.uint16:
        a = (a // 257).astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else np.asarray(a)


def control_map(request: GenerationRequest, index: int) -> tuple[np.ndarray, list[str]]:
    """Control ``index`` of ``request`` as (H, W, 3) uint8 at the canvas size, preprocessed, and
    notes for the person (a resize)."""
    control: Control = request.controls[index]
    field = f"controls[{index}].image"
    path = source_path(request, index)
    a = _read(path, field)
    notes = []
    h, w = a.shape[:2]
    if (w, h) != (request.width, request.height):
        notes.append(f"control image {Path(path).name} ({w}x{h}) resized to the canvas, {request.width}x"
                     f"{request.height} (each tile then takes its own crop)")
        a = np.asarray(Image.fromarray(a).resize((request.width, request.height), Image.Resampling.LANCZOS))
    if control.pre == "tile" and control.downscale > 1:
        small = (max(1, request.width // control.downscale), max(1, request.height // control.downscale))
        a = np.asarray(Image.fromarray(a).resize(small, Image.Resampling.BOX)
                       .resize((request.width, request.height), Image.Resampling.BICUBIC))
    elif control.pre == "canny":
        import cv2

        edges = cv2.Canny(np.ascontiguousarray(a), CANNY_LOW, CANNY_HIGH)
        a = np.repeat(edges[..., None], 3, axis=2)
    return np.ascontiguousarray(a), notes


def control_notes(request: GenerationRequest) -> list[str]:
    """What reading the control images will say (from their headers only)."""
    notes = []
    for i in range(len(request.controls)):
        path = source_path(request, i)
        try:
            with Image.open(path) as im:
                w, h = im.size
        except OSError:
            continue  # refused with its field when it is read
        if (w, h) != (request.width, request.height):
            notes.append(f"control image {Path(path).name} ({w}x{h}) resized to the canvas, {request.width}x"
                         f"{request.height} (each tile then takes its own crop)")
    return notes


def control_record(request: GenerationRequest) -> list[dict]:
    """The recipe's record of each control: model, image and its sha256, weight, range, preprocessor."""
    out = []
    for i, c in enumerate(request.controls):
        path = source_path(request, i)
        out.append({"model": Path(c.model).name, "image": path, "sha256": file_digest(path), "weight": c.weight,
                    "start": c.start, "end": c.end, "preprocessor": c.pre, **({"mode": c.mode} if c.mode else {})})
    return out


def host_map(pixels: np.ndarray) -> torch.Tensor:
    """``pixels`` (H, W, 3) uint8 as the (1, 3, H, W) map ``crop`` takes: a view (a copy only of
    a read-only array, such as Pillow's, which torch does not wrap)."""
    if not pixels.flags.writeable:
        pixels = pixels.copy()
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


def resized(canvas: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A host map (1, 3, H, W) uint8 at another size (global context's small pass), still uint8 on
    the host: Pillow's bilinear filter, which widens its support when it shrinks (antialiased)."""
    pixels = canvas[0].permute(1, 2, 0).numpy()
    return host_map(np.asarray(Image.fromarray(pixels).resize((w, h), Image.Resampling.BILINEAR)))


def upload(crops: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A tile batch's uint8 crops on ``device`` in ``dtype``, in [0, 1] the way diffusers' control
    image processor makes them (float32 ÷ 255, then the model's dtype): exactly its values."""
    return crops.to(device).float().div_(255).to(dtype)


def crop(canvas: torch.Tensor, tiles: Sequence[Tile], scale: int) -> torch.Tensor:
    """Each tile's crop of ``canvas`` (1, C, H, W, image px) at its pixel box (latent box × scale):
    (len(tiles), C, h, w). A wrapped plan's tiles run past the edge: they read the canvas
    continued across it (indices modulo the canvas)."""
    H, W = canvas.shape[-2:]
    out = []
    for tl in tiles:
        y0, y1, x0, x1 = tl.y0 * scale, tl.y1 * scale, tl.x0 * scale, tl.x1 * scale
        if y1 <= H and x1 <= W:
            out.append(canvas[..., y0:y1, x0:x1])
            continue
        rows = torch.arange(y0, y1, device=canvas.device) % H
        cols = torch.arange(x0, x1, device=canvas.device) % W
        out.append(canvas.index_select(-2, rows).index_select(-1, cols))
    return torch.cat(out)
