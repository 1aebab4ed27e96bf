"""Refine a selection of a picture: re-draw a rectangle or a masked part, keep the rest bit for bit.

The work is a **sub-canvas**: the selection's feathered mask, its bounding box widened by a context
margin (one tile overlap, rounded out to the request's size multiple, clamped to the picture), is
cut out and run as image-to-image with the picture around the selection kept at every step
(sampling/inpaint.py) — or, for an SD inpainting checkpoint, given to the model as its mask and
masked-picture inputs (models/sd/inpaint.py). Only that cut-out's tiles run, so the cost follows the selection, not the
picture: :func:`model_calls` counts it against the whole picture's. The decoded cut-out is laid
over the *original pixels* with the soft mask, so outside the mask the output is the source bit for
bit (no VAE round trip reaches it).

The written picture's recipe holds the sub-canvas request that ran (``init_image`` = the source) and,
under ``info["refine"]``, the source (path, size, sha256), the selection (rect, or mask path and
sha256), the feather and the sub-canvas's box, so :func:`refine_from_recipe` replays it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.plan import TilePlan
from ..core.regions import MAX_FEATHER
from ..core.request import (
    DEFAULT_REFINE_FEATHER,
    DEFAULT_REFINE_STRENGTH,
    MIN_SIZE,
    SIZE_MULTIPLE,
    GenerationRequest,
    RequestError,
)
from ..io.export import open_image
from ..io.init_image import file_digest
from ..io.metadata import load_request, read_recipe
from ..models.info import describe_model
from ..sampling.inpaint import Known
from .requests import request_for

MASK_MODES = ("1", "L", "I;16", "I", "F")  # grayscale masks; white (the mode's top) = refine
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 image px, x1/y1 exclusive


@dataclass(frozen=True, eq=False)
class Refinement:
    """One refine, ready to run: the sub-canvas request and what the composite needs."""

    request: GenerationRequest  # the sub-canvas's image-to-image request (init_image = the source)
    box: Box  # the sub-canvas on the picture
    source: np.ndarray  # the picture's pixels as read (uint8/uint16; (H, W) or (H, W, 3))
    mask: np.ndarray  # (box h, box w) float32 soft mask, 1 = re-draw
    output: Path
    record: dict[str, Any]  # info["refine"] of the written picture
    notes: list[str] = field(default_factory=list)

    def known(self) -> Known:
        """The cut-out as the model reads it: [0, 1], grayscale for a heightmap model, RGB otherwise."""
        x0, y0, x1, y1 = self.box
        crop = self.source[y0:y1, x0:x1]
        top = float(np.iinfo(crop.dtype).max)
        pixels = crop.astype(np.float32) / top
        if describe_model(self.request.model).output != "height" and pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        return Known(pixels, self.mask)


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(name, f"must be a whole number from {lo} to {hi}; got {value!r}")
    return value


def parse_rect(text: str) -> Box:
    """``X0,Y0,X1,Y1`` (image px) as a box."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
        raise RequestError("rect", f"must look like X0,Y0,X1,Y1 (image px), e.g. 256,256,768,768; got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def _check_rect(rect: Any, w: int, h: int) -> Box:
    if isinstance(rect, str):
        rect = parse_rect(rect)
    if not isinstance(rect, (tuple, list)) or len(rect) != 4 or any(
            isinstance(v, bool) or not isinstance(v, int) for v in rect):
        raise RequestError("rect", f"must be four whole numbers X0,Y0,X1,Y1 (image px); got {rect!r}")
    x0, y0, x1, y1 = rect
    if x1 <= x0 or y1 <= y0:
        raise RequestError("rect", f"is empty: X1 must be above X0 and Y1 above Y0; got {x0},{y0},{x1},{y1}")
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise RequestError("rect", f"must lie inside the {w}x{h} picture (0 <= X0 < X1 <= {w}, 0 <= Y0 < Y1 <= {h}); "
                                   f"got {x0},{y0},{x1},{y1}")
    return x0, y0, x1, y1


def read_mask(path: str | os.PathLike[str], w: int, h: int, notes: list[str]) -> np.ndarray:
    """The mask file as (h, w) float32 in [0, 1] of its mode's range, resized to the picture."""
    from PIL import Image, UnidentifiedImageError

    from ..io.metadata import pillow_pixel_limit

    p = Path(path)
    try:
        with pillow_pixel_limit(None), Image.open(p) as im:
            if im.mode not in MASK_MODES:
                raise RequestError("mask", f"{p.name} must be a grayscale image (mode {', '.join(MASK_MODES)}; white "
                                           f"= refine); got mode {im.mode}")
            if im.width * im.height > 4 * w * h + (1 << 20):
                raise RequestError("mask", f"{p.name} ({im.width}x{im.height}) is far larger than the {w}x{h} picture")
            top = {"1": 1.0, "L": 255.0, "I;16": 65535.0, "I": 65535.0, "F": 1.0}[im.mode]
            f = im.convert("L").convert("F") if im.mode == "1" else im.convert("F")
            if im.mode == "1":
                top = 255.0
            if f.size != (w, h):
                notes.append(f"mask {p.name} ({im.width}x{im.height}) resized to the picture's {w}x{h} (bilinear)")
                f = f.resize((w, h), Image.Resampling.BILINEAR)
            a = np.asarray(f, dtype=np.float32) / top
    except FileNotFoundError:
        raise RequestError("mask", f"no such file {p}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise RequestError("mask", f"{p} is not an image Paradiff can read ({exc})") from None
    return np.clip(a, 0.0, 1.0)


def _ramp(n: int, start: int, lo: int, hi: int, feather: int, length: int) -> np.ndarray:
    """1-D soft indicator of [lo, hi) at the centres of pixels start … start+n-1: raised-cosine ramps
    ``feather`` px wide centred on each edge, none at the picture's border (as core.regions)."""
    x = np.arange(start, start + n) + 0.5

    def side(d: np.ndarray) -> np.ndarray:
        if feather <= 0:
            return (d > 0).astype(np.float64)
        return 0.5 - 0.5 * np.cos(np.pi * np.clip(d / feather + 0.5, 0.0, 1.0))

    a = np.ones(n) if lo <= 0 else side(x - lo)
    b = np.ones(n) if hi >= length else side(hi - x)
    return a * b


def _aligned(lo: int, hi: int, length: int, margin: int) -> tuple[int, int]:
    """[lo, hi) widened by ``margin``, its ends on multiples of SIZE_MULTIPLE, inside [0, length),
    at least MIN_SIZE long; at the picture's far edge of a length that is no multiple, the span is
    moved in so that its length stays one."""
    a = max(0, (lo - margin) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    b = min(length, -(-(hi + margin) // SIZE_MULTIPLE) * SIZE_MULTIPLE)
    n = max(MIN_SIZE, -(-(b - a) // SIZE_MULTIPLE) * SIZE_MULTIPLE)
    n = min(n, length // SIZE_MULTIPLE * SIZE_MULTIPLE)
    a = min(a, length - n)
    if a + n < b:  # (only where the picture's length is no multiple: its last px stay as they are)
        b = a + n
    return a, a + n


def refine_request(source: str | os.PathLike[str], *, rect: Any = None, mask: str | os.PathLike[str] | None = None,
                   feather: int | None = None, strength: float | None = None, base: GenerationRequest | None = None,
                   output: str | os.PathLike[str] | None = None, **fields: Any) -> Refinement:
    """The refine of ``source``'s ``rect`` (X0,Y0,X1,Y1 image px, or its text) or ``mask`` (a
    grayscale image, white = refine), ``feather`` px soft.

    ``base`` gives the generation fields (model, prompt, seed, steps...); without it the source's
    own recipe when it has one, else the model's defaults; ``fields`` go on top (regions and
    ControlNets, which are drawn on the whole picture, are not carried). ``strength`` is
    image-to-image's (default 0.6). ``output`` defaults to ``SOURCE-refined.png``;
    it may not be the source.
    """
    src = Path(source)
    try:
        image = open_image(src)  # refuses unreadable and oversized files with a clear message
    except RequestError as exc:
        raise RequestError("image", exc.message) from None
    h, w = image.shape[:2]
    if min(w, h) < MIN_SIZE:
        raise RequestError("image", f"{src.name} is {w}x{h}; a refine needs a picture of at least {MIN_SIZE} px a side")
    out = Path(output) if output is not None else src.with_name(f"{src.stem}-refined.png")
    if out.resolve() == src.resolve():
        raise RequestError("output", f"{out} is the source: a refine writes a new file (the default is "
                                     f"{src.stem}-refined.png)")
    if (rect is None) == (mask is None):
        raise RequestError("rect", "give the selection as either rect (X0,Y0,X1,Y1) or mask (an image), not both")
    feather = DEFAULT_REFINE_FEATHER if feather is None else _int("feather", feather, 0, MAX_FEATHER)
    if strength is not None and (isinstance(strength, bool) or not isinstance(strength, (int, float))
                                 or not 0.0 < float(strength) <= 1.0):
        raise RequestError("strength", f"must be a number above 0 and at most 1; got {strength!r}")
    if base is None:
        try:
            base = load_request(src)
        except RequestError:
            base = request_for(**({"model": fields["model"]} if "model" in fields else {}))
    base = base.replace(**fields) if fields else base
    info = describe_model(base.model)
    if info.output == "height" and image.ndim == 3:
        raise RequestError("image", f"{src.name} is a colour picture; {base.model} refines grayscale heightmaps (a "
                                    "16-bit PNG or TIFF, like its own exports)")
    notes: list[str] = []
    overlap = base.overlap if base.overlap is not None else (base.tile or info.native_tile) // 4
    margin = feather + overlap  # the model sees this much of the picture around the soft border
    record: dict[str, Any] = {"source": str(src), "source_size": [w, h], "source_sha256": file_digest(src),
                              "feather": feather}
    if rect is not None:
        x0, y0, x1, y1 = _check_rect(rect, w, h)
        bx0, bx1 = _aligned(x0, x1, w, margin)
        by0, by1 = _aligned(y0, y1, h, margin)
        soft = np.outer(_ramp(by1 - by0, by0, y0, y1, feather, h),
                        _ramp(bx1 - bx0, bx0, x0, x1, feather, w)).astype(np.float32)
        record["rect"] = [x0, y0, x1, y1]
    else:
        full = read_mask(mask, w, h, notes)  # type: ignore[arg-type]
        ys, xs = np.nonzero(full > 0)
        if ys.size == 0:
            raise RequestError("mask", f"{Path(mask).name} selects nothing: paint the part to refine white "  # type: ignore[arg-type]
                                       "(or grey, for less) on black")
        reach = 2 * feather + 1  # a Gaussian of sigma feather/2, cut at 4 sigma (scipy's default)
        bx0, bx1 = _aligned(int(xs.min()) - reach, int(xs.max()) + 1 + reach, w, overlap)
        by0, by1 = _aligned(int(ys.min()) - reach, int(ys.max()) + 1 + reach, h, overlap)
        soft = full[by0:by1, bx0:bx1]
        if feather > 0:
            from scipy import ndimage

            soft = ndimage.gaussian_filter(soft, feather / 2, mode="nearest")
        soft = np.clip(soft, 0.0, 1.0).astype(np.float32)
        record["mask"] = str(mask)
        record["mask_sha256"] = file_digest(mask)  # type: ignore[arg-type]
    box = (bx0, by0, bx1, by1)
    record["box"] = list(box)
    request = base.replace(width=bx1 - bx0, height=by1 - by0, init_image=str(src),
                           strength=DEFAULT_REFINE_STRENGTH if strength is None else float(strength),
                           anchor=0, global_context=0.0, regions=(), controls=(), grid=None,
                           tile=base.tile if base.grid is None else None)
    return Refinement(request, box, image, soft, out, record, notes)


def refine_from_recipe(picture: str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
                       **fields: Any) -> Refinement:
    """The refine that made ``picture`` (its recipe's ``info["refine"]`` and request), to run again."""
    recipe = read_recipe(picture)
    rec = (recipe.get("info") or {}).get("refine")
    if not isinstance(rec, dict) or "source" not in rec:
        raise RequestError("request", f"{picture} was not made by a refine (its recipe has no info.refine)")
    base = GenerationRequest.from_dict(recipe["request"])
    src = rec["source"]
    if Path(src).is_file() and file_digest(src) != rec.get("source_sha256"):
        raise RequestError("image", f"{src} has changed since the refine (its sha256 differs): the replay would "
                                    "start from another picture")
    selection = {"rect": tuple(rec["rect"])} if "rect" in rec else {"mask": rec.get("mask")}
    return refine_request(src, **selection, feather=rec.get("feather"), strength=base.strength, base=base,
                          output=output, **fields)


def whole_request(job: Refinement) -> GenerationRequest:
    """The image-to-image request of the whole picture at the same settings (to compare costs)."""
    h, w = job.source.shape[:2]
    return job.request.replace(width=w // SIZE_MULTIPLE * SIZE_MULTIPLE, height=h // SIZE_MULTIPLE * SIZE_MULTIPLE)


def plan_tiles(request: GenerationRequest, scale: int, native_tile: int) -> int:
    """The tiles of ``request``'s plan. Every tile runs at every step, so a run's model calls are
    these tiles times its steps; a refine and the whole picture at the same settings take the same
    steps, and their costs are in the ratio of their tiles."""
    return len(TilePlan.for_request(request, scale, native_tile))


def composite(job: Refinement, decoded: np.ndarray) -> np.ndarray:
    """The picture with the decoded cut-out laid over its box with the soft mask: where the mask is
    0 the source's own pixels, untouched."""
    x0, y0, x1, y1 = job.box
    src = job.source
    crop = src[y0:y1, x0:x1]
    top = float(np.iinfo(src.dtype).max)
    new = decoded.astype(np.float64) / float(np.iinfo(decoded.dtype).max)
    if src.ndim == 3 and new.ndim == 2:
        new = np.repeat(new[..., None], 3, axis=2)
    out = src.copy()
    if src.ndim == 2 and new.ndim == 3:  # a grayscale picture refined by a colour model turns RGB
        out = np.repeat(src[..., None], 3, axis=2)
        crop = out[y0:y1, x0:x1]
    m = job.mask.astype(np.float64)
    if crop.ndim == 3:
        m = m[..., None]
    mixed = np.rint((m * new + (1 - m) * crop.astype(np.float64) / top) * top).astype(src.dtype)
    out[y0:y1, x0:x1] = np.where(m > 0, mixed, crop)  # exact outside the mask, whatever the rounding
    return out


def refine(source: str | os.PathLike[str], *, rect: Any = None, mask: str | os.PathLike[str] | None = None,
           feather: int | None = None, strength: float | None = None, base: GenerationRequest | None = None,
           output: str | os.PathLike[str] | None = None, on_event: Callable[[Any], None] | None = None,
           cancel: Any = None, denoiser: Any = None, **fields: Any) -> Any:
    """Build (:func:`refine_request`), run and write a refine; returns the sub-canvas's
    :class:`GenerationResult` with ``image`` the whole refined picture."""
    job = refine_request(source, rect=rect, mask=mask, feather=feather, strength=strength, base=base,
                         output=output, **fields)
    return run_refinement(job, on_event, cancel, denoiser=denoiser)


def run_refinement(job: Refinement, on_event: Callable[[Any], None] | None = None, cancel: Any = None, *,
                   denoiser: Any = None) -> Any:
    """Run ``job`` and write its picture (atomically, with its recipe); returns the result with
    ``image`` the whole refined picture."""
    import dataclasses

    from ..core.events import Notice
    from ..sampling.sampler import generate

    for note in job.notes:
        if on_event is not None:
            on_event(Notice(note))
    result = generate(job.request, on_event, cancel, denoiser=denoiser, known=job.known())
    picture, info = write_refinement(job, result.image, result.request, result.plan, result.info)
    return dataclasses.replace(result, image=picture, info=info)


def write_refinement(job: Refinement, decoded: np.ndarray, request: GenerationRequest, plan: TilePlan,
                     info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The sub-canvas's ``decoded`` picture laid over the source (:func:`composite`) and written to
    ``job.output`` (atomically) with the sub-canvas's recipe and ``info["refine"]``; returns the
    whole picture and its info. The CLI, the API and the app write a refine through this."""
    from ..io.export import save_image

    picture = composite(job, decoded)
    info = {**info, "refine": job.record}
    save_image(job.output, picture, request, plan, info)
    return picture, info
