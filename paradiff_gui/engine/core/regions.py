"""Regional prompts: parts of the canvas with their own prompt (or, for models without text, their
own controls), fused into the same synchronized loop. Plain data and numpy, no torch.

A :class:`Region` is a rectangle in image px *or* a grayscale mask image of the canvas's size, with
a prompt, a negative prompt, a weight, a feather width and backend options (e.g.
``terrain_difficulty``). The request's main prompt is the background.

How they are fused (region-based MultiDiffusion, Bar-Tal et al. 2023, sec. 4.2): every region has a
soft mask ``M_r`` (the rectangle with raised-cosine ramps ``feather`` px wide centred on its edges,
or the mask image blurred by ``feather``); the background's mask is ``max(0, 1 − Σ M_r)``; each
pixel's mixing weights are ``w_r·M_r`` normalised to sum to 1 (:func:`mixing_weights`). A tile
runs the model once per conditioning whose weight is non-zero somewhere on it and mixes those
predictions with the weights; the tiles are then fused as always. Inside a region only its own
conditioning counts, so a tile wholly inside one costs one model call, like any other tile.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported where it is used: `paradiff --help` reads this module
    import numpy as np

MAX_REGIONS = 16
MAX_WEIGHT = 10.0
MAX_FEATHER = 1024  # image px
DEFAULT_FEATHER = 64  # image px
MASK_PREFIX = "data:image/png;base64,"
MAX_MASK_BYTES = 64 * 2**20


class RegionError(ValueError):
    """A region field is invalid; ``field`` is e.g. ``regions[1].rect``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Region:
    """One regional prompt. ``rect`` is (x0, y0, x1, y1) in image px, x1/y1 exclusive; ``mask`` is a
    PNG (grayscale, the canvas's size) as a ``data:image/png;base64,`` string, so that a recipe
    holds everything needed to replay it. Exactly one of the two."""

    rect: tuple[int, int, int, int] | None = None
    mask: str | None = None
    prompt: str = ""
    negative_prompt: str = ""
    weight: float = 1.0
    feather: int = DEFAULT_FEATHER
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rect": list(self.rect)} if self.rect is not None else {"mask": self.mask}
        d.update(prompt=self.prompt, negative_prompt=self.negative_prompt, weight=self.weight,
                 feather=self.feather, extra=dict(self.extra))
        return d


_KEYS = ("rect", "mask", "prompt", "negative_prompt", "weight", "feather", "extra")


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RegionError(name, f"must be a whole number from {lo} to {hi}, got {value!r}")
    return value


def parse_region(data: Any, index: int, width: int, height: int, max_chars: int) -> Region:
    """A :class:`Region` from a Region or its JSON object, checked against a ``width`` x ``height``
    canvas (image px)."""
    name = f"regions[{index}]"
    if isinstance(data, Region):
        data = data.to_dict()
    if not isinstance(data, dict):
        raise RegionError(name, "must be an object with rect or mask, prompt, negative_prompt, weight, feather, "
                                "extra")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise RegionError(f"{name}.{unknown[0]}", f"is not a region field (known: {', '.join(_KEYS)})")
    rect, mask = data.get("rect"), data.get("mask")
    if (rect is None) == (mask is None):
        raise RegionError(name, "give either rect [x0, y0, x1, y1] (image px) or mask (a grayscale image), not both "
                                "and not neither")
    if rect is not None:
        if not isinstance(rect, (list, tuple)) or len(rect) != 4:
            raise RegionError(f"{name}.rect", f"must be [x0, y0, x1, y1] in image px, got {rect!r}")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in rect):
            raise RegionError(f"{name}.rect", f"must be four whole numbers [x0, y0, x1, y1] in image px, got {rect!r}")
        x0, y0, x1, y1 = rect
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise RegionError(f"{name}.rect", f"must lie inside the {width}x{height} canvas with x0 < x1 and y0 < y1 "
                                              f"(0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height}); got {list(rect)}")
        rect = (x0, y0, x1, y1)
    else:
        decode_mask(mask, width, height, f"{name}.mask")  # checked now; decoded again where it is used
    for key in ("prompt", "negative_prompt"):
        v = data.get(key, "")
        if not isinstance(v, str) or len(v) > max_chars:
            raise RegionError(f"{name}.{key}", f"must be text of at most {max_chars} characters")
    weight = data.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < float(weight) <= MAX_WEIGHT:
        raise RegionError(f"{name}.weight", f"must be a number above 0 and at most {MAX_WEIGHT:g}, got {weight!r}")
    feather = _int(f"{name}.feather", data.get("feather", DEFAULT_FEATHER), 0, MAX_FEATHER)
    extra = data.get("extra", {})
    if not isinstance(extra, dict):
        raise RegionError(f"{name}.extra", "must be an object of backend options, e.g. {\"terrain_difficulty\": 90}")
    return Region(rect, mask, data.get("prompt", ""), data.get("negative_prompt", ""), float(weight), feather,
                  dict(extra))


def encode_mask_png(png: bytes) -> str:
    return MASK_PREFIX + base64.b64encode(png).decode("ascii")


def mask_from_file(path: str, field: str = "mask") -> str:
    """A mask image file as the data string a :class:`Region` holds (read, not yet checked)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MASK_BYTES + 1)
    except OSError as exc:
        raise RegionError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_MASK_BYTES:
        raise RegionError(field, f"{path} is larger than {MAX_MASK_BYTES // 2**20} MiB")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                data = buf.getvalue()
    except (UnidentifiedImageError, OSError) as exc:
        raise RegionError(field, f"{path} is not an image Paradiff can read ({exc})") from None
    return encode_mask_png(data)


_MASK_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def decode_mask(mask: Any, width: int, height: int, field: str = "mask") -> np.ndarray:
    """The mask as (height, width) float32 in [0, 1]. It must be grayscale (PNG modes 1, L, I;16,
    I or F) and exactly the canvas's size."""
    import numpy as np

    if not isinstance(mask, str) or not mask.startswith(MASK_PREFIX):
        raise RegionError(field, "must be a grayscale PNG as a data:image/png;base64, string (the CLI and the app "
                                 "turn a mask file into one)")
    key = (hash(mask), width, height)
    if key in _MASK_CACHE:
        return _MASK_CACHE[key]
    try:
        raw = base64.b64decode(mask[len(MASK_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise RegionError(field, "is not valid base64") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.size != (width, height):
                raise RegionError(field, f"must be the canvas's size, {width}x{height}; got {im.size[0]}x{im.size[1]}")
            if im.mode not in ("1", "L", "I;16", "I", "F"):
                raise RegionError(field, f"must be a grayscale image (mode 1, L, I;16, I or F); got mode {im.mode}")
            a = np.asarray(im.convert("F") if im.mode != "1" else im.convert("L"), dtype=np.float32)
            top = {"1": 255.0, "L": 255.0, "I;16": 65535.0, "I": 65535.0, "F": 1.0}[im.mode]
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise RegionError(field, f"is not a readable PNG ({exc})") from None
    out = np.clip(a / top, 0.0, 1.0)
    if len(_MASK_CACHE) > 8:
        _MASK_CACHE.clear()
    _MASK_CACHE[key] = out
    return out


def _ramp(n: int, step: float, lo: int, hi: int, feather: int, length_px: int, wrapped: bool = False) -> np.ndarray:
    """1-D soft indicator of [lo, hi) (image px) sampled at the centres of ``n`` cells ``step`` px
    wide: raised-cosine ramps ``feather`` px wide centred on each edge, none at the canvas border —
    except on a wrapped axis, where the border is no edge and the ramp continues across it."""
    import numpy as np

    x = (np.arange(n) + 0.5) * step

    def side(d: np.ndarray) -> np.ndarray:  # d: signed distance inside the edge, px
        if feather <= 0:
            return (d > 0).astype(np.float64)
        u = np.clip(d / feather + 0.5, 0.0, 1.0)
        return 0.5 - 0.5 * np.cos(np.pi * u)

    if wrapped:
        if lo <= 0 and hi >= length_px:
            return np.ones(n)
        # The rectangle and its copies one period either side, each with both ramps.
        return np.max([side(x + k * length_px - lo) * side(hi - x - k * length_px) for k in (-1, 0, 1)], axis=0)
    a = np.ones(n) if lo <= 0 else side(x - lo)
    b = np.ones(n) if hi >= length_px else side(hi - x)
    return a * b


def soft_mask(region: Region, width: int, height: int, h: int, w: int, wrap: str = "none") -> np.ndarray:
    """The region's soft mask on a canvas of ``width`` x ``height`` image px sampled at ``h`` x ``w``
    (latent px, or any grid): (h, w) float64 in [0, 1]. Along a ``wrap`` axis the mask is periodic."""
    import numpy as np

    if region.rect is not None:
        x0, y0, x1, y1 = region.rect
        ys = _ramp(h, height / h, y0, y1, region.feather, height, "y" in wrap)
        xs = _ramp(w, width / w, x0, x1, region.feather, width, "x" in wrap)
        return np.outer(ys, xs)
    from PIL import Image
    from scipy import ndimage

    m = decode_mask(region.mask, width, height).astype(np.float32)
    if region.feather > 0:
        modes = ["wrap" if "y" in wrap else "nearest", "wrap" if "x" in wrap else "nearest"]
        m = ndimage.gaussian_filter(m, region.feather / 2, mode=modes)
    if (w, h) != (width, height):
        m = np.asarray(Image.fromarray(m, mode="F").resize((w, h), Image.Resampling.BOX))
    return np.clip(m.astype(np.float64), 0.0, 1.0)


def mixing_weights(regions: tuple[Region, ...], width: int, height: int, h: int, w: int,
                   wrap: str = "none") -> np.ndarray:
    """(1 + len(regions), h, w) float32: per pixel, how much the background (index 0) and each region
    count; every pixel's weights sum to 1. ``wrap``: the canvas's wrapped axes (periodic masks)."""
    import numpy as np

    masks = [soft_mask(r, width, height, h, w, wrap) for r in regions]
    bg = np.clip(1.0 - np.sum(masks, axis=0), 0.0, 1.0) if masks else np.ones((h, w))
    stack = np.stack([bg] + [r.weight * m for r, m in zip(regions, masks)])
    total = stack.sum(axis=0)
    return (stack / np.where(total > 0, total, 1.0)).astype(np.float32)
