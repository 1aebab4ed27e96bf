"""VAE decoding of the finished canvas, tile by tile above a size threshold.

Two tiled decoders, so the GPU only ever holds one tile's activations:

- :func:`decode_synced` (used whenever the host, or the scratch disk, has room for it): stage by
  stage over the whole canvas, every GroupNorm with whole-canvas statistics and the middle
  block's attention over the whole canvas — equal to a whole decode up to float rounding;
- :func:`decode_latents`: overlapping latent tiles decoded independently (per-tile GroupNorm
  statistics: each tile its own brightness and contrast), cross-faded with cosine windows and
  assembled on the CPU; the fallback when the host cannot hold the exact decode's canvases.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...core import blend
from ...core.plan import TilePlan
from ...runtime.memory import SCRATCH_ENV, GiB, decode_room, disk_free, host_available, scratch_dir

DECODE_TILE = 64  # latent px (512 image px for SD)
DECODE_OVERLAP = 16  # latent px
DECODE_THRESHOLD = 96  # latent px a side; at or below this the canvas decodes in one piece


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[-1, 1] float HWC → uint8, rounding like diffusers' image processor."""
    return ((image / 2 + 0.5).clip(0, 1) * 255).round().astype(np.uint8)


@torch.no_grad()
def decode_latents(
    decode_fn: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    scale: int,
    on_progress: Callable[[int, int], None],
    *,
    tile: int = DECODE_TILE,
    overlap: int = DECODE_OVERLAP,
    threshold: int = DECODE_THRESHOLD,
) -> np.ndarray:
    """Decode (1, C, H, W) latents with ``decode_fn`` (latents → (1, 3, H*s, W*s) in [-1, 1]).

    Returns the (H*s, W*s, 3) float32 image in [-1, 1] on the CPU.
    """
    H, W = latents.shape[-2:]
    if threshold >= H and threshold >= W:
        on_progress(0, 1)
        image = decode_fn(latents)[0].float().permute(1, 2, 0).cpu().numpy()
        on_progress(1, 1)
        return image
    plan = TilePlan.create(H, W, overlap=overlap, tile=tile, scale=scale)
    out = np.zeros((H * scale, W * scale, 3), dtype=np.float32)
    wsum = np.zeros((H * scale, W * scale, 1), dtype=np.float32)
    on_progress(0, len(plan))
    for done, t in enumerate(plan.tiles, 1):
        crop = latents[..., t.y0 : t.y1, t.x0 : t.x1]
        img = decode_fn(crop)[0].float().permute(1, 2, 0).cpu().numpy()
        win = blend.tile_window(plan, t, "cosine", upscale=scale)[..., None]
        x0, y0, x1, y1 = plan.image_rect(t)
        out[y0:y1, x0:x1] += img * win
        wsum[y0:y1, x0:x1] += win
        on_progress(done, len(plan))
    out /= wsum
    return out


# -- Exact tiled decoding: every GroupNorm with whole-canvas statistics ---------------------------
#
# Per-tile decoding normalises each tile with its own statistics (the 26 dB above). Exact
# statistics need every tile to reach a GroupNorm before any tile passes it, so the decoder runs
# stage by stage over the whole canvas: a stage is the stretch between two GroupNorms, run band by
# band (rows of tiles, top to bottom) on the device; its output is kept on the host as one canvas
# whose group statistics (float64) are summed as its bands are written, and the next stage reads
# each tile's core plus a halo of one pixel (what its 3x3 convolution needs) from it.
# Convolutions and normalisation are then exact. The middle block's self-attention spans the
# whole latent canvas in a whole decode, and here too: every pixel's key and value are put on the
# device first, then each tile's queries attend to all of them (tile-local attention, within a
# 16 px halo, remains as a cheaper option: ATTENTION_WHOLE_PX).
#
# Stage canvases are large (SD1.5 at 8192², fp16: up to 68.7 GB alive at once), so where the
# host cannot hold them they are *spilled*: each band goes to an anonymous temporary file in a
# scratch folder as it is written (unlinked at creation, so the space returns to the disk when the
# file is closed — after the stage, on an error or a cancel, or when the process dies, even by
# SIGKILL), the next stage reads its bands back with explicit reads (not a memory map, whose pages
# would count as the process's resident memory), and a canvas's files are closed as soon as its
# last reader has passed them. Bands are then sized to BAND_BYTES rather than a tile's height, so
# host memory stays bounded whatever the canvas. The picture is the same: the same tiles' halos,
# the same sums.

SYNC_CORE = 64  # latent px: the tile grid of every stage (scaled with the feature maps)
ATTENTION_HALO = 16  # latent px of context around a tile for the tile-local attention (an option)
# The middle block's attention runs over the whole canvas, as in a whole decode, up to this many
# latent px (None: always). Its cost grows with the square of the canvas (SD1.5 at 8192²: 2.25
# PFLOP, against 0.63 PFLOP for all the convolutions: `bench_decode_memory.py flops`); tile-local
# attention is the cheaper option.
ATTENTION_WHOLE_PX: int | None = None
ATTENTION_CHUNK_BYTES = 1 << 30  # the attention scores of one chunk of queries, if a kernel keeps them
BAND_BYTES = 512 * 2**20  # a spilled stage's bands in host memory: its inputs' and its output's
SPILL_MIN_BYTES = 64 * 2**20  # when spilling, smaller canvases stay in memory (at most three at once)
SPILL_ROWS_MIN = 8  # feature-map rows of a spilled band, at least


def host_budget() -> int:
    """Host memory the exact decode may take: half of what the kernel can give now without
    swapping (MemAvailable: the page cache a spilled decode fills counts as available), 8 GiB if
    unknown — and never more than the user's host-memory budget leaves it (runtime.memory)."""
    available = host_available()
    machine = 8 << 30 if available is None else available // 2
    room = decode_room()
    return machine if room is None else min(machine, room)


class _Stats:
    """Per-group sums of what a canvas receives (float64), a few rows at a time."""

    def __init__(self, groups: int) -> None:
        self.groups = groups
        self.s1 = torch.zeros(groups, dtype=torch.float64)
        self.s2 = torch.zeros(groups, dtype=torch.float64)
        self.n = 0

    def add(self, t: torch.Tensor, rows: int = 64) -> None:
        _, c, h, w = t.shape
        for y in range(0, h, rows):
            part = t[0, :, y : y + rows].double().reshape(self.groups, -1)
            self.s1 += part.sum(dim=1)
            self.s2 += (part * part).sum(dim=1)
        self.n += c // self.groups * h * w

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.s1 / self.n
        return mean, (self.s2 / self.n - mean * mean).clamp(min=0)


def _group_stats(t: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean and variance of a host canvas (1, C, H, W), float64."""
    stats = _Stats(groups)
    stats.add(t)
    return stats.result()


def _norm(x: torch.Tensor, norm: torch.nn.GroupNorm, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``norm`` applied to ``x`` (N, C, ...) with the given group statistics instead of x's own."""
    shape, n, c, g = x.shape, x.shape[0], x.shape[1], norm.num_groups
    mean, var = (s.to(x.device, torch.float32) for s in stats)
    y = (x.float().reshape(n, g, -1) - mean[None, :, None]) * torch.rsqrt(var[None, :, None] + norm.eps)
    y = y.reshape(shape)
    if norm.affine:
        extra = [1] * (len(shape) - 2)
        y = y * norm.weight.float().view(1, c, *extra) + norm.bias.float().view(1, c, *extra)
    return y.to(x.dtype)


def synced_decode_supported(vae: torch.nn.Module) -> bool:
    """Whether ``vae`` has the plain AutoencoderKL decoder layout this runner reproduces."""
    dec = getattr(vae, "decoder", None)
    if dec is None or not all(hasattr(dec, a) for a in ("conv_in", "mid_block", "up_blocks", "conv_norm_out")):
        return False
    if not isinstance(dec.conv_norm_out, torch.nn.GroupNorm):
        return False  # spatial norms (MoVQ) condition on the latents
    resnets = list(dec.mid_block.resnets) + [r for b in dec.up_blocks for r in b.resnets]
    return all(getattr(r, "time_emb_proj", None) is None and r.upsample is None and r.downsample is None
               and isinstance(r.norm1, torch.nn.GroupNorm) and isinstance(r.norm2, torch.nn.GroupNorm)
               for r in resnets)


class _Canvas:
    """A stage's output (1, C, H, W) on the host, written in row bands from the top and read back
    in row ranges (which, along a wrapped axis, may run past the edges). With ``groups`` it sums
    the group statistics of what is written, for the GroupNorm that reads it next."""

    def __init__(self, c: int, h: int, w: int, dtype: torch.dtype, groups: int | None) -> None:
        self.c, self.h, self.w, self.dtype = c, h, w, dtype
        self.sums = _Stats(groups) if groups else None

    def band(self, y0: int, y1: int) -> torch.Tensor:
        """A tensor for rows [y0, y1) to fill and hand to :meth:`commit`."""
        return torch.empty((1, self.c, y1 - y0, self.w), dtype=self.dtype)

    def commit(self, y0: int, band: torch.Tensor) -> None:
        if self.sums is not None:
            self.sums.add(band)
        self._store(y0, band)

    def stats(self, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sums is None or self.sums.groups != groups:
            raise RuntimeError("a stage canvas read by a GroupNorm must sum its statistics while written")
        return self.sums.result()

    def rows(self, a0: int, a1: int) -> torch.Tensor:
        """Rows [a0, a1) as (1, C, a1 - a0, W); outside [0, H) they come round from the other edge."""
        pieces, y = [], a0
        while y < a1:
            start = y % self.h
            end = min(self.h, start + (a1 - y))
            pieces.append(self._load(start, end))
            y += end - start
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)

    def release(self, below: int, keep_top: int = 0) -> None:
        """No reader needs rows above ``below`` any more, except the first ``keep_top``."""

    def close(self) -> None:
        """Nobody reads this canvas any more."""

    def _store(self, y0: int, band: torch.Tensor) -> None:
        raise NotImplementedError

    def _load(self, a0: int, a1: int) -> torch.Tensor:
        raise NotImplementedError


class _MemoryCanvas(_Canvas):
    def __init__(self, c: int, h: int, w: int, dtype: torch.dtype, groups: int | None,
                 data: torch.Tensor | None = None) -> None:
        super().__init__(c, h, w, dtype, groups)
        self.data = torch.empty((1, c, h, w), dtype=dtype) if data is None else data

    def band(self, y0: int, y1: int) -> torch.Tensor:
        return self.data[:, :, y0:y1]  # written in place: no copy

    def _store(self, y0: int, band: torch.Tensor) -> None:
        if band.data_ptr() != self.data[:, :, y0:].data_ptr():
            self.data[:, :, y0 : y0 + band.shape[2]] = band

    def _load(self, a0: int, a1: int) -> torch.Tensor:
        return self.data[:, :, a0:a1]

    def stats(self, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sums is None or self.sums.groups != groups:
            return _group_stats(self.data, groups)  # the program's input: nothing summed it
        return self.sums.result()

    def close(self) -> None:
        self.data = torch.empty(0, dtype=self.dtype)


class _SumsOnly(_Canvas):
    """A canvas nobody reads back: it only sums the statistics of what is written to it."""

    def _store(self, y0: int, band: torch.Tensor) -> None:
        pass


def _read_exactly(f: Any, into: memoryview, offset: int) -> None:
    """Fill ``into`` from ``f`` at ``offset`` (a read returns at most ~2 GiB on Linux: loop)."""
    done = 0
    while done < len(into):
        if hasattr(os, "preadv"):
            got = os.preadv(f.fileno(), [into[done:]], offset + done)
        else:  # Windows: no positional reads
            f.seek(offset + done)
            got = f.readinto(into[done:])
        if not got:
            raise OSError(f"a decode stage's scratch file came back short ({done} of {len(into)} bytes)")
        done += got


class _SpilledCanvas(_Canvas):
    """Each committed band in an anonymous temporary file of ``folder``, rows outermost (H, C, W),
    so that any run of rows is one contiguous read."""

    def __init__(self, c: int, h: int, w: int, dtype: torch.dtype, groups: int | None, folder: Path) -> None:
        super().__init__(c, h, w, dtype, groups)
        self.folder = folder
        self.row_bytes = c * w * torch.tensor([], dtype=dtype).element_size()
        self.chunks: list[tuple[int, int, Any]] = []  # (first row, end row, file)

    def _store(self, y0: int, band: torch.Tensor) -> None:
        rows = band[0].permute(1, 0, 2).contiguous()  # (r, C, W)
        f = tempfile.TemporaryFile(dir=self.folder)  # noqa: SIM115 (kept open until released)
        try:
            f.write(memoryview(rows.view(torch.uint8).numpy()).cast("B"))
            f.flush()
        except BaseException:
            f.close()
            raise
        self.chunks.append((y0, y0 + band.shape[2], f))

    def _load(self, a0: int, a1: int) -> torch.Tensor:
        out = torch.empty((a1 - a0, self.c, self.w), dtype=self.dtype)
        view = memoryview(out.view(torch.uint8).numpy()).cast("B")
        for y0, y1, f in self.chunks:
            lo, hi = max(a0, y0), min(a1, y1)
            if lo < hi:
                _read_exactly(f, view[(lo - a0) * self.row_bytes : (hi - a0) * self.row_bytes],
                              (lo - y0) * self.row_bytes)
        return out.permute(1, 0, 2)[None]

    def release(self, below: int, keep_top: int = 0) -> None:
        keep = []
        for y0, y1, f in self.chunks:
            if y1 <= below and y0 >= keep_top:
                f.close()  # the file was unlinked at creation: its space goes back now
            else:
                keep.append((y0, y1, f))
        self.chunks = keep

    def close(self) -> None:
        self.release(self.h + 1)


def _norm_groups(op: tuple | None) -> int | None:
    """The group count of the GroupNorm that reads an op's input first (None: no GroupNorm)."""
    if op is None:
        return None
    kind, *args = op
    if kind == "resnet":
        return args[0].norm1.num_groups
    if kind == "attention":
        return args[0].group_norm.num_groups
    if kind == "out":
        return args[0].num_groups
    return None


def _mid_ops(mid: torch.nn.Module) -> list[tuple]:
    ops: list[tuple] = [("resnet", mid.resnets[0])]
    for attn, resnet in zip(mid.attentions, mid.resnets[1:]):
        if attn is not None:
            ops.append(("attention", attn))
        ops.append(("resnet", resnet))
    return ops


def _decoder_ops(vae: torch.nn.Module) -> list[tuple]:
    dec = vae.decoder
    ops: list[tuple] = []
    if getattr(vae, "post_quant_conv", None) is not None:
        ops.append(("module", vae.post_quant_conv, 0))
    ops.append(("module", dec.conv_in, 1))
    ops += _mid_ops(dec.mid_block)
    for block in dec.up_blocks:
        ops += [("resnet", r) for r in block.resnets]
        ops += [("upsample", u) for u in (block.upsamplers or [])]
    ops.append(("out", dec.conv_norm_out, dec.conv_act, dec.conv_out))
    return ops


def _encoder_ops(vae: torch.nn.Module) -> list[tuple]:
    enc = vae.encoder
    ops: list[tuple] = [("module", enc.conv_in, 1)]
    for block in enc.down_blocks:
        ops += [("resnet", r) for r in block.resnets]
        ops += [("downsample", d) for d in (block.downsamplers or [])]
    ops += _mid_ops(enc.mid_block)
    ops.append(("out", enc.conv_norm_out, enc.conv_act, enc.conv_out))
    if getattr(vae, "quant_conv", None) is not None:
        ops.append(("module", vae.quant_conv, 0))
    return ops


def _canvas_sizes(ops: list[tuple], px: int, channels: int, final: bool) -> list[tuple[list[int], list[int], int]]:
    """Per op, the element counts of its input canvases, of what it writes (its hidden canvas, then
    its output; none for a final stage that goes straight into the picture) and of what it keeps
    on the device besides (the whole-canvas attention's keys and values)."""
    sizes = []
    for k, (kind, *args) in enumerate(ops):
        last = final and k == len(ops) - 1
        inputs, extra = [channels * px], 0
        if kind == "module":
            channels = args[0].out_channels
            written = [channels * px]
        elif kind == "resnet":
            m = args[0]
            hidden, channels = m.conv1.out_channels, m.conv2.out_channels
            written = [hidden * px, channels * px]
        elif kind == "attention":
            written, extra = [channels * px], 2 * channels * px
        elif kind in ("upsample", "downsample"):
            m = args[0]
            channels = m.conv.out_channels if hasattr(m, "conv") else m.channels
            px = px * 4 if kind == "upsample" else px // 4
            written = [channels * px]
        else:  # out
            channels = args[2].out_channels
            written = [channels * px]
        sizes.append((inputs, [] if last else written, extra))
    return sizes


def _program(vae: torch.nn.Module, h: int, w: int, encoder: bool) -> list[tuple[list[int], list[int], int]]:
    if encoder:
        return _canvas_sizes(_encoder_ops(vae), h * w, vae.encoder.conv_in.in_channels, final=False)
    return _canvas_sizes(_decoder_ops(vae), h * w, vae.decoder.conv_in.in_channels, final=True)


def synced_host_bytes(vae: torch.nn.Module, h: int, w: int, dtype: torch.dtype, *, encoder: bool = False) -> int:
    """Peak host memory of the exact decode (or, with ``encoder``, encode of an (h, w) image) of an
    (h, w) latent canvas, its stage canvases in memory: the largest set alive at once — for a
    resnet block its input (kept for the skip connection), the hidden canvas and the output; for
    an upsampler its input and its output; for the attention its input and output, and the keys
    and values (on the device, which on a CPU is the host). (SD1.5 at 4096², fp16: the last
    block's first resnet, 256 + 2·128 channels at full size: 17.2 GB.)"""
    size = torch.tensor([], dtype=dtype).element_size()
    return max(sum(inputs) + sum(written) + extra for inputs, written, extra in _program(vae, h, w, encoder)) * size


def synced_disk_bytes(vae: torch.nn.Module, h: int, w: int, dtype: torch.dtype, *, encoder: bool = False,
                      recompute: bool = False) -> int:
    """Peak scratch-disk use of the same, its stage canvases spilled: a stage's inputs' files close
    as its last pass goes past them while its output's grow, so at most the inputs and the hidden
    canvas, or the output, are on disk at once (SD1.5 at 8192², fp16: 51.5 GB), give or take the
    files not yet closed behind the bands (four bands' worth at most). With ``recompute`` no hidden
    canvas is stored: at most a stage's input or its output (34.4 GB)."""
    size = torch.tensor([], dtype=dtype).element_size()
    peak = 0
    for inputs, written, _ in _program(vae, h, w, encoder):
        if len(written) == 2 and not recompute:  # resnet: input + hidden, then they shrink as the output grows
            peak = max(peak, sum(inputs) + written[0], written[1])
        else:
            peak = max(peak, sum(inputs), written[-1] if written else 0)
    return peak * size + 4 * BAND_BYTES


def synced_spill_host_bytes(vae: torch.nn.Module, h: int, w: int, dtype: torch.dtype, *,
                            encoder: bool = False) -> int:
    """Peak host memory of the exact decode with its stage canvases spilled: the canvases small
    enough to stay (under SPILL_MIN_BYTES each), the attention's keys and values (counted here
    whatever the device) and two bands' worth (the bands read and written, and the copy a written
    band is turned into for its file)."""
    size = torch.tensor([], dtype=dtype).element_size()
    small = max(sum(n for n in inputs + written if n * size < SPILL_MIN_BYTES) + extra
                for inputs, written, extra in _program(vae, h, w, encoder))
    return small * size + 2 * BAND_BYTES


def synced_tile_bytes(vae: torch.nn.Module, h: int, w: int, dtype: torch.dtype, *, encoder: bool = False,
                      core: int = SYNC_CORE) -> int:
    """The activations of one tile of the exact decode: on a CPU they are host memory too. About
    2.5 times the largest stage's canvases cut to one tile's area (SD1.5, fp32, a 512² tile: the
    1024² decode added 3.25 GiB to the process with 2.0 GiB of canvases)."""
    size = torch.tensor([], dtype=dtype).element_size()
    peak = max(sum(inputs) + sum(written) for inputs, written, _ in _program(vae, h, w, encoder))
    return int(2.5 * peak * min(1.0, core * core / (h * w)) * size)


SCRATCH_MARGIN = 1 << 30  # bytes left free on the scratch disk beyond the decode's peak


@dataclass(frozen=True)
class StageStorage:
    """Where the exact tiled decode (or encode) keeps its stage canvases: in host memory when they
    fit half of what is free, else spilled to the scratch folder when its disk has room (when it
    has room only without the resnets' hidden canvases, those are computed twice instead:
    ``recompute``), else nowhere (the caller falls back, and says so)."""

    where: str  # "memory", "disk" or "none"
    memory: int  # bytes: the canvases in host memory
    budget: int  # bytes of host memory the decode may take now
    disk: int  # bytes: the scratch disk's peak when spilled
    free: int  # bytes free in the scratch folder
    folder: Path
    spilled_memory: int = 0  # bytes of host memory when spilled (bands, small canvases)
    recompute: bool = False  # spilled, and the resnets' hidden canvases recomputed, not stored

    def describe(self, what: str) -> str:
        """What a user is told up front about ``what`` ("the exact tiled decode of 8192x8192")."""
        need = (f"{what} needs {self.memory / GiB:.1f} GiB of host memory to keep its stage canvases, and "
                f"{self.budget / GiB:.1f} GiB may be used now")
        if self.where == "disk":
            again = (", computing the resnets' hidden canvases twice so as not to store them"
                     if self.recompute else "")
            return (f"{need}: they spill to {self.folder} (up to {self.disk / GiB:.1f} GiB on disk, "
                    f"{self.free / GiB:.1f} GiB free there{again}), which makes it slower; set {SCRATCH_ENV} to use "
                    "another disk")
        if self.spilled_memory > self.budget:
            return f"{need}, and {self.spilled_memory / GiB:.1f} GiB even with its canvases spilled to disk"
        return (f"{need}, and spilling them to {self.folder} would take {self.disk / GiB:.1f} GiB of its "
                f"{self.free / GiB:.1f} GiB free (set {SCRATCH_ENV} to a folder on a larger disk)")


def stage_storage(vae: torch.nn.Module, h: int, w: int, dtype: torch.dtype, *, encoder: bool = False,
                  folder: Path | None = None) -> StageStorage:
    """Choose where an exact tiled decode of an (h, w) latent canvas (with ``encoder``, an encode
    of an (h, w) image) keeps its stage canvases, before any work. On a CPU the tiles' activations
    count as host memory too."""
    on_cpu = next(vae.parameters()).device.type == "cpu"
    tile = synced_tile_bytes(vae, h, w, dtype, encoder=encoder) if on_cpu else 0
    memory, budget = synced_host_bytes(vae, h, w, dtype, encoder=encoder) + tile, host_budget()
    folder = scratch_dir() if folder is None else folder
    disk = synced_disk_bytes(vae, h, w, dtype, encoder=encoder)
    leaner = synced_disk_bytes(vae, h, w, dtype, encoder=encoder, recompute=True)
    free = disk_free(folder)
    spilled = synced_spill_host_bytes(vae, h, w, dtype, encoder=encoder) + tile
    recompute = False
    if memory <= budget:
        where = "memory"
    elif spilled > budget:
        where = "none"
    elif disk + SCRATCH_MARGIN <= free:
        where = "disk"
    elif leaner + SCRATCH_MARGIN <= free:  # slower on a CPU (measured), but it fits
        where, disk, recompute = "disk", leaner, True
    else:
        where, disk = "none", leaner  # (the smallest it could have been)
    return StageStorage(where, memory, budget, disk, free, folder, spilled, recompute)


def _run_program(ops: list[tuple], x: torch.Tensor, device: torch.device, dtype: torch.dtype,
                 on_progress: Callable[[int, int], None], *, core: int, factor: float, attention_halo: int,
                 attention_whole: bool, convert: Callable[[np.ndarray], np.ndarray] | None,
                 wrap: str = "none", spill: Path | None = None, recompute: bool = False) -> Any:
    """Run a VAE half as a list of stages over host canvases (see the section comment).

    ``factor`` is feature-map px per latent px at the start (1 for the decoder, 8 for the
    encoder); ``convert`` (if given) turns the last stage's tiles into the output array. Along a
    ``wrap`` axis (x, y or xy) the halos come from the opposite edge: every convolution pads
    circularly, so the picture continues across the edge (a seamless texture). With ``spill`` (a
    folder), canvases of SPILL_MIN_BYTES or more live in temporary files there; with ``recompute``
    the resnets whose input is spilled compute their hidden canvas twice instead of spilling it
    too (a third less on the disk at its peak; those blocks run half again as many convolutions).
    """
    wrap_y, wrap_x = "y" in wrap, "x" in wrap
    total = sum(2 if op[0] == "resnet" else 1 for op in ops)
    done = 0
    on_progress(0, total)
    size = torch.tensor([], dtype=dtype).element_size()
    opened: list[_Canvas] = []

    def canvas(c: int, h: int, w: int, groups: int | None, discard: bool = False) -> _Canvas:
        if discard:
            made: _Canvas = _SumsOnly(c, h, w, dtype, groups)
        elif spill is not None and c * h * w * size >= SPILL_MIN_BYTES:
            made: _Canvas = _SpilledCanvas(c, h, w, dtype, groups, spill)
        else:
            made = _MemoryCanvas(c, h, w, dtype, groups)
        opened.append(made)
        return made

    def run(fn: Callable, inputs: list[_Canvas], halo: int, up: float, out_channels: int, groups: int | None,
            *, square: bool = False, final: bool = False, keep: bool = False, discard: bool = False) -> Any:
        """One pass of a stage over the canvas, band by band; unless ``keep`` (a later pass reads
        them again), the inputs' files close behind it. With ``discard`` the output only sums its
        statistics."""
        nonlocal done
        h, w = inputs[0].h, inputs[0].w
        step = int(core * factor)

        def at(v: int) -> int:  # input px -> output px (up is 2, 1 or 1/2 on even coordinates)
            return int(v * up)

        out: Any = None if final else canvas(out_channels, at(h), at(w), groups, discard)
        rows, tile_w = step, step
        spilled = any(isinstance(c, _SpilledCanvas) for c in [*inputs, out])
        if spilled and not square:
            # Bands of BAND_BYTES rather than a tile's height; tiles as wide as keeps their area.
            per_row = sum(c.c for c in inputs) * w * size + out_channels * at(w) * up * size
            rows = max(SPILL_ROWS_MIN, min(step, int(BAND_BYTES // per_row)) // 2 * 2)
            tile_w = min(w, max(step, step * step // rows))

        def columns(t: torch.Tensor, b0: int, b1: int) -> torch.Tensor:
            if wrap_x and (b0 < 0 or b1 > w):
                return t.index_select(-1, torch.arange(b0, b1) % w)
            return t[..., b0:b1]

        for y0 in range(0, h, rows):
            y1 = min(y0 + rows, h)
            a0, a1 = (y0 - halo, y1 + halo) if wrap_y else (max(0, y0 - halo), min(h, y1 + halo))
            bands = [c.rows(a0, a1) for c in inputs]
            target = None if final else out.band(at(y0), at(y1))
            for x0 in range(0, w, tile_w):
                x1 = min(x0 + tile_w, w)
                b0, b1 = (x0 - halo, x1 + halo) if wrap_x else (max(0, x0 - halo), min(w, x1 + halo))
                res = fn(*(columns(b, b0, b1).to(device).contiguous() for b in bands))
                part = res[..., at(y0 - a0) : at(y1 - a0), at(x0 - b0) : at(x1 - b0)]
                if final:
                    # The last stage goes straight into the output dtype (uint8), tile by tile: no
                    # full-size float picture exists anywhere.
                    pixels = convert(part[0].float().permute(1, 2, 0).cpu().numpy())
                    if out is None:
                        out = np.empty((at(h), at(w), *pixels.shape[2:]), dtype=pixels.dtype)
                    out[at(y0) : at(y1), at(x0) : at(x1)] = pixels
                else:
                    target[..., at(x0) : at(x1)] = part.to("cpu", dtype)
            del bands
            if not final:
                out.commit(at(y0), target)
            if not keep:  # (across a wrapped edge, the last band reads the first rows again)
                for c in inputs:
                    c.release(y1 - halo, keep_top=halo if wrap_y else 0)
        done += 1
        on_progress(done, total)
        return out

    def attend(m: Any, x_canvas: _Canvas, stats: tuple[torch.Tensor, torch.Tensor], groups: int | None) -> _Canvas:
        """The middle block's self-attention over the whole canvas, as diffusers' AttnProcessor2_0
        computes it, one query tile at a time: a first pass puts every pixel's key and value on the
        device (attention has no positions, so their order is free), the second lets each tile's
        queries attend to all of them."""
        h, w, step = x_canvas.h, x_canvas.w, int(core * factor)

        def tokens(t: torch.Tensor) -> torch.Tensor:  # (1, C, th, tw) -> normalised (1, th·tw, C)
            return _norm(t, m.group_norm, stats).flatten(2).transpose(1, 2)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (1, n, inner) -> (1, heads, n, inner / heads)
            return t.view(1, t.shape[1], m.heads, -1).transpose(1, 2)

        keys = values = None
        filled = 0
        for y0 in range(0, h, step):
            band = x_canvas.rows(y0, min(y0 + step, h))
            for x0 in range(0, w, step):
                tok = tokens(band[..., x0 : x0 + step].to(device).contiguous())
                k, v = m.to_k(tok), m.to_v(tok)
                if keys is None:
                    keys = torch.empty((1, h * w, k.shape[-1]), device=device, dtype=k.dtype)
                    values = torch.empty((1, h * w, v.shape[-1]), device=device, dtype=v.dtype)
                keys[:, filled : filled + k.shape[1]] = k
                values[:, filled : filled + v.shape[1]] = v
                filled += k.shape[1]
        keys, values = heads(keys), heads(values)
        if m.norm_k is not None:
            keys = m.norm_k(keys)
        chunk = max(64, ATTENTION_CHUNK_BYTES // (4 * h * w))  # queries at once: the score rows stay bounded

        def tile(t: torch.Tensor) -> torch.Tensor:
            _, c, th, tw = t.shape
            q = heads(m.to_q(tokens(t)))
            if m.norm_q is not None:
                q = m.norm_q(q)
            out = torch.cat([torch.nn.functional.scaled_dot_product_attention(q[:, :, i : i + chunk], keys, values)
                             for i in range(0, q.shape[2], chunk)], dim=2)
            out = m.to_out[1](m.to_out[0](out.transpose(1, 2).reshape(1, th * tw, -1).to(q.dtype)))
            out = out.transpose(1, 2).reshape(1, c, th, tw)
            if m.residual_connection:
                out = out + t
            return out / m.rescale_output_factor

        return run(tile, [x_canvas], 0, 1, x_canvas.c, groups, square=True)  # (keys and values go with it)

    try:
        x_canvas: _Canvas = _MemoryCanvas(x.shape[1], x.shape[2], x.shape[3], dtype, None, data=x)
        for k, (kind, *args) in enumerate(ops):
            last = k == len(ops) - 1 and convert is not None
            groups = _norm_groups(ops[k + 1]) if k + 1 < len(ops) else None
            if kind == "module":
                m, halo = args
                result = run(m, [x_canvas], halo, 1, m.out_channels, groups, final=last)
            elif kind == "resnet":
                m = args[0]
                s1 = x_canvas.stats(m.norm1.num_groups)

                def first(t: torch.Tensor, m=m, s1=s1) -> torch.Tensor:
                    return m.conv1(m.nonlinearity(_norm(t, m.norm1, s1)))

                # With ``recompute``, a spilled input's hidden canvas is not stored: the first pass
                # only sums its statistics, the second computes it again from a halo of two.
                again = recompute and isinstance(x_canvas, _SpilledCanvas)
                hidden = run(first, [x_canvas], 1, 1, m.conv1.out_channels, m.norm2.num_groups, keep=True,
                             discard=again)
                s2 = hidden.stats(m.norm2.num_groups)

                def second(h: torch.Tensor, skip: torch.Tensor, m=m, s2=s2) -> torch.Tensor:
                    out = m.conv2(m.dropout(m.nonlinearity(_norm(h, m.norm2, s2))))
                    if m.conv_shortcut is not None:
                        skip = m.conv_shortcut(skip)
                    return (skip + out) / m.output_scale_factor

                if again:
                    result = run(lambda t, first=first, second=second: second(first(t), t), [x_canvas], 2, 1,
                                 m.conv2.out_channels, groups)
                else:
                    result = run(second, [hidden, x_canvas], 1, 1, m.conv2.out_channels, groups)
                hidden.close()
            elif kind == "attention" and attention_whole:
                m = args[0]
                result = attend(m, x_canvas, x_canvas.stats(m.group_norm.num_groups), groups)
            elif kind == "attention":  # tile-local: each tile attends within its halo
                m = args[0]
                stats = x_canvas.stats(m.group_norm.num_groups)
                m.group_norm.forward = lambda t, n=m.group_norm, s=stats: _norm(t, n, s)  # shadows the method
                try:
                    result = run(m, [x_canvas], int(attention_halo * factor), 1, x_canvas.c, groups, square=True)
                finally:
                    del m.group_norm.forward
            elif kind == "upsample":  # nearest x2, then a 3x3 convolution at the new size
                m = args[0]
                result = run(m, [x_canvas], 1, 2, m.conv.out_channels, groups)
                factor *= 2
            elif kind == "downsample":  # pad right/bottom by one, 3x3 convolution with stride 2
                m = args[0]
                result = run(m, [x_canvas], 2, 0.5, m.conv.out_channels, groups)
                factor /= 2
            else:  # "out": GroupNorm, activation, convolution
                norm, act, conv = args
                stats = x_canvas.stats(norm.num_groups)
                result = run(lambda t, n=norm, a=act, c=conv, s=stats: c(a(_norm(t, n, s))), [x_canvas], 1, 1,
                             conv.out_channels, groups, final=last)
            x_canvas.close()
            x_canvas = result
        if isinstance(x_canvas, _Canvas):
            return x_canvas.rows(0, x_canvas.h).contiguous()
        return x_canvas
    finally:
        for c in opened:  # also after an error or a cancel: the scratch files go at once
            c.close()


@torch.no_grad()
def decode_synced(
    vae: torch.nn.Module,
    z: torch.Tensor,
    on_progress: Callable[[int, int], None],
    *,
    convert: Callable[[np.ndarray], np.ndarray] = to_uint8,
    core: int = SYNC_CORE,
    attention_halo: int = ATTENTION_HALO,
    attention_whole_px: int | None = ATTENTION_WHOLE_PX,
    wrap: str = "none",
    spill: Path | None = None,
    recompute: bool = False,
) -> np.ndarray:
    """Decode VAE-space latents ``z`` (1, C, h, w) — already divided by the scaling factor — tile by
    tile with whole-canvas GroupNorm statistics. Device memory holds one tile's stage; the host
    holds up to three canvases of a stage (see :func:`synced_host_bytes`), or with ``spill`` (a
    folder on a disk with :func:`synced_disk_bytes` free) bands of them (``recompute``: see
    :func:`_run_program`). ``wrap`` (x, y, xy): circular padding across those edges."""
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    whole = attention_whole_px is None or z.shape[-2] * z.shape[-1] <= attention_whole_px
    return _run_program(_decoder_ops(vae), z.to("cpu", dtype), device, dtype, on_progress, core=core, factor=1,
                        attention_halo=attention_halo, convert=convert, attention_whole=whole, wrap=wrap,
                        spill=spill, recompute=recompute)


@torch.no_grad()
def encode_synced(
    vae: torch.nn.Module,
    image: torch.Tensor,
    on_progress: Callable[[int, int], None],
    *,
    core: int = SYNC_CORE,
    attention_halo: int = ATTENTION_HALO,
    attention_whole_px: int | None = ATTENTION_WHOLE_PX,
    spill: Path | None = None,
    recompute: bool = False,
) -> torch.Tensor:
    """Encode an image (1, 3, H, W) in [-1, 1] (H and W multiples of the VAE's factor, 8 for SD)
    tile by tile with whole-canvas GroupNorm statistics; returns the latent distribution's moments
    (1, 2·C, H/8, W/8) on the host (mean, then log-variance), like ``vae.encode(...).latent_dist
    .parameters``. The same stages as :func:`decode_synced`, downsampling instead of upsampling."""
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    factor = 2 ** (len(vae.encoder.down_blocks) - 1)  # image px per latent px
    h, w = image.shape[-2:]
    whole = attention_whole_px is None or (h // factor) * (w // factor) <= attention_whole_px
    return _run_program(_encoder_ops(vae), image.to("cpu", dtype), device, dtype, on_progress, core=core,
                        factor=factor, attention_halo=attention_halo, convert=None, attention_whole=whole, spill=spill,
                        recompute=recompute)
