"""VAE decoding of the finished canvas, tile by tile above a size threshold.

Large canvases are decoded as overlapping latent tiles (a :class:`TilePlan` of its own) whose
images are cross-faded with cosine windows at image resolution and assembled on the CPU, so the
GPU only ever holds one tile's activations. GroupNorm statistics are still per tile here; exact
whole-canvas statistics are a later refinement.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from . import blend
from .plan import TilePlan

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
