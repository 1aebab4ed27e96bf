"""TilePlan: where the tiles sit on the canvas. Pure Python, no torch.

All geometry is computed in latent pixels (the unit the model sees); image-pixel rectangles are
the latent ones times the VAE factor. Tiles all have one size, their starts are spread evenly so
every pair of neighbours overlaps by at least the requested amount, and together they cover
every latent pixel.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .request import GenerationRequest, RequestError


@dataclass(frozen=True)
class Tile:
    """One tile, in latent pixels: rows ``y0:y1``, columns ``x0:x1``."""

    index: int
    row: int
    col: int
    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def center(self) -> tuple[float, float]:
        return (self.y0 + self.y1) / 2, (self.x0 + self.x1) / 2


class Tiles(Sequence[Tile]):
    """A plan's tiles, row-major, made when first read: a 65536² canvas has a million of them (seconds
    to build), and planning its memory needs only how many there are (``len`` builds nothing). Equal
    to any sequence of the same tiles."""

    __slots__ = ("_made", "_th", "_tw", "_xs", "_ys")

    def __init__(self, ys: Sequence[int], xs: Sequence[int], tile_h: int, tile_w: int) -> None:
        self._ys, self._xs, self._th, self._tw = tuple(ys), tuple(xs), tile_h, tile_w
        self._made: tuple[Tile, ...] | None = None

    def _all(self) -> tuple[Tile, ...]:
        if self._made is None:
            cols = len(self._xs)
            self._made = tuple(Tile(r * cols + c, r, c, y, x, y + self._th, x + self._tw)
                               for r, y in enumerate(self._ys) for c, x in enumerate(self._xs))
        return self._made

    def __len__(self) -> int:
        return len(self._ys) * len(self._xs)

    @property
    def starts(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The rows' and the columns' starts (latent px)."""
        return self._ys, self._xs

    def __getitem__(self, i: Any) -> Any:
        return self._all()[i]

    def __iter__(self) -> Iterator[Tile]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Tiles):
            return (self._ys, self._xs, self._th, self._tw) == (other._ys, other._xs, other._th, other._tw)
        return isinstance(other, Sequence) and len(self) == len(other) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash((self._ys, self._xs, self._th, self._tw))

    def __repr__(self) -> str:
        return repr(self._all()) if len(self) <= 64 else f"Tiles({len(self._ys)} rows x {len(self._xs)} cols)"


# A grid may not shrink tiles below this (latent px): a model sees nothing useful in less.
MIN_GRID_TILE = 8


def _starts(length: int, tile: int, count: int) -> list[int]:
    """``count`` starts from 0 to ``length - tile``, spread as evenly as whole pixels allow."""
    if count == 1:
        return [0]
    span = length - tile
    return [round(i * span / (count - 1)) for i in range(count)]


def _axis_from_tile(length: int, tile: int, overlap: int) -> tuple[int, int]:
    """(tile, count) along one axis for a requested tile size and overlap (latent px)."""
    if length <= tile:
        return length, 1
    return tile, math.ceil((length - overlap) / (tile - overlap))


def _axis_from_count(length: int, count: int, overlap: int, field: str) -> tuple[int, int]:
    """(tile, count) along one axis for a requested number of tiles and overlap (latent px)."""
    if count == 1:
        return length, 1
    # Smallest tile for which `count` tiles with `overlap` cover `length`.
    tile = min(length, math.ceil((length + (count - 1) * overlap) / count))
    # length - tile < count - 1 would put two tiles at the same place.
    if tile <= overlap or length - tile < count - 1 or tile < MIN_GRID_TILE:
        raise RequestError(
            field,
            f"{count} tiles across {length} latent px with an overlap of {overlap} latent px give tiles of "
            f"{tile} latent px; tiles must be at least {MIN_GRID_TILE} latent px, larger than the overlap "
            f"and smaller than the canvas: use fewer tiles or a smaller overlap",
        )
    return tile, count


def _wrapped_axis(length: int, tile: int, overlap: int, count: int | None, field: str, name: str) -> tuple[int, int]:
    """(tile, count) along a wrapped axis (a circle of ``length`` latent px): tiles every
    ``length / count`` px, each overlapping the next — the last one the first — by ``overlap``."""
    if count is None:
        if overlap >= tile:
            raise RequestError("overlap", f"must be less than the tile ({tile} latent px)")
        count = math.ceil(length / (tile - overlap))
    elif count >= 2:
        tile = math.ceil(length / count) + overlap
    if count < 2 or tile >= length or tile < MIN_GRID_TILE:
        raise RequestError("wrap", f"{name} needs at least two tiles across each wrapped edge: the canvas must be "
                                   f"larger than one tile along it ({length} latent px for tiles of {tile}); use a "
                                   f"larger canvas, smaller tiles or more tiles ({field})")
    return tile, count


def _wrapped_starts(length: int, count: int) -> list[int]:
    return [round(i * length / count) for i in range(count)]


@dataclass(frozen=True)
class TilePlan:
    """The tile layout of one canvas. Coordinates are latent pixels unless a name says ``image``."""

    height: int  # latent px
    width: int  # latent px
    tile_h: int  # latent px
    tile_w: int  # latent px
    rows: int
    cols: int
    overlap: int  # requested, latent px
    scale: int  # image px per latent px
    tiles: Sequence[Tile]  # (Tiles: made when first read)
    # Seamless canvases: along a wrapped axis the plan lives on a torus: tiles are spread evenly
    # around it and the last ones run past the canvas edge (y1 > height or x1 > width), their
    # excess landing at the opposite edge (coordinates modulo the canvas size).
    wrap_y: bool = False
    wrap_x: bool = False

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        height: int,
        width: int,
        *,
        overlap: int,
        tile: int | tuple[int, int] | None = None,
        grid: tuple[int, int] | None = None,
        scale: int = 1,
        wrap: str = "none",
    ) -> TilePlan:
        """Plan a canvas of ``height`` x ``width`` latent px, from a tile size *or* a grid; ``wrap``
        (none, x, y, xy) puts the plan on a torus along those axes."""
        if (tile is None) == (grid is None):
            raise ValueError("give exactly one of tile or grid")
        if height < 1 or width < 1:
            raise RequestError("size", "the canvas must be at least one latent pixel")
        if overlap < 0:
            raise RequestError("overlap", f"must be 0 or more, got {overlap}")
        wrap_y, wrap_x = "y" in wrap, "x" in wrap
        if grid is not None:
            tile_h, rows = _wrapped_axis(height, 0, overlap, grid[0], "grid", "wrap y") if wrap_y \
                else _axis_from_count(height, grid[0], overlap, "grid")
            tile_w, cols = _wrapped_axis(width, 0, overlap, grid[1], "grid", "wrap x") if wrap_x \
                else _axis_from_count(width, grid[1], overlap, "grid")
        else:
            th, tw = (tile, tile) if isinstance(tile, int) else tile
            if overlap >= min(th, tw):
                raise RequestError("overlap", f"must be less than the tile ({min(th, tw)} latent px)")
            tile_h, rows = _wrapped_axis(height, th, overlap, None, "tile", "wrap y") if wrap_y \
                else _axis_from_tile(height, th, overlap)
            tile_w, cols = _wrapped_axis(width, tw, overlap, None, "tile", "wrap x") if wrap_x \
                else _axis_from_tile(width, tw, overlap)
        ys = _wrapped_starts(height, rows) if wrap_y else _starts(height, tile_h, rows)
        xs = _wrapped_starts(width, cols) if wrap_x else _starts(width, tile_w, cols)
        return cls(height, width, tile_h, tile_w, rows, cols, overlap, scale, Tiles(ys, xs, tile_h, tile_w),
                   wrap_y, wrap_x)

    @classmethod
    def for_request(cls, request: GenerationRequest, scale: int, native_tile: int) -> TilePlan:
        """Plan from a request (image px) for a model with VAE factor ``scale``.

        ``native_tile`` (image px) is the model's own tile size, used when the request gives
        neither a grid nor a tile.
        """
        tile_px = request.tile if request.grid is None and request.tile is not None else native_tile
        overlap_px = request.overlap if request.overlap is not None else tile_px // 4
        for name, value in (("width", request.width), ("height", request.height), ("overlap", overlap_px)):
            if value % scale:
                raise RequestError(name, f"must be a multiple of {scale} px for this model, got {value}")
        if request.grid is not None:
            plan = cls.create(
                request.height // scale, request.width // scale,
                overlap=overlap_px // scale, grid=request.grid, scale=scale, wrap=request.wrap,
            )
            return plan._check_bridge_width(request)
        if tile_px % scale:
            raise RequestError("tile", f"must be a multiple of {scale} px for this model, got {tile_px}")
        if overlap_px >= tile_px:
            raise RequestError("overlap", f"must be less than the tile ({tile_px} px), got {overlap_px}")
        return cls.create(
            request.height // scale, request.width // scale,
            overlap=overlap_px // scale, tile=tile_px // scale, scale=scale, wrap=request.wrap,
        )._check_bridge_width(request)

    def _check_bridge_width(self, request: GenerationRequest) -> TilePlan:
        """A strip of attention bridges reaches at most half a tile past the border."""
        limit = min(self.tile_h, self.tile_w) * self.scale // 2
        width = getattr(request, "bridge_width", 0)
        if width > limit:
            tiles = f"{self.tile_w * self.scale}x{self.tile_h * self.scale} px tiles"
            raise RequestError("bridge_width", f"must be from 0 to half a tile ({limit} px for these {tiles}), "
                                               f"got {width}")
        if width % self.scale:
            raise RequestError("bridge_width", f"must be a multiple of {self.scale} px for this model, got {width}")
        return self

    def shifted(self, dy: int, dx: int) -> TilePlan:
        """The same tiles on a grid moved up/left by (dy, dx) latent px (each below one stride).

        Tiles keep their size; the grid is laid from -d with the plan's largest stride and every
        tile is clamped into the canvas, so coverage and the minimum overlap are kept, and a row
        or column of tiles may be added where the shift opens a gap.
        """

        def axis(length: int, tile: int, starts: list[int], stride: int, d: int, wrapped: bool) -> list[int]:
            if wrapped:  # on a circle a shift moves every tile and keeps every overlap
                return sorted((s - d) % length for s in starts)
            if len(starts) < 2:
                return starts
            out: list[int] = []
            k = 0
            while True:
                s = k * stride - d
                clamped = min(max(s, 0), length - tile)
                if not out or clamped != out[-1]:
                    out.append(clamped)
                if s >= length - tile:
                    return out
                k += 1

        sy, sx = self.stride
        ys = axis(self.height, self.tile_h, self.row_starts, sy, dy, self.wrap_y)
        xs = axis(self.width, self.tile_w, self.col_starts, sx, dx, self.wrap_x)
        return TilePlan(self.height, self.width, self.tile_h, self.tile_w, len(ys), len(xs), self.overlap,
                        self.scale, Tiles(ys, xs, self.tile_h, self.tile_w), self.wrap_y, self.wrap_x)

    # -- derived ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def row_starts(self) -> list[int]:
        if isinstance(self.tiles, Tiles):  # without making the tiles
            return list(self.tiles.starts[0])
        return [self.tiles[r * self.cols].y0 for r in range(self.rows)]

    @property
    def col_starts(self) -> list[int]:
        if isinstance(self.tiles, Tiles):
            return list(self.tiles.starts[1])
        return [self.tiles[c].x0 for c in range(self.cols)]

    @property
    def stride(self) -> tuple[int, int]:
        """Largest distance between neighbouring tile starts (rows, cols), latent px; 1 with one tile."""

        return self._gap(self.row_starts, self.wrap_y, self.height) or 1, \
            self._gap(self.col_starts, self.wrap_x, self.width) or 1

    @staticmethod
    def _gap(starts: list[int], wrapped: bool, length: int) -> int | None:
        """Largest distance between neighbouring starts, round the circle too when wrapped."""
        if len(starts) < 2:
            return None
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        if wrapped:
            gaps.append(length - starts[-1] + starts[0])
        return max(gaps)

    @property
    def actual_overlap(self) -> tuple[int | None, int | None]:
        """Smallest overlap between neighbours (rows, cols) in latent px; None with one tile."""

        gy = self._gap(self.row_starts, self.wrap_y, self.height)
        gx = self._gap(self.col_starts, self.wrap_x, self.width)
        return None if gy is None else self.tile_h - gy, None if gx is None else self.tile_w - gx

    @property
    def wrap(self) -> str:
        """none, x, y or xy."""
        return {(False, False): "none", (False, True): "x", (True, False): "y", (True, True): "xy"}[
            (self.wrap_y, self.wrap_x)]

    @property
    def extent(self) -> tuple[int, int]:
        """(height, width) latent px the tiles span: the canvas, plus what wrapped tiles run past it."""
        return max(t.y1 for t in self.tiles), max(t.x1 for t in self.tiles)

    @property
    def overhead(self) -> float:
        """Σ tile area ÷ canvas area: how much more the model computes than one pass would."""
        return len(self.tiles) * self.tile_h * self.tile_w / (self.height * self.width)

    def image_rect(self, tile: Tile) -> tuple[int, int, int, int]:
        """The tile as ``(x0, y0, x1, y1)`` in image pixels."""
        s = self.scale
        return tile.x0 * s, tile.y0 * s, tile.x1 * s, tile.y1 * s

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) in image pixels."""
        return self.width * self.scale, self.height * self.scale

    def owner_index(self) -> list[list[int]]:
        """Per latent pixel, the index of the tile whose centre is nearest (ties: lower index).

        On a grid of centres the Euclidean nearest centre is the nearest row centre paired with
        the nearest column centre, so each axis is solved on its own.
        """

        def axis_owner(length: int, starts: list[int], tile: int, wrapped: bool) -> list[int]:
            centres = [s + tile / 2 for s in starts]

            def dist(p: int, c: float) -> float:
                d = abs(p + 0.5 - c)
                return min(d % length, length - d % length) if wrapped else d

            return [min(range(len(centres)), key=lambda i: (dist(p, centres[i]), i)) for p in range(length)]

        row_of = axis_owner(self.height, self.row_starts, self.tile_h, self.wrap_y)
        col_of = axis_owner(self.width, self.col_starts, self.tile_w, self.wrap_x)
        return [[r * self.cols + c for c in col_of] for r in row_of]

    def describe(self) -> str:
        oy, ox = self.actual_overlap
        ov = f"{(oy or 0) * self.scale}x{(ox or 0) * self.scale}px"
        return (
            f"{self.rows}x{self.cols} tiles of {self.tile_w * self.scale}x{self.tile_h * self.scale}px, "
            f"overlap {ov}, overhead {self.overhead:.2f}x" + (f", wraps {self.wrap}" if self.wrap != "none" else "")
        )

    @classmethod
    def from_dict(cls, data: Any, width: int, height: int) -> TilePlan:
        """The plan :meth:`to_dict` wrote for a ``width`` x ``height`` image (image px), exactly
        as stored: an opened picture is inspected and re-exported with the tiles it was made
        with, not with a plan rebuilt from today's model defaults."""
        try:
            rows, cols, scale = (int(data[k]) for k in ("rows", "cols", "scale"))
            rects = [tuple(int(v) for v in t) for t in data["tiles"]]
        except (KeyError, TypeError, ValueError):
            raise RequestError("plan", "the stored plan needs rows, cols, scale and tiles") from None
        if rows < 1 or cols < 1 or scale < 1 or len(rects) != rows * cols or any(len(r) != 4 for r in rects):
            raise RequestError("plan", f"the stored plan's {len(rects)} tiles do not make {rows}x{cols}")
        if any(v % scale for r in rects for v in r) or width % scale or height % scale:
            raise RequestError("plan", f"the stored tiles are not on the {scale}-px latent grid")
        wrap = data.get("wrap", "none") if isinstance(data, dict) else "none"
        if wrap not in ("none", "x", "y", "xy"):
            raise RequestError("plan", f"the stored plan's wrap must be none, x, y or xy; got {wrap!r}")
        tiles = []
        for i, (x0, y0, x1, y1) in enumerate(rects):
            # A wrapped axis's tiles start inside the image and may run up to one tile past it.
            wx = x1 - x0 if "x" in wrap else 0
            wy = y1 - y0 if "y" in wrap else 0
            if not (0 <= x0 < x1 <= width + (wx if x0 < width else 0) and
                    0 <= y0 < y1 <= height + (wy if y0 < height else 0)):
                raise RequestError("plan", f"stored tile {i} ({x0},{y0})-({x1},{y1}) is outside the {width}x{height} "
                                           "image")
            tiles.append(Tile(i, i // cols, i % cols, y0 // scale, x0 // scale, y1 // scale, x1 // scale))
        first = tiles[0]
        step = tiles[1].x0 - first.x0 if cols > 1 else first.width
        return cls(height // scale, width // scale, first.height, first.width, rows, cols,
                   max(0, first.width - step), scale, tuple(tiles), "y" in wrap, "x" in wrap)

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "cols": self.cols,
            "scale": self.scale,
            "tiles": [list(self.image_rect(t)) for t in self.tiles],
            **({"wrap": self.wrap} if self.wrap != "none" else {}),
        }
