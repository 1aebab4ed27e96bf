"""Blend windows: how much each tile's prediction counts at each of its pixels.

- ``uniform``: every pixel 1 — MultiDiffusion's plain average (Bar-Tal et al. 2023, eq. 5).
- ``gaussian``: a Gaussian centred on the tile, variance 0.01 of the tile size squared — Mixture of
  Diffusers (Jiménez 2023, sec. 3).
- ``cosine``: flat 1 with raised-cosine ramps across each overlap with a neighbour, so two
  neighbours cross-fade and sum to 1; sides on the canvas border get no ramp.
- ``none`` / ``independent``: a 0/1 mask — each latent pixel belongs to the tile with the nearest
  centre (the hard seams of zone-by-zone tiling).

Every window is > 0 on every pixel its tile covers (``none`` on every pixel it owns), canvas
borders included, so the fused weight sum is never zero.
"""

from __future__ import annotations

import math

import numpy as np

from .plan import Tile, TilePlan

GAUSSIAN_VAR = 0.01


def _cosine_ramp(n: int, before: int, after: int) -> np.ndarray:
    """1-D window of length ``n``: raised-cosine ramps of ``before``/``after`` px, 1 between."""
    w = np.ones(n, dtype=np.float64)
    i = np.arange(n) + 0.5  # pixel centres keep the ramp's first value above 0
    if before > 0:
        w *= np.where(i < before, 0.5 - 0.5 * np.cos(np.pi * np.minimum(i, before) / before), 1.0)
    if after > 0:
        j = n - i
        w *= np.where(j < after, 0.5 - 0.5 * np.cos(np.pi * np.minimum(j, after) / after), 1.0)
    return w


def _gaussian(n: int) -> np.ndarray:
    mid = (n - 1) / 2
    x = np.arange(n)
    return np.exp(-((x - mid) ** 2) / (n * n) / (2 * GAUSSIAN_VAR))


def _neighbour_overlaps(plan: TilePlan, tile: Tile) -> tuple[int, int, int, int]:
    """Overlap in latent px with the neighbour above, below, left and right (0 at a border)."""
    ys, xs = plan.row_starts, plan.col_starts
    r, c = tile.row, tile.col
    up = ys[r - 1] + plan.tile_h - ys[r] if r > 0 else 0
    down = ys[r] + plan.tile_h - ys[r + 1] if r + 1 < len(ys) else 0
    left = xs[c - 1] + plan.tile_w - xs[c] if c > 0 else 0
    right = xs[c] + plan.tile_w - xs[c + 1] if c + 1 < len(xs) else 0
    # On a wrapped axis the first and the last tile are neighbours across the edge.
    if plan.wrap_y and len(ys) > 1:
        across = ys[-1] + plan.tile_h - (plan.height + ys[0])
        up = across if r == 0 else up
        down = across if r == len(ys) - 1 else down
    if plan.wrap_x and len(xs) > 1:
        across = xs[-1] + plan.tile_w - (plan.width + xs[0])
        left = across if c == 0 else left
        right = across if c == len(xs) - 1 else right
    return max(up, 0), max(down, 0), max(left, 0), max(right, 0)


def tile_window(plan: TilePlan, tile: Tile, mode: str, upscale: int = 1) -> np.ndarray:
    """The (tile_h, tile_w) float32 weight window of ``tile`` for a smooth blend ``mode``
    (uniform, gaussian, cosine); the 0/1 ownership masks of none/independent come from
    :func:`windows`, which needs the whole plan's ownership once, not once per tile.

    ``upscale`` > 1 gives the same window at ``upscale`` times the resolution (smooth, not
    stair-stepped), for blending decoded image tiles.
    """
    h, w = plan.tile_h * upscale, plan.tile_w * upscale
    if mode == "uniform":
        win = np.ones((h, w))
    elif mode == "gaussian":
        win = np.outer(_gaussian(h), _gaussian(w))
    elif mode == "cosine":
        up, down, left, right = (o * upscale for o in _neighbour_overlaps(plan, tile))
        win = np.outer(_cosine_ramp(h, up, down), _cosine_ramp(w, left, right))
    else:
        raise ValueError(f"not a smooth blend mode: {mode!r}")
    return win.astype(np.float32)


def ownership(plan: TilePlan) -> np.ndarray:
    """(height, width) int array: the tile whose centre is nearest to each latent pixel."""
    return np.asarray(plan.owner_index(), dtype=np.int64)


def windows(plan: TilePlan, mode: str) -> np.ndarray:
    """All windows stacked: (n_tiles, tile_h, tile_w) float32."""
    if mode in ("none", "independent"):
        owner = extend(plan, ownership(plan))  # computed once, not per tile
        return np.stack(
            [(owner[t.y0 : t.y1, t.x0 : t.x1] == t.index).astype(np.float32) for t in plan.tiles]
        )
    return np.stack([tile_window(plan, t, mode) for t in plan.tiles])


def weight_sum(plan: TilePlan, wins: np.ndarray) -> np.ndarray:
    """Σ of all windows placed on the canvas: (height, width) float64 (on a wrapped plan, what
    runs past an edge lands at the opposite one)."""
    total = np.zeros(plan.extent, dtype=np.float64)
    for t, win in zip(plan.tiles, wins):
        total[t.y0 : t.y1, t.x0 : t.x1] += win
    return fold(plan, total)


def extend(plan: TilePlan, canvas: np.ndarray) -> np.ndarray:
    """A canvas (..., height, width) continued periodically to the plan's extent (the identity on
    a plan that does not wrap)."""
    eh, ew = plan.extent
    if eh > plan.height:
        canvas = np.concatenate([canvas, canvas[..., : eh - plan.height, :]], axis=-2)
    if ew > plan.width:
        canvas = np.concatenate([canvas, canvas[..., : ew - plan.width]], axis=-1)
    return canvas


def fold(plan: TilePlan, extended: np.ndarray) -> np.ndarray:
    """The inverse sum of :func:`extend`: an (..., extent) array added back onto the canvas."""
    h, w = plan.height, plan.width
    out = extended[..., :h, :w].copy()
    eh, ew = extended.shape[-2:]
    if ew > w:
        out[..., :, : ew - w] += extended[..., :h, w:]
    if eh > h:
        out[..., : eh - h, :] += extended[..., h:, :w]
        if ew > w:
            out[..., : eh - h, : ew - w] += extended[..., h:, w:]
    return out


def check_positive(plan: TilePlan, wins: np.ndarray) -> None:
    """Fail loudly if some canvas pixel would get zero total weight (a plan/window bug)."""
    total = weight_sum(plan, wins)
    if not np.all(total > 0) or not math.isfinite(float(total.sum())):
        raise AssertionError("blend windows leave canvas pixels with zero weight")
