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
(``tests/engine/test_bridges.py``). The previous-step mode (DistriFusion, Li et al. 2024: values
from step t−1, so results do not depend on how tiles are batched) is the next step of issue 12.

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


class Bridge:
    """Connects the tiles of a model call; install with :meth:`installed`, then run the model
    inside :meth:`tiles` for each batch."""

    def __init__(self, model: nn.Module, plan: TilePlan, config: BridgeConfig | None = None) -> None:
        self.model = model
        self.plan = plan
        self.config = config or BridgeConfig()
        self._tiles: Sequence[Tile] | None = None
        self._patched: list[tuple[nn.Module, str, Any]] = []

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
    def tiles(self, tiles: Sequence[Tile]) -> Iterator[None]:
        """The batch that the next model call holds, row by row (every row one tile)."""
        if self.config.fresh and len(tiles) != len(self.plan.tiles):
            raise ValueError("a fresh bridge needs every tile of the plan in one batch")
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

    # -- geometry ----------------------------------------------------------------------------

    def _rects(self, h: int, w: int) -> tuple[int, list[tuple[int, int, int, int]]]:
        """The layer's downsampling factor and every tile's rect at the layer's resolution."""
        tiles = self._tiles
        assert tiles is not None, "run the model inside bridge.tiles(...)"
        f = tiles[0].height // h
        if f < 1 or tiles[0].height != h * f or tiles[0].width != w * f:
            raise ValueError(f"a {h}x{w} layer does not divide the {tiles[0].height}x{tiles[0].width} tile")
        return f, [(t.y0 // f, t.x0 // f, t.y0 // f + h, t.x0 // f + w) for t in tiles]

    def _canvas(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
        """Every tile's activation placed at its position, averaged where tiles overlap."""
        b, c, h, w = x.shape
        f, rects = self._rects(h, w)
        height, width = -(-self.plan.height // f), -(-self.plan.width // f)
        total = x.new_zeros(1, c, height, width, dtype=torch.float32)
        count = x.new_zeros(1, 1, height, width, dtype=torch.float32)
        for i, (y0, x0, y1, x1) in enumerate(rects):
            total[..., y0:y1, x0:x1] += x[i].float()
            count[..., y0:y1, x0:x1] += 1
        return (total / count.clamp_min(1)).to(x.dtype), rects

    # -- the three channels --------------------------------------------------------------------

    def _conv(self, conv: nn.Conv2d) -> Any:
        ph, pw = _pair(conv.padding)

        def forward(x: torch.Tensor) -> torch.Tensor:
            if self._tiles is None:
                return conv._conv_forward(x, conv.weight, conv.bias)
            canvas, rects = self._canvas(x)
            padded = F.pad(canvas, (pw, pw, ph, ph))
            crops = []
            for i, (y0, x0, y1, x1) in enumerate(rects):
                crop = padded[0, :, y0:y1 + 2 * ph, x0:x1 + 2 * pw].clone()
                crop[:, ph:ph + (y1 - y0), pw:pw + (x1 - x0)] = x[i]  # its own values inside
                crops.append(crop)
            return F.conv2d(torch.stack(crops), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

        return forward

    def _norm(self, norm: nn.GroupNorm) -> Any:
        def forward(x: torch.Tensor) -> torch.Tensor:
            if self._tiles is None:
                return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
            b, c, h, w = x.shape
            g = norm.num_groups
            xs = x.float().reshape(b, g, -1)
            # One set of statistics for the canvas: every tile's pixels count once (overlap 0;
            # overlapping tiles count their shared pixels once per tile).
            mean = xs.mean(dim=(0, 2), keepdim=True)
            var = xs.var(dim=(0, 2), unbiased=False, keepdim=True)
            out = ((xs - mean) * torch.rsqrt(var + norm.eps)).reshape(b, c, h, w)
            if norm.affine:
                out = out * norm.weight.float()[None, :, None, None] + norm.bias.float()[None, :, None, None]
            return out.to(x.dtype)

        return forward

    def _attend(self, attend: Any) -> Any:
        def bridged(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if self._tiles is None:
                return attend(q, k, v)
            b, heads, t, d = k.shape
            # Every tile's queries over all tiles' keys and values.
            k_all = k.transpose(0, 1).reshape(1, heads, b * t, d).expand(b, -1, -1, -1)
            v_all = v.transpose(0, 1).reshape(1, heads, b * t, d).expand(b, -1, -1, -1)
            return attend(q, k_all, v_all)

        return bridged


def _pair(v: int | tuple[int, ...] | str) -> tuple[int, int]:
    if isinstance(v, str):  # "same" / "valid": sizes kept by the module itself
        return (0, 0)
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))
