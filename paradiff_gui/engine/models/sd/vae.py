"""VAE decoding of the finished canvas, tile by tile above a size threshold.

Two tiled decoders, so the GPU only ever holds one tile's activations:

- :func:`decode_synced` (used whenever the host has room for it): stage by stage over the whole
  canvas, every GroupNorm with whole-canvas statistics — equal to a whole decode up to float
  rounding on canvases up to 128² latent px, and up to the middle block's attention (tile-local)
  beyond;
- :func:`decode_latents`: overlapping latent tiles decoded independently (per-tile GroupNorm
  statistics: each tile its own brightness and contrast), cross-faded with cosine windows and
  assembled on the CPU; the fallback when the host cannot hold the exact decode's canvases.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ...core import blend
from ...core.plan import TilePlan

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
# stage by stage over the whole canvas: a stage is the stretch between two GroupNorms, run tile by
# tile on the device; its output is kept on the host as one canvas; the next GroupNorm's mean and
# variance are taken over that canvas (float64), and the next stage reads each tile's core plus a
# halo of one pixel (what its 3x3 convolution needs) from it. Convolutions and normalisation are
# then exact. The middle block's self-attention spans the whole latent canvas in a whole decode;
# up to ATTENTION_WHOLE_PX it does here too, beyond it each tile attends within a 16 px halo.

SYNC_CORE = 64  # latent px: the tile grid of every stage (scaled with the feature maps)
ATTENTION_HALO = 16  # latent px of context around a tile for the middle block's attention
# Up to this many latent px (128², a 1024² image) the attention runs on the whole canvas at
# once, as in a whole decode; SDPA keeps its memory linear on a GPU (the CPU's math kernel holds
# the 16k x 16k score matrix: 1 GiB).
ATTENTION_WHOLE_PX = 128 * 128


def host_budget() -> int:
    """Host memory the exact decode may take: half of what is free now (8 GiB if unknown)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (AttributeError, ValueError, OSError):
        return 8 << 30


def _group_stats(t: torch.Tensor, groups: int, rows: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean and variance of a host canvas (1, C, H, W), float64, a few rows at a time."""
    _, c, h, w = t.shape
    s1 = torch.zeros(groups, dtype=torch.float64)
    s2 = torch.zeros(groups, dtype=torch.float64)
    for y in range(0, h, rows):
        part = t[0, :, y : y + rows].double().reshape(groups, -1)
        s1 += part.sum(dim=1)
        s2 += (part * part).sum(dim=1)
    n = c // groups * h * w
    mean = s1 / n
    return mean, (s2 / n - mean * mean).clamp(min=0)


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


def synced_host_bytes(vae: torch.nn.Module, h: int, w: int, dtype: torch.dtype) -> int:
    """Peak host memory of the exact decode of an (h, w) latent canvas: the largest set of stage
    canvases alive at once — for a resnet block its input (kept for the skip connection), the
    hidden canvas and the output; for an upsampler its input and its output. (SD1.5 at 4096²,
    fp16: the last block's first resnet, 256 + 2·128 channels at full size: 17.2 GB.)"""
    dec = vae.decoder
    size = torch.tensor([], dtype=dtype).element_size()
    px = h * w  # at the current factor
    peak = 2 * dec.conv_in.out_channels * px
    blocks = [dec.mid_block.resnets, *[b.resnets for b in dec.up_blocks]]
    ups = [[], *[b.upsamplers or [] for b in dec.up_blocks]]
    for resnets, upsamplers in zip(blocks, ups):
        for r in resnets:
            peak = max(peak, (r.conv1.in_channels + 2 * r.conv2.out_channels) * px)
        for u in upsamplers:
            channels = u.conv.out_channels if hasattr(u, "conv") else u.channels
            peak = max(peak, channels * px + channels * px * 4)
            px *= 4
    return peak * size


def _mid_ops(mid: torch.nn.Module) -> list[tuple]:
    ops: list[tuple] = [("resnet", mid.resnets[0])]
    for attn, resnet in zip(mid.attentions, mid.resnets[1:]):
        if attn is not None:
            ops.append(("attention", attn))
        ops.append(("resnet", resnet))
    return ops


def _run_program(ops: list[tuple], x: torch.Tensor, device: torch.device, dtype: torch.dtype,
                 on_progress: Callable[[int, int], None], *, core: int, factor: float, attention_halo: int,
                 attention_whole: bool, convert: Callable[[np.ndarray], np.ndarray] | None,
                 wrap: str = "none") -> Any:
    """Run a VAE half as a list of stages over host canvases (see the section comment).

    ``factor`` is feature-map px per latent px at the start (1 for the decoder, 8 for the
    encoder); ``convert`` (if given) turns the last stage's tiles into the output array. Along a
    ``wrap`` axis (x, y or xy) the halos come from the opposite edge: every convolution pads
    circularly, so the picture continues across the edge (a seamless texture).
    """
    wrap_y, wrap_x = "y" in wrap, "x" in wrap
    total = sum(2 if op[0] == "resnet" else 1 for op in ops)
    done = 0
    on_progress(0, total)

    def run(fn: Callable, inputs: list[torch.Tensor], halo: int, up: float, out_channels: int,
            whole: bool = False, final: bool = False) -> Any:
        nonlocal done
        h, w = inputs[0].shape[-2:]
        step = max(h, w) if whole else int(core * factor)
        halo = 0 if whole else halo  # one tile holds the whole canvas: nothing to read around it

        def crop(t: torch.Tensor, a0: int, a1: int, b0: int, b1: int) -> torch.Tensor:
            if wrap_y and (a0 < 0 or a1 > h):
                t = t.index_select(-2, torch.arange(a0, a1) % h)
                a0, a1 = 0, a1 - a0
            if wrap_x and (b0 < 0 or b1 > w):
                t = t.index_select(-1, torch.arange(b0, b1) % w)
                b0, b1 = 0, b1 - b0
            return t[..., a0:a1, b0:b1]

        def at(v: int) -> int:  # input px -> output px (up is 2, 1 or 1/2 on even coordinates)
            return int(v * up)

        # The last stage goes straight into the output dtype (uint8), tile by tile: no full-size
        # float picture exists anywhere.
        out: Any = None if final else torch.empty((1, out_channels, at(h), at(w)), dtype=dtype)
        for y0 in range(0, h, step):
            for x0 in range(0, w, step):
                y1, x1 = min(y0 + step, h), min(x0 + step, w)
                a0, a1 = (y0 - halo, y1 + halo) if wrap_y else (max(0, y0 - halo), min(h, y1 + halo))
                b0, b1 = (x0 - halo, x1 + halo) if wrap_x else (max(0, x0 - halo), min(w, x1 + halo))
                res = fn(*(crop(t, a0, a1, b0, b1).to(device).contiguous() for t in inputs))
                part = res[..., at(y0 - a0) : at(y1 - a0), at(x0 - b0) : at(x1 - b0)]
                if final:
                    pixels = convert(part[0].float().permute(1, 2, 0).cpu().numpy())
                    if out is None:
                        out = np.empty((at(h), at(w), *pixels.shape[2:]), dtype=pixels.dtype)
                    out[at(y0) : at(y1), at(x0) : at(x1)] = pixels
                else:
                    out[..., at(y0) : at(y1), at(x0) : at(x1)] = part.to("cpu", dtype)
        done += 1
        on_progress(done, total)
        return out

    for k, (kind, *args) in enumerate(ops):
        last = k == len(ops) - 1 and convert is not None
        if kind == "module":
            m, halo = args
            x = run(m, [x], halo, 1, m.out_channels, final=last)
        elif kind == "resnet":
            m = args[0]
            s1 = _group_stats(x, m.norm1.num_groups)
            hidden = run(lambda t, m=m, s1=s1: m.conv1(m.nonlinearity(_norm(t, m.norm1, s1))), [x], 1, 1,
                         m.conv1.out_channels)
            s2 = _group_stats(hidden, m.norm2.num_groups)

            def second(h: torch.Tensor, skip: torch.Tensor, m=m, s2=s2) -> torch.Tensor:
                out = m.conv2(m.dropout(m.nonlinearity(_norm(h, m.norm2, s2))))
                if m.conv_shortcut is not None:
                    skip = m.conv_shortcut(skip)
                return (skip + out) / m.output_scale_factor

            x = run(second, [hidden, x], 1, 1, m.conv2.out_channels)
        elif kind == "attention":
            m = args[0]
            stats = _group_stats(x, m.group_norm.num_groups)
            m.group_norm.forward = lambda t, n=m.group_norm, s=stats: _norm(t, n, s)  # shadows the method
            try:
                x = run(m, [x], int(attention_halo * factor), 1, x.shape[1], whole=attention_whole)
            finally:
                del m.group_norm.forward
        elif kind == "upsample":  # nearest x2, then a 3x3 convolution at the new size
            m = args[0]
            x = run(m, [x], 1, 2, m.conv.out_channels)
            factor *= 2
        elif kind == "downsample":  # pad right/bottom by one, 3x3 convolution with stride 2
            m = args[0]
            x = run(m, [x], 2, 0.5, m.conv.out_channels)
            factor /= 2
        else:  # "out": GroupNorm, activation, convolution
            norm, act, conv = args
            stats = _group_stats(x, norm.num_groups)
            x = run(lambda t, n=norm, a=act, c=conv, s=stats: c(a(_norm(t, n, s))), [x], 1, 1, conv.out_channels,
                    final=last)
    return x


@torch.no_grad()
def decode_synced(
    vae: torch.nn.Module,
    z: torch.Tensor,
    on_progress: Callable[[int, int], None],
    *,
    convert: Callable[[np.ndarray], np.ndarray] = to_uint8,
    core: int = SYNC_CORE,
    attention_halo: int = ATTENTION_HALO,
    attention_whole_px: int = ATTENTION_WHOLE_PX,
    wrap: str = "none",
) -> np.ndarray:
    """Decode VAE-space latents ``z`` (1, C, h, w) — already divided by the scaling factor — tile by
    tile with whole-canvas GroupNorm statistics. Device memory holds one tile's stage; the host
    holds up to three canvases of a stage (see :func:`synced_host_bytes`). ``wrap`` (x, y, xy):
    circular padding across those edges."""
    dec = vae.decoder
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    ops: list[tuple] = []
    if getattr(vae, "post_quant_conv", None) is not None:
        ops.append(("module", vae.post_quant_conv, 0))
    ops.append(("module", dec.conv_in, 1))
    ops += _mid_ops(dec.mid_block)
    for block in dec.up_blocks:
        ops += [("resnet", r) for r in block.resnets]
        ops += [("upsample", u) for u in (block.upsamplers or [])]
    ops.append(("out", dec.conv_norm_out, dec.conv_act, dec.conv_out))
    return _run_program(ops, z.to("cpu", dtype), device, dtype, on_progress, core=core, factor=1,
                        attention_halo=attention_halo, convert=convert,
                        attention_whole=z.shape[-2] * z.shape[-1] <= attention_whole_px, wrap=wrap)


@torch.no_grad()
def encode_synced(
    vae: torch.nn.Module,
    image: torch.Tensor,
    on_progress: Callable[[int, int], None],
    *,
    core: int = SYNC_CORE,
    attention_halo: int = ATTENTION_HALO,
    attention_whole_px: int = ATTENTION_WHOLE_PX,
) -> torch.Tensor:
    """Encode an image (1, 3, H, W) in [-1, 1] (H and W multiples of the VAE's factor, 8 for SD)
    tile by tile with whole-canvas GroupNorm statistics; returns the latent distribution's moments
    (1, 2·C, H/8, W/8) on the host (mean, then log-variance), like ``vae.encode(...).latent_dist
    .parameters``. The same stages as :func:`decode_synced`, downsampling instead of upsampling."""
    enc = vae.encoder
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    factor = 2 ** (len(enc.down_blocks) - 1)  # image px per latent px
    ops: list[tuple] = [("module", enc.conv_in, 1)]
    for block in enc.down_blocks:
        ops += [("resnet", r) for r in block.resnets]
        ops += [("downsample", d) for d in (block.downsamplers or [])]
    ops += _mid_ops(enc.mid_block)
    ops.append(("out", enc.conv_norm_out, enc.conv_act, enc.conv_out))
    if getattr(vae, "quant_conv", None) is not None:
        ops.append(("module", vae.quant_conv, 0))
    h, w = image.shape[-2:]
    return _run_program(ops, image.to("cpu", dtype), device, dtype, on_progress, core=core, factor=factor,
                        attention_halo=attention_halo, convert=None,
                        attention_whole=(h // factor) * (w // factor) <= attention_whole_px)
