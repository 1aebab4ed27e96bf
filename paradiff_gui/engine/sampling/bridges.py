"""Bridges: the tiles of one step compute as parts of one model while they go through it.

Without bridges each tile is alone inside the model: its padded convolutions see zeros past the
tile edge, its GroupNorms normalise with the tile's own statistics, its self-attention sees its
own tokens only. A :class:`Bridge` is installed on a model's modules for a run and connects the
tiles through three channels, each switchable:

- **halos** — a padded convolution takes the pixels past a tile edge from the neighbours'
  activations at that layer (averaged where tiles overlap), zeros only past the canvas edge;
- **norms** — GroupNorm statistics shared between tiles: over the whole canvas (``"canvas"``)
  or over a window around each tile (``"window"``: every tile's statistics weighted by a tent
  on the distance between tile centres, ``window`` tiles wide on each side), so statistics vary
  smoothly from tile to tile;
- **attention** — each self-attention layer's queries also attend to the tokens of the layer
  that lie outside the tile but within ``reach`` px of its border (``None``: the whole canvas),
  with their keys as the neighbours computed them (a diffusion transformer's keys carry their
  positions: rotary on the canvas, or SD3's table added at the input),
  optionally with the logits rescaled for the larger token count (``rescale``: the factor
  sqrt(log N / log n) of Jin et al. 2023, n the tile's own tokens, N the tokens attended).

Geometry: at a layer ``f`` times smaller than the model's input, a tile covers the rect
(y0/f, x0/f)…; a start that is not a multiple of ``f`` is rounded (the neighbours' values are
then up to f/2 px off at that layer; ``TilePlan`` starts are whole latent pixels). What a tile
receives is kept compactly: only the layer pixels that some tile reads (for a 3×3 convolution
a one-pixel ring around each tile), summed over the tiles that cover them and divided by how
many do.

``fresh=True`` takes the neighbours' values from the same call (all the process's tiles in one
batch; with several processes ``reduce`` sums each bridged layer's values over them at that layer):
with overlap 0 and every channel on (``norms="canvas"``, ``pool="total"``, ``reach=None``), the
tiled call equals one call of the model on the whole canvas — the proof that the bridges carry
everything a tile border cuts (``tests/engine/test_bridges.py``) — and it is generation's
``bridge_step same`` (``config_for(..., same_step=True)``). ``fresh=False`` (``bridge_step
previous``, the default) takes
the neighbours' values from the **previous step** (DistriFusion, Li et al. 2024): a tile's own
values are always current, every other tile's come from step t−1, so the picture does not
depend on how tiles are batched or which GPU runs them; :meth:`Bridge.end_step` closes a step
(and, with several processes, sums what every rank saw: ``reduce``). At step 0 there is nothing
from a previous step and the tiles run unbridged.

A model opts in by exposing its pieces as modules: ``nn.Conv2d`` with zero padding,
``nn.GroupNorm``, and self-attention modules with an ``attend(q, k, v, mask=None)`` method
(q, k, v of shape (batch, heads, tokens, head_dim), tokens row-major over the layer's grid;
``mask`` as ``F.scaled_dot_product_attention``'s ``attn_mask``; see ``models/terrain/unet.py``).
A joint attention (FLUX, SD3: text and image tokens in one attention) passes ``context=n``: the
first ``n`` tokens of k and v are not on the grid; they are attended as they are and never sent
to the neighbours (``models/flux/attention.py``, ``models/sd3/attention.py``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.plan import Tile, TilePlan

NORM_MODES = ("off", "canvas", "window")


POOLS = ("total", "within")


@dataclass(frozen=True)
class BridgeConfig:
    halos: bool = True
    norms: str = "canvas"  # one of NORM_MODES
    attention: bool = True
    fresh: bool = True  # neighbours' values from this call (all the process's tiles in one batch)
    reach: int | None = None  # attention: model-input px past the tile edge; None = whole canvas
    rescale: bool = False  # attention: logits × sqrt(log N / log n) (Jin et al. 2023)
    window: float = 1.0  # norms="window": tent half-width, in tiles (its area: one tile's)
    # norms: how tiles' second moments pool. "total": raw second moments, so the tiles' differing
    # means count as variance (a whole-canvas GroupNorm: the exactness proof); "within": each
    # tile's variance around its own mean (tiles that differ only by an offset keep their spread).
    pool: str = "total"
    mean_share: float = 1.0  # norms: the pooled mean's weight against the tile's own (0: own only)
    var_share: float = 1.0  # norms: the pooled variance's weight against the tile's own
    min_factor: int = 1  # bridge only layers at least this many times smaller than the input
    first_step: int = 0  # steps before this one run unbridged (a warm-up)

    def __post_init__(self) -> None:
        if self.norms not in NORM_MODES:
            raise ValueError(f"norms must be one of {NORM_MODES}, got {self.norms!r}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.reach is not None and self.reach < 1:
            raise ValueError(f"reach must be at least 1 px (or None for the whole canvas), got {self.reach}")
        if self.window <= 0:
            raise ValueError(f"window must be above 0 tiles, got {self.window}")
        for name in ("mean_share", "var_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be from 0 to 1, got {getattr(self, name)}")
        if self.min_factor < 1 or self.first_step < 0:
            raise ValueError("min_factor must be at least 1 and first_step at least 0")


class _Ring:
    """The layer pixels each tile reads from its neighbours at one layer: those outside the
    tile's rect and within (rh, rw) px of it, clipped to the canvas — kept as slots of one
    compact store shared by all tiles."""

    def __init__(self, plan: TilePlan, f: int, h: int, w: int, rh: int, rw: int, device: torch.device) -> None:
        H, W = -(-plan.height // f), -(-plan.width // f)
        self.rects = []
        for t in plan.tiles:
            y0, x0 = min(round(t.y0 / f), H - h), min(round(t.x0 / f), W - w)
            self.rects.append((y0, x0, y0 + h, x0 + w))
        rings = []
        for y0, x0, y1, x1 in self.rects:
            ys, xs = np.mgrid[max(y0 - rh, 0):min(y1 + rh, H), max(x0 - rw, 0):min(x1 + rw, W)]
            outside = ~((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1))
            rings.append((ys[outside], xs[outside]))
        flat = [ys * W + xs for ys, xs in rings]
        union = np.unique(np.concatenate(flat)) if flat else np.zeros(0, np.int64)
        slot_of = np.full(H * W, -1, np.int64)
        slot_of[union] = np.arange(len(union))
        self.size = len(union)
        # Where each tile's own pixels feed the store: (tile-local flat index, slot).
        self.feeds = []
        covered = np.zeros(self.size, np.float32)
        for y0, x0, y1, x1 in self.rects:
            block = slot_of.reshape(H, W)[y0:y1, x0:x1].reshape(-1)
            local = np.nonzero(block >= 0)[0]
            covered[block[local]] += 1
            self.feeds.append((torch.from_numpy(local).to(device), torch.from_numpy(block[local]).to(device)))
        self.coverage = torch.from_numpy(covered).clamp_min(1).to(device)
        # What each tile reads, padded to the longest ring: slots, validity, and (for halos) the
        # position in the tile's padded crop.
        self.longest = max((len(f_) for f_ in flat), default=0)
        n = len(rings)
        slots = np.zeros((n, self.longest), np.int64)
        valid = np.zeros((n, self.longest), bool)
        crop = np.full((n, self.longest), (h + 2 * rh) * (w + 2 * rw), np.int64)  # pad: a spare column
        for i, ((ys, xs), (y0, x0, _, _)) in enumerate(zip(rings, self.rects)):
            k = len(ys)
            slots[i, :k] = slot_of[ys * W + xs]
            valid[i, :k] = True
            crop[i, :k] = (ys - y0 + rh) * (w + 2 * rw) + (xs - x0 + rw)
        self.slots = torch.from_numpy(slots).to(device)
        self.valid = torch.from_numpy(valid).to(device)
        self.ragged = ~valid.all(1)  # (host) tiles whose ring is shorter than the longest
        self.crop = torch.from_numpy(crop).to(device)
        self.counts = torch.from_numpy(valid.sum(1)).to(device)


def config_for(bridges: str, reach: int | None = None, same_step: bool = False) -> BridgeConfig:
    """The generation configuration of a request's ``bridges`` value (not ``off``): neighbours'
    values from the previous step, or with ``same_step`` from the same step (every tile of a
    process in one call); ``reach`` in model-input px (the attention's strip along each border).
    Statistics pool within-tile variances (``pool="within"``)."""
    common = dict(fresh=same_step, pool="within")
    return {
        "halos": BridgeConfig(halos=True, norms="off", attention=False, **common),
        "norms": BridgeConfig(halos=False, norms="window", attention=False, **common),
        "attention": BridgeConfig(halos=False, norms="off", attention=True, reach=reach, **common),
        "full": BridgeConfig(norms="window", reach=reach, **common),
    }[bridges]


class Bridge:
    """Connects the tiles of a model call; install with :meth:`installed`, then run the model
    inside :meth:`tiles` for each batch."""

    def __init__(self, model: nn.Module, plan: TilePlan, config: BridgeConfig | None = None,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, local: int | None = None) -> None:
        self.model = model
        self.plan = plan
        self.config = config or BridgeConfig()
        # With several processes: sums a tensor over them (previous-step stores at each step's
        # end; same-step values at every bridged layer of every call).
        self.reduce = reduce
        self.local = len(plan.tiles) if local is None else local  # the tiles this process runs
        self.step = 0  # steps closed by end_step
        self._tiles: Sequence[Tile] | None = None
        self._fresh = self.config.fresh
        self._patched: list[tuple[nn.Module, str, Any]] = []
        self._rings: dict[tuple[int, int, int, int, int], _Ring] = {}
        self._weights: torch.Tensor | None = None
        # Previous-step mode: what this step's calls saw (per layer), and the step before's.
        self._cur: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        self._prev: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        self._sizes: dict[tuple[int, str], int] = {}
        self._pending = []

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
        if self._fresh and len(tiles) != self.local:
            raise ValueError(f"a fresh call needs every tile of the process in one batch ({self.local}); "
                             f"got {len(tiles)}")
        self._tiles = tiles
        self._pending: list[tuple[tuple[int, str], torch.Tensor, torch.Tensor]] = []
        try:
            yield
            # Kept only once the call went through: a call that failed (out of memory) and is
            # retried in halves must not add its tiles twice.
            for key, slots, values in self._pending:
                here = self._cur.get(key)
                if here is None:
                    here = self._cur[key] = {"sum": values.new_zeros(*values.shape[:2], self._sizes[key])}
                here["sum"][:, :, slots] += values
        finally:
            self._tiles = None
            self._pending = []

    def _install(self) -> None:
        c = self.config
        for module in self.model.modules():
            if c.halos and isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" \
                    and any(p > 0 for p in _pair(module.padding)):
                self._patch(module, "forward", self._conv(module))
            elif c.norms != "off" and isinstance(module, nn.GroupNorm):
                self._patch(module, "forward", self._norm(module))
            elif c.attention and callable(getattr(module, "attend", None)):
                self._patch(module, "attend", self._attend(module, module.attend))

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

    def kept_bytes(self) -> int:
        """What the bridge holds between calls: this step's values and the previous step's."""
        return sum(t.numel() * t.element_size() for d in (self._cur, self._prev) for s in d.values()
                   for t in s.values())

    def end_step(self) -> None:
        """The step's values become the neighbours' values for the next step (previous-step
        mode); with several processes each rank saw its own tiles, and ``reduce`` sums them."""
        parts = [(store, name) for store in self._cur.values() for name in store]
        if self.reduce is not None:
            # Every store summed over the ranks in place (each rank added its own tiles; the
            # layers were met in the same order everywhere): no second copy of what is kept.
            for store, name in parts:
                store[name] = self.reduce(store[name])
        self._prev, self._cur = self._cur, {}
        self.step += 1

    def _off(self, f: int) -> bool:
        """Whether a layer ``f`` times smaller than the input runs unbridged now (a shallow layer
        below ``min_factor``, or a warm-up step before ``first_step``)."""
        return f < self.config.min_factor or self.step < self.config.first_step

    # -- geometry ----------------------------------------------------------------------------

    def _layout(self, rows: int, h: int, w: int) -> tuple[int, int]:
        """The layer's downsampling factor and how many halves the batch holds (2 with
        classifier-free guidance: all unconditional rows, then all conditional ones)."""
        tiles = self._tiles
        assert tiles is not None, "run the model inside bridge.tiles(...)"
        f = tiles[0].height // h
        if f < 1 or tiles[0].height != h * f or tiles[0].width != w * f:
            raise ValueError(f"a {h}x{w} layer does not divide the {tiles[0].height}x{tiles[0].width} tile")
        if rows % len(tiles):
            raise ValueError(f"{rows} rows are not whole halves of {len(tiles)} tiles")
        return f, rows // len(tiles)

    def _ring(self, f: int, h: int, w: int, rh: int, rw: int, device: torch.device) -> _Ring:
        key = (f, h, w, rh, rw)
        if key not in self._rings:
            self._rings[key] = _Ring(self.plan, f, h, w, rh, rw, device)
        return self._rings[key]

    def _index(self, device: torch.device) -> torch.Tensor:
        assert self._tiles is not None
        return torch.tensor([t.index for t in self._tiles], device=device)

    def _store(self, key: tuple[int, str], ring: _Ring, x: torch.Tensor, halves: int) -> torch.Tensor | None:
        """Add this call's layer values (rows, C, h, w), tile by tile in batch order, to the
        step's store for ``key``; return the store the neighbours' values come from (this
        call's when fresh, the previous step's otherwise; None at step 0)."""
        assert self._tiles is not None
        n, c = len(self._tiles), x.shape[1]
        flat = x.reshape(x.shape[0], c, -1)
        if not self.config.fresh:  # kept for the next step (added when the call has gone through)
            self._sizes[key] = ring.size
            for i, t in enumerate(self._tiles):  # tile by tile: the same sums however tiles are batched
                local, slots = ring.feeds[t.index]
                self._pending.append((key, slots, _kept(flat[i::n][:, :, local])))
        if self._fresh:
            here = x.new_zeros(halves, c, ring.size, dtype=torch.float32)
            for i, t in enumerate(self._tiles):
                local, slots = ring.feeds[t.index]
                here[:, :, slots] += flat[i::n][:, :, local].float()
            if self.reduce is not None and self.config.fresh:  # every process's tiles, this very layer
                here = self.reduce(here)
            return here
        prev = self._prev.get(key)
        return None if prev is None else prev["sum"]

    def _read(self, store: torch.Tensor, ring: _Ring, halves: int, dtype: torch.dtype) -> torch.Tensor:
        """Each row's ring values, (rows, C, longest): the store averaged where tiles overlap."""
        slots = ring.slots[self._index(store.device)]  # (n, longest)
        got = (store[:, :, slots] / ring.coverage[slots]).to(dtype)  # (halves, C, n, longest)
        return got.permute(0, 2, 1, 3).reshape(halves * len(slots), store.shape[1], ring.longest)

    # -- the three channels --------------------------------------------------------------------

    def _conv(self, conv: nn.Conv2d) -> Any:
        ph, pw = _pair(conv.padding)
        key = (id(conv), "halo")

        def forward(x: torch.Tensor) -> torch.Tensor:
            if self._tiles is None:
                return conv._conv_forward(x, conv.weight, conv.bias)
            rows, c, h, w = x.shape
            f, halves = self._layout(rows, h, w)
            if self._off(f) and self._fresh:
                return conv._conv_forward(x, conv.weight, conv.bias)
            ring = self._ring(f, h, w, ph, pw, x.device)
            store = self._store(key, ring, x, halves)
            if store is None or self._off(f):
                return conv._conv_forward(x, conv.weight, conv.bias)  # step 0: no neighbour values yet
            size = (h + 2 * ph) * (w + 2 * pw)
            crops = x.new_zeros(rows, c, size + 1)  # + a spare column for the rings' padding
            crops[:, :, :size].view(rows, c, h + 2 * ph, w + 2 * pw)[:, :, ph:ph + h, pw:pw + w] = x
            where = ring.crop[self._index(x.device)].repeat(halves, 1)[:, None].expand(-1, c, -1)
            crops.scatter_(2, where, self._read(store, ring, halves, x.dtype))
            crops = crops[:, :, :size].view(rows, c, h + 2 * ph, w + 2 * pw)
            return F.conv2d(crops, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

        return forward

    def _tile_weights(self, device: torch.device) -> torch.Tensor:
        """(tiles, tiles): how much each tile's statistics count in each tile's GroupNorms."""
        if self._weights is None:
            tiles = self.plan.tiles
            if self.config.norms == "canvas":
                wts = np.ones((len(tiles), len(tiles)), np.float64)
            else:
                cy = np.array([(t.y0 + t.y1) / 2 for t in tiles])
                cx = np.array([(t.x0 + t.x1) / 2 for t in tiles])
                sy = self.config.window * tiles[0].height
                sx = self.config.window * tiles[0].width
                wts = np.clip(1 - np.abs(cy[:, None] - cy[None]) / sy, 0, None) \
                    * np.clip(1 - np.abs(cx[:, None] - cx[None]) / sx, 0, None)
            self._weights = torch.from_numpy(wts).float().to(device)
        return self._weights

    def _norm(self, norm: nn.GroupNorm) -> Any:
        key = (id(norm), "norm")
        c = self.config

        def plain(x: torch.Tensor) -> torch.Tensor:
            return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)

        def forward(x: torch.Tensor) -> torch.Tensor:
            if self._tiles is None or x.ndim != 4:  # (a norm over tokens, (B, C, T), has no grid)
                return plain(x)
            rows, ch, h, w = x.shape
            f, halves = self._layout(rows, h, w)
            n, total = len(self._tiles), len(self.plan.tiles)
            idx = self._index(x.device)
            xs = x.float().reshape(rows, norm.num_groups, -1)
            var, mean = torch.var_mean(xs, dim=-1, correction=0)
            own = torch.stack([mean, var + mean * mean]).view(2, halves, n, -1)  # each tile's E[x], E[x²]
            if not c.fresh:  # kept for the next step, also while this layer or step is not bridged
                here = self._cur.get(key)
                if here is None:
                    here = self._cur[key] = {"stats": own.new_zeros(2, halves, total, own.shape[-1]),
                                             "seen": own.new_zeros(total)}
                here["stats"][:, :, idx] = own
                here["seen"][idx] = 1
            if self._off(f):
                return plain(x)
            wts = self._tile_weights(x.device)
            if self._fresh:
                # This call's tiles (and, with several processes, every other process's: the
                # same step's statistics of every tile), each tile's pixels once.
                table = own.new_zeros(2, halves, total, own.shape[-1])
                table[:, :, idx] = own
                seen = own.new_zeros(total)
                seen[idx] = 1
                if self.reduce is not None and c.fresh:
                    packed = self.reduce(torch.cat([table.flatten(), seen]))
                    table, seen = packed[:-total].view_as(table), packed[-total:]
                theirs = wts[idx] * seen[None]  # (n, total), the tile itself included
                mine = theirs.new_zeros(n)
            else:
                prev = self._prev.get(key)
                if prev is None:  # step 0: no neighbour values yet
                    return plain(x)
                # Own statistics fresh, every other tile's from the previous step.
                table, seen = prev["stats"], prev["seen"]
                theirs = wts[idx] * seen[None]
                theirs[torch.arange(n, device=x.device), idx] = 0
                mine = wts[idx, idx]
            pooled_q = c.pool == "total"
            # Pool E[x] and either E[x²] (total) or each tile's own variance (within).
            second = (lambda t: t[1]) if pooled_q else (lambda t: t[1] - t[0] * t[0])
            weight = (mine + theirs.sum(1))[None, :, None]  # (1, n, 1)
            m = (mine[None, :, None] * own[0] + torch.einsum("ij,hjg->hig", theirs, table[0])) / weight
            s = (mine[None, :, None] * second(own) + torch.einsum("ij,hjg->hig", theirs, second(table))) / weight
            v = s - m * m if pooled_q else s
            own_m, own_v = own[0], own[1] - own[0] * own[0]
            m = c.mean_share * m + (1 - c.mean_share) * own_m
            v = (c.var_share * v + (1 - c.var_share) * own_v).clamp_min(0)
            # (x − mean)·rsqrt(var + eps)·weight + bias as one scale and shift per row and channel,
            # applied in one pass over the activations (the layer's cost on a CPU is memory traffic).
            per = ch // norm.num_groups
            scale = torch.rsqrt(v.reshape(rows, -1) + norm.eps).repeat_interleave(per, dim=1)  # (rows, C)
            shift = -m.reshape(rows, -1).repeat_interleave(per, dim=1) * scale
            if norm.affine:
                scale, shift = scale * norm.weight.float(), shift * norm.weight.float() + norm.bias.float()
            dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
            out = torch.addcmul(shift[:, :, None, None].to(dtype), x.to(dtype), scale[:, :, None, None].to(dtype))
            return out.to(x.dtype)

        return forward

    def _attend(self, module: nn.Module, attend: Any) -> Any:
        key = (id(module), "attention")

        def bridged(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None = None, context: int = 0) -> torch.Tensor:
            if self._tiles is None or mask is not None:
                return attend(q, k, v, mask)
            rows, heads, t, d = k.shape
            t -= context  # the tile's grid follows the context tokens (a joint attention's text)
            tile = self._tiles[0]
            f = math.isqrt(tile.height * tile.width // t)
            h, w = tile.height // f, tile.width // f
            if h * w != t:
                raise ValueError(f"{t} tokens are not a {tile.height}x{tile.width} tile's grid")
            _, halves = self._layout(rows, h, w)
            if self.config.reach is None:
                rh, rw = -(-self.plan.height // f), -(-self.plan.width // f)
            else:
                rh = rw = -(-self.config.reach // f)
            if self._off(f) and self._fresh:
                return attend(q, k, v)
            ring = self._ring(f, h, w, rh, rw, k.device)
            # Keys and values as one layer of 2·heads·d channels over the tile's grid.
            kv = torch.cat([k[:, :, context:], v[:, :, context:]], dim=1)
            kv = kv.transpose(2, 3).reshape(rows, 2 * heads * d, h, w)
            store = self._store(key, ring, kv, halves)
            if store is None or ring.longest == 0 or self._off(f):
                return attend(q, k, v)  # step 0: no neighbour values yet (or nothing in reach)
            extra = self._read(store, ring, halves, k.dtype).view(rows, 2 * heads, d, ring.longest).transpose(2, 3)
            k_all = torch.cat([k, extra[:, :heads]], dim=2)
            v_all = torch.cat([v, extra[:, heads:]], dim=2)
            idx = self._index(k.device)
            counts = ring.counts[idx].repeat(halves)  # neighbour tokens per row
            if self.config.rescale and t > 1:
                q = q * torch.sqrt(torch.log((t + counts).float()) / math.log(t)).to(q.dtype)[:, None, None, None]
            attn_mask = None
            if ring.ragged[[tile.index for tile in self._tiles]].any():
                own = torch.ones(len(idx), context + t, dtype=torch.bool, device=k.device)
                attn_mask = torch.cat([own, ring.valid[idx]], dim=1).repeat(halves, 1)[:, None, None, :]
            return attend(q, k_all, v_all, attn_mask)

        return bridged


def _kept(values: torch.Tensor) -> torch.Tensor:
    """Values as a store keeps them: half precision stays half (a pixel sums at most a few tiles'
    values; at 8192² SD 1.5 this halves what bridges keep), anything else becomes float32."""
    return values if values.dtype in (torch.float16, torch.bfloat16) else values.float()


def _pair(v: int | tuple[int, ...] | str) -> tuple[int, int]:
    if isinstance(v, str):  # "same" / "valid": sizes kept by the module itself
        return (0, 0)
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))
