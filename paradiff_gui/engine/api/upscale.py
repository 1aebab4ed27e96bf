"""Upscaling: progressive ×2 image-to-image passes (resize, noise to ``strength``, synchronized tiled
denoise), each pass's picture kept. The CLI's ``paradiff upscale`` and the app's "Upscale…" both
run :func:`upscale_passes` then generate and write each pass in order.

Each pass is an ordinary :class:`GenerationRequest` (``init_image`` = the previous pass's file,
``width``/``height`` twice the previous), so each pass's picture carries its own recipe and can be
replayed on its own.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.regions import MAX_FEATHER, Region
from ..core.request import GenerationRequest, RequestError, canvas_size
from ..io.export import open_image
from ..io.metadata import load_request
from .requests import request_for

SCALES = (2, 4, 8)
DEFAULT_UPSCALE_STRENGTH = 0.5
DEFAULT_UPSCALE_ANCHOR = 2  # each ×2 pass shrunk 2× equals its source: the upscale keeps what the source holds


@dataclass(frozen=True)
class UpscalePass:
    """One ×2 pass: its request (``init_image`` = the previous pass's output) and where it is written."""

    factor: int  # the total scale after this pass: 2, 4 or 8
    request: GenerationRequest
    output: Path


def _scaled_region(region: Region, i: int, sx: float, sy: float) -> Region:
    """A rectangle region on the upscaled canvas: its rect and feather scaled with the picture."""
    if region.rect is None:
        raise RequestError(f"regions[{i}].mask", "a mask region cannot be carried into an upscale (the mask is the "
                                                 "source canvas's size): remove it, or use a rectangle")
    x0, y0, x1, y1 = region.rect
    rect = (round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy))
    return dataclasses.replace(region, rect=rect, feather=min(MAX_FEATHER, round(region.feather * min(sx, sy))))


def upscale_passes(source: str | os.PathLike[str], scale: int, *, strength: float | None = None,
                   anchor: int | None = None, base: GenerationRequest | None = None,
                   output: str | os.PathLike[str] | None = None,
                   **fields: Any) -> list[UpscalePass]:
    """The passes that upscale ``source`` by ``scale`` (2, 4 or 8).

    ``base`` gives the generation fields (model, prompt, seed, options...); without it the
    source's own recipe when it has one (a Paradiff picture), else the model's defaults. ``fields``
    go on top of either. ``anchor`` (default 2: faithful; 0: free) is each pass's
    (sampling/anchor.py): with 2, every pass shrunk 2× equals the picture it started from, so the
    result shrunk ``scale``× is the source. ``output`` is the last pass's file (default ``SOURCE-x{scale}.png``
    beside the source); the earlier passes are written beside it as ``NAME-x2.png``, ``NAME-x4.png``.
    """
    if isinstance(scale, bool) or scale not in SCALES:
        raise RequestError("scale", f"must be 2, 4 or 8; got {scale!r}")
    src = Path(source)
    image = open_image(src)  # refuses unreadable and oversized files with a clear message
    h, w = image.shape[:2]
    if base is None:
        try:
            base = load_request(src)
        except RequestError:
            base = request_for(**({"model": fields["model"]} if "model" in fields else {}))
    base = base.replace(**{k: v for k, v in fields.items()}) if fields else base
    strength = DEFAULT_UPSCALE_STRENGTH if strength is None else strength
    anchor = DEFAULT_UPSCALE_ANCHOR if anchor is None else anchor
    if isinstance(anchor, bool) or anchor not in (0, 2):
        raise RequestError("anchor", f"an upscale pass doubles the picture, so it keeps its source with anchor 2, or "
                                     f"nothing with 0; got {anchor!r}")
    out = Path(output) if output is not None else src.with_name(f"{src.stem}-x{scale}.png")
    stem = out.stem[: -len(f"-x{scale}")] if out.stem.endswith(f"-x{scale}") else out.stem
    passes: list[UpscalePass] = []
    previous = str(src)
    k = 1
    while k < scale:
        k *= 2
        # Each side rounded to the request's multiple of 8; the engine's note says what the init image
        # was resized to (and if that changed its aspect ratio).
        width, height = canvas_size(w, h, k)
        regions = tuple(_scaled_region(r, i, width / base.width, height / base.height)
                        for i, r in enumerate(base.regions))
        request = base.replace(width=width, height=height, init_image=previous, strength=strength, anchor=anchor,
                               global_context=0.0, regions=regions,
                               grid=None, tile=base.tile if base.grid is None else None)
        path = out if k == scale else out.with_name(f"{stem}-x{k}{out.suffix}")
        passes.append(UpscalePass(k, request, path))
        previous = str(path)
    return passes


def upscale(source: str | os.PathLike[str], scale: int, *, strength: float | None = None,
            anchor: int | None = None, base: GenerationRequest | None = None,
            output: str | os.PathLike[str] | None = None,
            on_event: Callable[[Any], None] | None = None, cancel: Any = None, **fields: Any) -> list[Any]:
    """Run :func:`upscale_passes` and write each pass's picture (with its recipe); returns the
    passes' :class:`GenerationResult` in order."""
    from ..io.export import save_image
    from ..sampling.sampler import generate

    results = []
    for step in upscale_passes(source, scale, strength=strength, anchor=anchor, base=base, output=output, **fields):
        result = generate(step.request, on_event, cancel)
        save_image(step.output, result.image, result.request, result.plan, result.info)
        results.append(result)
    return results
