"""Bridges: the tiles of one step compute as parts of one model while they go through it.

Without bridges each tile is alone inside the model: its padded convolutions see zeros past the
tile edge, its GroupNorms normalise with the tile's own statistics, its self-attention sees its
own tokens only. A :class:`Bridge` is installed on a model's modules for a run and connects the
tiles through three channels, each switchable:

- **halos** — a padded convolution takes the pixels past a tile edge from the neighbours'
  activations at that layer (a layer canvas: every tile's activation placed at its position,
  averaged where tiles overlap), zeros only past the canvas edge;
- **norms** — GroupNorm statistics over the whole canvas (``"canvas"``) instead of per tile;
- **attention** — each self-attention layer's queries also attend to the other tiles' keys and
  values.

``fresh=True`` takes the neighbours' values from the same call (all tiles must be in one batch):
with overlap 0 and every channel on, the tiled call then equals one call of the model on the
whole canvas — the proof that the bridges carry everything a tile border cuts
(``tests/engine/test_bridges.py``). ``fresh=False`` (the mode for generation) takes the
neighbours' values from the **previous step** (DistriFusion, Li et al. 2024): a tile's own values
are always current, every other tile's come from step t−1, so the picture does not depend on
how tiles are batched or which GPU runs them; :meth:`Bridge.end_step` closes a step. At step 0
there is nothing from a previous step and the tiles run unbridged.

A model opts in by exposing its pieces as modules: ``nn.Conv2d`` with zero padding,
``nn.GroupNorm``, and attention modules with an ``attend(q, k, v)`` method (q, k, v of shape
(batch, heads, tokens, head_dim); see ``models/terrain/unet.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.plan import Tile, TilePlan

NORM_MODES = ("off", "canvas")


@dataclass(frozen=True)
class BridgeConfig:
    halos: bool = True
    norms: str = "canvas"  # one of NORM_MODES
    attention: bool = True
    fresh: bool = True  # neighbours' values from this call (all tiles in one batch)

    def __post_init__(self) -> None:
        if self.norms not in NORM_MODES:
            raise ValueError(f"norms must be one of {NORM_MODES}, got {self.norms!r}")


_CHANNELS = {
    "halos": BridgeConfig(halos=True, norms="off", attention=False, fresh=False),
    "norms": BridgeConfig(halos=False, norms="canvas", attention=False, fresh=False),
    "attention": BridgeConfig(halos=False, norms="off", attention=True, fresh=False),
    "full": BridgeConfig(fresh=False),
}


def config_for(bridges: str) -> BridgeConfig:
    """The previous-step configuration of a request's ``bridges`` value (not ``off``)."""
    return _CHANNELS[bridges]


class Bridge:
    """Connects the tiles of a model call; install with :meth:`installed`, then run the model
    inside :meth:`tiles` for each batch."""

    def __init__(self, model: nn.Module, plan: TilePlan, config: BridgeConfig | None = None) -> None:
        self.model = model
        self.plan = plan
        self.config = config or BridgeConfig()
        self._tiles: Sequence[Tile] | None = None
        self._fresh = self.config.fresh
        self._patched: list[tuple[nn.Module, str, Any]] = []
        # Previous-step mode: what this step's calls saw (per layer), and the step before's.
        self._cur: dict[tuple[int, str], dict[Any, Any]] = {}
        self._prev: dict[tuple[int, str], dict[Any, Any]] = {}

    # -- installation ------------------------------------------------------------------------

    @contextlib.contextmanager
    def installed(self) -> Iterator[Bridge]:
        """The model's modules bridged for the ``with`` block; restored afterwards, also on errors
        and cancels."""
        self._install()
        try:
            yield self
        finally:
            self._remove()

    @contextlib.contextmanager
    def tiles(self, tiles: Sequence[Tile], fresh: bool | None = None) -> Iterator[None]:
        """The batch that the next model call holds, row by row (every row one tile).

        ``fresh=True`` makes this call take the neighbours' values from itself (every tile of
        the plan in the batch) — for a previous-step bridge, the *filling pass* of step 0, which
        leaves exact values for step 1 to use."""
        self._fresh = self.config.fresh if fresh is None else fresh
        if self._fresh and len(tiles) != len(self.plan.tiles):
            raise ValueError("a fresh call needs every tile of the plan in one batch")
        self._tiles = tiles
        try:
            yield
        finally:
            self._tiles = None

    def _install(self) -> None:
        c = self.config
        for module in self.model.modules():
            if c.halos and isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" \
                    and any(p > 0 for p in _pair(module.padding)):
                self._patch(module, "forward", self._conv(module))
            elif c.norms != "off" and isinstance(module, nn.GroupNorm):
                self._patch(module, "forward", self._norm(module))
            elif c.attention and callable(getattr(module, "attend", None)):
                self._patch(module, "attend", self._attend(module.attend))

    def _patch(self, module: nn.Module, name: str, fn: Any) -> None:
        self._patched.append((module, name, module.__dict__.get(name)))
        setattr(module, name, fn)

    def _remove(self) -> None:
        for module, name, before in reversed(self._patched):
            if before is None:
                delattr(module, name)
            else:
                setattr(module, name, before)
        self._patched.clear()

    def end_step(self) -> None:
        """The step's values become the neighbours' values for the next step (previous-step mode)."""
        self._prev, self._cur = self._cur, {}

    # -- geometry ----------------------------------------------------------------------------

    def _layout(self, x: torch.Tensor) -> tuple[int, list[tuple[int, int, int, int]], int]:
        """The layer's downsampling factor, every tile's rect at the layer's resolution, and how
        many halves the batch holds (2 with classifier-free guidance: all unconditional rows,
        then all conditional ones)."""
        tiles = self._tiles
        assert tiles is not None, "run the model inside bridge.tiles(...)"
        rows, _, h, w = x.shape
        f = tiles[0].height // h
        if f < 1 or tiles[0].height != h * f or tiles[0].width != w * f:
            raise ValueError(f"a {h}x{w} layer does not divide the {tiles[0].height}x{tiles[0].width} tile")
        if rows % len(tiles):
            raise ValueError(f"{rows} rows are not whole halves of {len(tiles)} tiles")
        return f, [(t.y0 // f, t.x0 // f, t.y0 // f + h, t.x0 // f + w) for t in tiles], rows // len(tiles)

    def _place(self, x: torch.Tensor, into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Add this call's activations, tile by tile in batch order, to ``into``'s sum and count
        canvases ((halves, C, H, W) and (1, 1, H, W)), made on first use. Tile by tile, so the
        sums come out the same however the step's tiles were batched."""
        f, rects, halves = self._layout(x)
        n, c = len(rects), x.shape[1]
        if into is None or "total" not in into:
            height, width = -(-self.plan.height // f), -(-self.plan.width // f)
            into = {} if into is None else into
            into["total"] = x.new_zeros(halves, c, height, width, dtype=torch.float32)
            into["count"] = x.new_zeros(1, 1, height, width, dtype=torch.float32)
        for i, (y0, x0, y1, x1) in enumerate(rects):
            into["total"][:, :, y0:y1, x0:x1] += x[i::n].float()
            into["count"][..., y0:y1, x0:x1] += 1
        return into

    def _accumulate(self, key: tuple[int, str], values: dict[Any, Any]) -> None:
        if not self.config.fresh:  # a fresh-only bridge (the exactness mode) keeps nothing
            self._cur.setdefault(key, {}).update(values)

    # -- the three channels --------------------------------------------------------------------

    def _conv(self, conv: nn.Conv2d) -> Any:
        ph, pw = _pair(conv.padding)
        key = (id(conv), "halo")

        def plain(x: torch.Tensor) -> torch.Tensor:
            return conv._conv_forward(x, conv.weight, conv.bias)

        def forward(x: torch.Tensor) -> torch.Tensor:
            if self._tiles is None:
                return plain(x)
            rects = self._layout(x)[1]
            here = self._place(x, self._cur.setdefault(key, {}) if not self.config.fresh else None)
            if self._fresh:
                total, count = here["total"], here["count"]  # (a fresh call holds every tile)
            else:
                prev = self._prev.get(key)
                if prev is None:
                    return plain(x)  # step 0: no neighbour values yet
                total, count = prev["total"], prev["count"]
            source = F.pad((total / count.clamp_min(1)).to(x.dtype), (pw, pw, ph, ph))
            n = len(rects)
            crops = torch.empty(x.shape[0], x.shape[1], x.shape[2] + 2 * ph, x.shape[3] + 2 * pw,
                                dtype=x.dtype, device=x.device)
            for r in range(x.shape[0]):
                y0, x0, y1, x1 = rects[r % n]
                crops[r] = source[r // n, :, y0:y1 + 2 * ph, x0:x1 + 2 * pw]
            crops[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x  # its own values inside
            return F.conv2d(crops, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

        return forward

    def _norm(self, norm: nn.GroupNorm) -> Any:
        key = (id(norm), "norm")

        def forward(x: torch.Tensor) -> torch.Tensor:
            if self._tiles is None:
                return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
            rows, c, h, w = x.shape
            _, rects, halves = self._layout(x)
            n = len(rects)
            xs = x.float().reshape(rows, norm.num_groups, -1)
            own = torch.stack([xs.sum(-1), (xs * xs).sum(-1)])  # (2, rows, groups)
            size = xs.shape[-1]
            tiles = self._tiles
            self._accumulate(key, {t.index: own[:, i::n] for i, t in enumerate(tiles)})  # (2, halves, groups)
            if self._fresh:
                # One set of statistics per half over all tiles (each tile's pixels once).
                stats = own.view(2, halves, n, -1).sum(2, keepdim=True).expand(-1, -1, n, -1).reshape(2, rows, -1)
                count = torch.full((rows, 1), size * n, device=x.device)
            else:
                prev = self._prev.get(key)
                if prev is None:  # step 0: no neighbour values yet
                    return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
                # Own statistics fresh, every other tile's from the previous step.
                total = sum(prev.values())
                zero = torch.zeros_like(total)
                stale_own = torch.stack([prev.get(t.index, zero) for t in tiles], dim=2)  # (2, halves, n, groups)
                stats = own + (total[:, :, None] - stale_own).reshape(2, rows, -1)
                tiles_counted = torch.tensor([len(prev) + (t.index not in prev) for t in tiles], device=x.device)
                count = (size * tiles_counted).repeat(halves)[:, None]  # (rows, 1)
            mean = stats[0] / count
            var = (stats[1] / count - mean * mean).clamp_min(0)
            out = ((xs - mean[..., None]) * torch.rsqrt(var[..., None] + norm.eps)).reshape(rows, c, h, w)
            if norm.affine:
                out = out * norm.weight.float()[None, :, None, None] + norm.bias.float()[None, :, None, None]
            return out.to(x.dtype)

        return forward

    def _attend(self, attend: Any) -> Any:
        key = (id(attend), "attention")

        def bridged(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if self._tiles is None:
                return attend(q, k, v)
            rows, heads, t, d = k.shape
            tiles = self._tiles
            n = len(tiles)
            halves = rows // n
            self._accumulate(key, {tile.index: (k[i::n], v[i::n]) for i, tile in enumerate(tiles)})
            if self._fresh:
                # Every tile's queries over all tiles' keys and values (of its half).
                kh = k.view(halves, n, heads, t, d).transpose(1, 2).reshape(halves, 1, heads, n * t, d)
                vh = v.view(halves, n, heads, t, d).transpose(1, 2).reshape(halves, 1, heads, n * t, d)
                k_all = kh.expand(-1, n, -1, -1, -1).reshape(rows, heads, n * t, d)
                v_all = vh.expand(-1, n, -1, -1, -1).reshape(rows, heads, n * t, d)
                return attend(q, k_all, v_all)
            prev = self._prev.get(key)
            if prev is None:
                return attend(q, k, v)
            out = torch.empty_like(q)
            for r in range(rows):
                half, tile = r // n, tiles[r % n]
                # Own keys and values fresh, every other tile's from the previous step.
                ks = [k[r]] + [kv[0][half] for idx, kv in prev.items() if idx != tile.index]
                vs = [v[r]] + [kv[1][half] for idx, kv in prev.items() if idx != tile.index]
                out[r] = attend(q[r:r + 1], torch.cat(ks, dim=1)[None], torch.cat(vs, dim=1)[None])[0]
            return out

        return bridged


def _pair(v: int | tuple[int, ...] | str) -> tuple[int, int]:
    if isinstance(v, str):  # "same" / "valid": sizes kept by the module itself
        return (0, 0)
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))
