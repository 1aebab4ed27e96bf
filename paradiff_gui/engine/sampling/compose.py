"""Compositions on the synchronized canvas: regional prompts, init images, wrapped canvases.

- **Regions** (:class:`Regional`): every tile runs the model once per conditioning (background and
  regions) whose mixing weight is non-zero on it, and mixes the predictions with the per-pixel
  weights of ``core.regions.mixing_weights``; the tiles are then fused as always. This is
  region-based MultiDiffusion (Bar-Tal et al. 2023, sec. 4.2) done per tile. Attention masking
  (restricting each prompt's cross-attention to its region) was not chosen: it exists only for
  text models, and the built-in model is conditioned on a class, not on text.
- **Init images** (:func:`start`): the canvas starts from the encoded picture noised to the
  strength's first timestep, and the run takes only the remaining steps (diffusers' image-to-image
  rule); strength 1 is exactly text-to-image with the same seed.
- **Wrapped canvases** (:func:`extend`, :func:`fold`): tiles of a wrapped plan run past the canvas
  edge; the canvas is continued periodically for the crops and what lands past the edge is added
  back at the opposite one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..core import blend
from ..core.plan import Tile, TilePlan
from ..core.regions import mixing_weights
from ..core.request import GenerationRequest, RequestError


def extend(plan: TilePlan, x: torch.Tensor) -> torch.Tensor:
    """The canvas (..., H, W) continued periodically to the plan's extent (itself when unwrapped)."""
    eh, ew = plan.extent
    if eh > plan.height:
        x = torch.cat([x, x[..., : eh - plan.height, :]], dim=-2)
    if ew > plan.width:
        x = torch.cat([x, x[..., : ew - plan.width]], dim=-1)
    return x


def fold(plan: TilePlan, x: torch.Tensor) -> torch.Tensor:
    """Sums over an extended canvas (..., eh, ew) added back onto the canvas (..., H, W)."""
    h, w = plan.height, plan.width
    eh, ew = x.shape[-2:]
    if (eh, ew) == (h, w):
        return x
    out = x[..., :h, :w].clone()
    if ew > w:
        out[..., :, : ew - w] += x[..., :h, w:]
    if eh > h:
        out[..., : eh - h, :] += x[..., h:, :w]
        if ew > w:
            out[..., : eh - h, : ew - w] += x[..., h:, w:]
    return out


class Regional:
    """The background's and the regions' conditionings and their mixing weights."""

    def __init__(self, request: GenerationRequest, conds: list[Any]) -> None:
        self.request = request
        self.conds = conds  # [background, region 1, ...]
        self._weights: dict[tuple, tuple[np.ndarray, torch.Tensor]] = {}
        self._extended: tuple[Any, Any] = (None, None)
        self._active: dict[tuple, list[int]] = {}

    def weights(self, plan: TilePlan, device: Any) -> tuple[np.ndarray, torch.Tensor]:
        """(K, eh, ew) mixing weights on the plan's (extended) canvas: host copy and device copy.
        Kept per canvas size; a wrapped plan's extension (which jitter changes every step) is
        made for the last plan only, so the cache does not grow with the steps."""
        base = (plan.height, plan.width)
        if base not in self._weights:
            host = mixing_weights(self.request.regions, self.request.width, self.request.height, *base,
                                  wrap=plan.wrap)
            self._weights[base] = host, torch.from_numpy(host).to(device)
        host, dev = self._weights[base]
        if plan.extent == base:
            return host, dev
        key = (*base, plan.extent)
        if self._extended[0] != key:
            self._extended = key, (blend.extend(plan, host), extend(plan, dev))
        return self._extended[1]

    def active(self, plan: TilePlan, tile: Tile, host: np.ndarray) -> list[int]:
        """The conditionings whose weight is non-zero somewhere on ``tile``."""
        key = (plan.height, plan.width, tile.y0, tile.x0, tile.y1, tile.x1)
        if key not in self._active:
            crop = host[:, tile.y0 : tile.y1, tile.x0 : tile.x1]
            self._active[key] = [k for k in range(len(self.conds)) if crop[k].max() > 0]
        return self._active[key]

    def predict(self, model: Callable[[torch.Tensor, Sequence[Tile], Any], torch.Tensor], crops: torch.Tensor,
                tiles: Sequence[Tile], plan: TilePlan) -> torch.Tensor:
        """Each tile's prediction mixed over the conditionings active on it; ``model(x, tiles,
        cond)`` runs the denoiser on a sub-batch."""
        host, dev = self.weights(plan, crops.device)
        out = torch.zeros(crops.shape, dtype=torch.float32, device=crops.device)
        actives = [self.active(plan, tl, host) for tl in tiles]
        for k, cond in enumerate(self.conds):
            rows = [i for i, act in enumerate(actives) if k in act]
            if not rows:
                continue
            sub = [tiles[i] for i in rows]
            pred = model(crops[rows], sub, cond).float()
            masks = torch.stack([dev[k, tl.y0 : tl.y1, tl.x0 : tl.x1] for tl in sub])[:, None]
            out[rows] += pred * masks
        return out


def regional(den: Any, request: GenerationRequest, plan: TilePlan, cond: Any) -> Regional | None:
    """The regions' conditionings (each region's prompt and options over the request's), or None."""
    if not request.regions:
        return None
    conds = [cond]
    for i, r in enumerate(request.regions):
        sub = dataclasses.replace(request, prompt=r.prompt, negative_prompt=r.negative_prompt,
                                  extra={**request.extra, **r.extra}, regions=())
        try:
            conds.append(den.prepare(sub, plan))
        except RequestError as exc:
            raise RequestError(f"regions[{i}].{exc.field}", exc.message) from None
    return Regional(request, conds)


def image_timesteps(scheduler: Any, steps: int, strength: float) -> tuple[torch.Tensor, int]:
    """The timesteps an image-to-image run takes and the index of its first one in the full
    schedule (diffusers' rule: the last ``int(steps · strength)`` steps; a scheduler with
    ``set_image_timesteps`` gives its own). ``set_timesteps`` must have been called. Strength 1
    keeps every step."""
    order = getattr(scheduler, "order", 1)
    if strength >= 1.0:
        return scheduler.timesteps, 0
    if hasattr(scheduler, "set_image_timesteps"):  # a model with its own image-to-image schedule (terrain)
        return scheduler.set_image_timesteps(steps, strength), 0
    kept = min(int(steps * strength), steps)
    start = (steps - kept) * order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:], start
