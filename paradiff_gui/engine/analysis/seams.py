"""Seam metrics: how much trace a tile grid left in an image.

All metrics work in image pixels from the image and its tile rectangles. A tile grid's seams sit
on the *ownership boundaries* — midway between neighbouring tile centres, where zone-by-zone
tiling switches from one tile to the next — and on the tile edges, where plain averaging gains
or loses a tile. Blended seams are low-frequency steps spread over the
overlap, so the image is low-passed first (a Gaussian of ``lowpass`` px), otherwise the image's
own texture drowns them.

- **seam ratio**: mean |∇| of the low-passed image across the seams, inside the seam zones (±2
  low-pass widths around each line), ÷ the same away from every seam; the larger of the two line
  families (boundaries, edges) counts. 1.0 = the grid leaves no trace; a zone as wide as the
  overlap would dilute hard seams with the smooth image around them.
- **drift**: per seam, the mean absolute difference between bands either side of the zone
  (colour or height shift between neighbouring tiles), in image units and relative to the image's std.
- **spectral peak**: the grid repeats with the tile stride, so a visible grid puts a peak at that
  frequency into the column/row profile of |∇|: peak ÷ median of the neighbouring spectrum
  (≈ 1–3 for no grid).
- **heatmap**: per pixel, the low-passed gradient across the nearest seam ÷ the image's typical
  gradient, inside seam zones, 0 elsewhere (for an overlay).

The overlap *consensus error* (how much tiles disagree before fusion) is measured during sampling,
see ``sampler.py``.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in image px


@dataclass(frozen=True)
class Seam:
    orientation: str  # "vertical" (a line at x) or "horizontal" (a line at y)
    kind: str  # "boundary" (midway between tile centres) or "edge" (a tile's edge)
    position: int  # image px
    ratio: float
    drift: float  # mean |band before − band after|, image units
    drift_rel: float  # drift ÷ image std


@dataclass(frozen=True)
class SeamReport:
    seam_ratio: float
    spectral_peak: float
    drift: float
    seams: tuple[Seam, ...]
    tiles: tuple[Rect, ...]
    zone: int
    lowpass: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tiles"] = [list(t) for t in self.tiles]
        return d


def _to_float(image: np.ndarray) -> np.ndarray:
    """Greyscale float64: luminance for RGB(A), values in the image's own units."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3:
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114]) if a.shape[2] >= 3 else a[..., 0]
    return a


def boundaries(tiles: list[Rect] | tuple[Rect, ...],
               size: tuple[int, int] | None = None) -> dict[str, tuple[list[int], list[int]]]:
    """Seam lines of a tile grid, (vertical xs, horizontal ys) per family:

    - ``boundary``: the ownership boundaries midway between neighbouring tile centres (where
      zone-by-zone tiling cuts);
    - ``edge``: every tile edge inside the canvas (where plain averaging gains or loses a tile).
    """

    def axis(spans: set[tuple[int, int]], length: int | None) -> tuple[list[int], list[int]]:
        # ``length``: the image's size along a wrapped axis (its tiles run past the edge), where the
        # lines are taken modulo it — the last and first tiles meet across the edge too — and the
        # line on the edge itself is not inside the image.
        if len(spans) < 2:
            return [], []
        centres = sorted((a + b) / 2 for a, b in spans)
        lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
        mids = {round((c0 + c1) / 2) for c0, c1 in itertools.pairwise(centres)}
        edges = {a for a, _ in spans if a > lo} | {b for _, b in spans if b < hi}
        if length is not None:
            mids = {p % length for p in mids | {round((centres[-1] + centres[0] + length) / 2)}} - {0}
            edges = {p % length for p in edges | {a for a, _ in spans} | {b for _, b in spans}} - {0}
        return sorted(mids), sorted(edges - mids)

    w, h = size if size is not None else (None, None)
    w = w if w is not None and any(x1 > w for _, _, x1, _ in tiles) else None
    h = h if h is not None and any(y1 > h for _, _, _, y1 in tiles) else None
    mx, ex = axis({(x0, x1) for x0, _, x1, _ in tiles}, w)
    my, ey = axis({(y0, y1) for _, y0, _, y1 in tiles}, h)
    return {"boundary": (mx, my), "edge": (ex, ey)}


def _stride(cuts: list[int]) -> float | None:
    return float(np.median(np.diff(cuts))) if len(cuts) >= 2 else None


def _spectral_peak(profile: np.ndarray, stride: float | None) -> float | None:
    # Needs at least two periods of the grid in the image to call anything a peak.
    if stride is None or stride < 4 or len(profile) < 2 * stride:
        return None
    p = profile - profile.mean()
    spec = np.abs(np.fft.rfft(p * np.hanning(len(p))))
    k = len(p) / stride
    lo, hi = max(1, int(k / 2)), min(len(spec) - 1, int(2 * k) + 1)
    peak_bins = [b for b in (int(np.floor(k)), int(np.ceil(k))) if lo <= b <= hi]
    background = [spec[b] for b in range(lo, hi + 1) if abs(b - k) > 1.5]
    if not peak_bins or not background:
        return None
    return float(max(spec[b] for b in peak_bins) / (np.median(background) + 1e-12))


def _zone_half(lowpass: float, zone: int | None) -> int:
    """Half-width of a seam zone, px: two low-pass widths unless given."""
    return zone if zone is not None else max(2, round(2 * lowpass))


def analyse(image: np.ndarray, tiles: list[Rect] | tuple[Rect, ...], *, lowpass: float = 2.0,
            zone: int | None = None) -> SeamReport:
    """Seam metrics of ``image`` for its tile rectangles (image px)."""
    img = _to_float(image)
    h, w = img.shape
    families = boundaries(tiles, (w, h))
    half = _zone_half(lowpass, zone)
    low = ndimage.gaussian_filter(img, lowpass, mode="nearest")
    gx = np.abs(np.diff(low, axis=1))  # gradient between columns x and x+1: (h, w-1)
    gy = np.abs(np.diff(low, axis=0))  # (h-1, w)

    def zones(xs: list[int], ys: list[int]) -> tuple[np.ndarray, np.ndarray]:
        zx, zy = np.zeros(w - 1, bool), np.zeros(h - 1, bool)
        for x in xs:
            zx[max(0, x - half) : min(w - 1, x + half)] = True
        for y in ys:
            zy[max(0, y - half) : min(h - 1, y + half)] = True
        return zx, zy

    all_x = [x for xs, _ in families.values() for x in xs]
    all_y = [y for _, ys in families.values() for y in ys]
    zx, zy = zones(all_x, all_y)
    # "Away from every seam": columns outside vertical zones, rows outside horizontal ones.
    inside = np.concatenate([gx[:, ~zx].ravel(), gy[~zy, :].ravel()])
    base = float(inside.mean()) if inside.size else float("nan")
    # The worse family decides: a grid shows either at its cuts or at its tile edges.
    ratios = []
    for xs, ys in families.values():
        fx, fy = zones(xs, ys)
        vals = np.concatenate([gx[:, fx].ravel(), gy[fy, :].ravel()])
        if vals.size and base > 0:
            ratios.append(float(vals.mean() / base))
    ratio = max(ratios) if ratios else 1.0

    std = float(img.std()) or 1.0
    seams = []
    for kind, (xs, ys) in families.items():
        for x in xs:
            zone_mean = float(gx[:, max(0, x - half) : min(w - 1, x + half)].mean())
            left = low[:, max(0, x - 2 * half) : max(1, x - half)].mean(axis=1)
            right = low[:, min(w - 1, x + half) : min(w, x + 2 * half)].mean(axis=1)
            d = float(np.abs(left - right).mean())
            seams.append(Seam("vertical", kind, x, zone_mean / base if base > 0 else 1.0, d, d / std))
        for y in ys:
            zone_mean = float(gy[max(0, y - half) : min(h - 1, y + half), :].mean())
            top = low[max(0, y - 2 * half) : max(1, y - half), :].mean(axis=0)
            bottom = low[min(h - 1, y + half) : min(h, y + 2 * half), :].mean(axis=0)
            d = float(np.abs(top - bottom).mean())
            seams.append(Seam("horizontal", kind, y, zone_mean / base if base > 0 else 1.0, d, d / std))

    mx, my = families["boundary"]
    peaks = [p for p in (_spectral_peak(gx.mean(axis=0), _stride(mx)), _spectral_peak(gy.mean(axis=1), _stride(my)))
             if p is not None]
    return SeamReport(
        seam_ratio=ratio,
        spectral_peak=float(np.mean(peaks)) if peaks else float("nan"),
        drift=float(np.mean([s.drift for s in seams])) if seams else 0.0,
        seams=tuple(seams),
        tiles=tuple(tuple(int(v) for v in t) for t in tiles),
        zone=half,
        lowpass=lowpass,
    )


def heatmap(image: np.ndarray, tiles: list[Rect] | tuple[Rect, ...], *, lowpass: float = 2.0,
            zone: int | None = None) -> np.ndarray:
    """(H, W) float32: low-passed gradient across the nearest seam ÷ the typical gradient, in
    seam zones; 0 elsewhere. 1 = as smooth as the rest of the image; ≫ 1 = a visible seam."""
    img = _to_float(image)
    h, w = img.shape
    half = _zone_half(lowpass, zone)
    low = ndimage.gaussian_filter(img, lowpass, mode="nearest")
    gx = np.abs(np.gradient(low, axis=1))
    gy = np.abs(np.gradient(low, axis=0))
    typical = float(np.median(np.hypot(gx, gy))) or 1.0
    out = np.zeros((h, w), np.float32)
    vx = [x for xs, _ in boundaries(tiles, (w, h)).values() for x in xs]
    hy = [y for _, ys in boundaries(tiles, (w, h)).values() for y in ys]
    for x in vx:
        sl = slice(max(0, x - half), min(w, x + half))
        out[:, sl] = np.maximum(out[:, sl], gx[:, sl] / typical)
    for y in hy:
        sl = slice(max(0, y - half), min(h, y + half))
        out[sl, :] = np.maximum(out[sl, :], gy[sl, :] / typical)
    return out


def tiled_score(image: np.ndarray, wrap: str = "xy", *, lowpass: float = 2.0) -> SeamReport:
    """How seamlessly ``image`` tiles: the image laid 2x2 (side by side for ``x``, stacked for
    ``y``) and the seam metrics taken on the lines where the copies meet. 1.0 = no trace."""
    a = np.asarray(image)
    h, w = a.shape[:2]
    reps = {"x": (1, 2), "y": (2, 1)}.get(wrap, (2, 2))
    big = np.tile(a, reps + (1,) * (a.ndim - 2))
    rects = [(c * w, r * h, (c + 1) * w, (r + 1) * h) for r in range(reps[0]) for c in range(reps[1])]
    return analyse(big, rects, lowpass=lowpass)
