"""One way to open a finished picture for inspection, for the CLI and the app alike.

The tile plan comes from the picture's own recipe when it has one (the tiles it was made with),
else from a plan the person gives (grid or tile size, and overlap) — never from today's model
defaults, which may have changed since the picture was made.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..analysis.seams import SeamReport, analyse
from ..core.plan import TilePlan
from ..core.request import GenerationRequest, RequestError
from ..io.export import open_image
from ..io.metadata import read_recipe

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in image px


@dataclass
class Picture:
    """An opened picture and what is known about how it was made."""

    image: np.ndarray
    request: GenerationRequest | None = None  # from its recipe; None for other images
    plan: TilePlan | None = None  # the tiles it was made with (recipe) or that the caller gave
    info: dict[str, Any] = field(default_factory=dict)  # the recipe's run figures
    source: str = "none"  # where the plan came from: "metadata", "given" or "none"

    @property
    def tiles(self) -> list[Rect]:
        return [self.plan.image_rect(t) for t in self.plan.tiles] if self.plan is not None else []

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]


def given_plan(width: int, height: int, grid: tuple[int, int] | None = None, tile: int | None = None,
               overlap: int | None = None) -> TilePlan:
    """A plan for an image without a recipe, from a grid *or* a tile side (image px)."""
    return TilePlan.create(height, width, overlap=overlap or 0, tile=tile, grid=grid)


def open_picture(path: str | os.PathLike[str], grid: tuple[int, int] | None = None, tile: int | None = None,
                 overlap: int | None = None) -> Picture:
    """Read ``path`` (size-limited) and its recipe. A given ``grid``/``tile`` wins over the recipe's
    plan; without either, a picture with no recipe comes back with ``plan=None``."""
    image = open_image(path)
    picture = Picture(image)
    try:
        recipe = read_recipe(path)
    except RequestError:
        recipe = None
    if recipe is not None:
        with contextlib.suppress(RequestError):  # a recipe of another version: its plan still counts
            picture.request = GenerationRequest.from_dict(recipe["request"])
        picture.info = recipe.get("info") if isinstance(recipe.get("info"), dict) else {}
    if grid is not None or tile is not None:
        picture.plan = given_plan(*picture.size, grid=grid, tile=tile, overlap=overlap)
        picture.source = "given"
    elif recipe is not None and isinstance(recipe.get("plan"), dict):
        picture.plan = TilePlan.from_dict(recipe["plan"], *picture.size)
        picture.source = "metadata"
    return picture


def score(picture: Picture) -> SeamReport:
    """Seam scores of ``picture`` along its plan's tile borders."""
    if picture.plan is None:
        raise RequestError("plan", "the image has no Paradiff metadata; give its tile plan (grid or tile, and "
                                   "overlap)")
    return analyse(picture.image, picture.tiles)
