"""Geometry of seamless (wrapped) canvases for the canvas widget, in image px; no Qt.

With ``wrap`` a tile on a wrapped axis may pass the canvas edge: its rect can end past the width
(or height), and the part beyond wraps to the opposite edge (x mod width). The canvas draws such
a tile at every place it shows: :func:`copies` gives the rect shifted by whole canvas sizes, each
of which the painter clips to the canvas. The same shifts draw the 2×2 view (:func:`repeats`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in image px


def _shifts(a0: float, a1: float, length: int) -> list[int]:
    # Every multiple k·length with [a0 - k·length, a1 - k·length) meeting [0, length).
    if length <= 0 or (a0 >= 0 and a1 <= length):
        return [0]
    return [k * length for k in range(math.floor(a0 / length), math.ceil(a1 / length))]


def copies(rect: Rect, width: int, height: int) -> list[Rect]:
    """``rect`` at every place it shows on a ``width`` × ``height`` canvas that wraps: itself
    when it meets the canvas, and shifted by the canvas size where it passes an edge (the shifted
    copies lie partly outside too; whoever draws them clips to the canvas). An unknown size
    (0) wraps nothing."""
    x0, y0, x1, y1 = rect
    return [(x0 - dx, y0 - dy, x1 - dx, y1 - dy)
            for dy in _shifts(y0, y1, height) for dx in _shifts(x0, x1, width)]


def tile_copies(tiles: Iterable[Rect], width: int, height: int) -> list[tuple[int, Rect]]:
    """(tile index, rect) for every copy of every tile (:func:`copies`); a plan inside the canvas
    gives its tiles unchanged."""
    return [(i, c) for i, r in enumerate(tiles) for c in copies(r, width, height)]


def clip(rect: Rect, width: int, height: int) -> Rect | None:
    """The part of ``rect`` on the canvas (None if it has none); an unknown size (0) clips nothing."""
    x0, y0, x1, y1 = rect
    if width > 0:
        x0, x1 = max(0, x0), min(width, x1)
    if height > 0:
        y0, y1 = max(0, y0), min(height, y1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def repeats(width: int, height: int, tiled: bool) -> list[tuple[int, int]]:
    """Where the picture is drawn (image px offsets): once, or 2×2 to check that it tiles."""
    return [(0, 0), (width, 0), (0, height), (width, height)] if tiled else [(0, 0)]
