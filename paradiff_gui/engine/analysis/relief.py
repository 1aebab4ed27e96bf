"""Shaded relief: a heightmap as a picture people can read (hillshade × elevation tint)."""

from __future__ import annotations

import numpy as np

# Elevation tint stops (fraction of the height range → RGB): lowland green to rock to snow.
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([[64, 110, 70], [120, 150, 90], [170, 150, 110], [140, 120, 105], [245, 245, 245]], float)


def shaded_relief(height: np.ndarray, azimuth: float = 315.0, altitude: float = 45.0,
                  span: tuple[float, float] | None = None) -> np.ndarray:
    """(H, W) heights (any units) → (H, W, 3) uint8, lit from ``azimuth``/``altitude`` degrees.

    Slopes are scaled by their 98th percentile and the tint spans the 1st–99.5th height
    percentile, so neither a single peak nor flat ground washes the picture out. ``span`` (low,
    high) fixes the tint's range instead: tiles of one canvas shaded one by one (live previews)
    then share one colour scale, where their own percentiles would tint each tile differently.
    """
    z = np.asarray(height, dtype=np.float64)
    lo, hi = span if span is not None else (float(v) for v in np.percentile(z, [1, 99.5]))
    unit = np.clip((z - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(z)
    gy, gx = np.gradient(z)
    scale = float(np.percentile(np.hypot(gx, gy), 98)) or 1.0
    gx, gy = gx / scale, gy / scale
    slope = np.arctan(np.hypot(gx, gy))
    aspect = np.arctan2(-gx, gy)
    az, alt = np.radians(azimuth), np.radians(altitude)
    shade = np.sin(alt) * np.cos(slope) + np.cos(alt) * np.sin(slope) * np.cos(az - aspect)
    shade = np.clip(shade, 0, 1) * 0.8 + 0.2
    tint = np.stack([np.interp(unit, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1)
    return np.clip(tint * shade[..., None], 0, 255).astype(np.uint8)
