"""Inpainting checkpoints: SD UNets with 9 input channels (SD 1.x/2.x inpainting, SDXL inpainting).

Such a UNet re-draws a masked part of a picture from three inputs, concatenated on the channels:

    [ scaled latents (4) | mask (1, latent px, 1 = re-draw) | the masked picture's latents (4) ]

as diffusers' ``StableDiffusionInpaintPipeline`` gives them (its ``num_channels_unet == 9`` branch):
the mask binarized at 0.5 (its mask processor's ``do_binarize``) and shrunk to the latent grid by
nearest-neighbour interpolation (``prepare_mask_latents``); the picture with the masked part set to 0
in [-1, 1] (mid grey) and encoded by the VAE. The model sees what to keep through these inputs, so
its sampler is not blended with the known latents (sampling/inpaint.py is for ordinary models).

What is ours: the whole sub-canvas's masked picture is encoded once, through the same exact tiled
encoder as an init image (codec.VaeCodec.encode), and each tile of a batch gets its own crop of the
mask and of those latents, for both guidance halves — as ControlNet maps are cropped (sd/control.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...core.plan import Tile
from ..control_images import crop

BINARIZE = 0.5  # diffusers' VaeImageProcessor.binarize: >= 0.5 re-draws


def is_inpainting(unet: torch.nn.Module, latent_channels: int) -> bool:
    """A UNet that takes the mask and the masked picture's latents next to its latents."""
    return int(unet.config.in_channels) == 2 * latent_channels + 1


@dataclass(frozen=True, eq=False)
class InpaintInputs:
    """A run's extra UNet inputs on the whole (sub-)canvas, latent px, on the device."""

    mask: torch.Tensor  # (1, 1, h, w), 0 or 1
    masked: torch.Tensor  # (1, C, h, w): the masked picture's latents

    @classmethod
    def build(cls, pixels: np.ndarray, mask: np.ndarray, scale: int,
              encode: Callable[[np.ndarray, Callable[[int, int], None]], torch.Tensor],
              device: torch.device, dtype: torch.dtype) -> InpaintInputs:
        """From the canvas's picture (H, W, 3) in [0, 1] and its soft mask (H, W), 1 = re-draw.

        The refine's mask is feathered; an inpainting UNet was trained on hard masks, so it gets the
        mask thresholded as the pipeline does, and the feathered mask is used only for the final
        composite over the source pixels (api/refine.py)."""
        hard = mask >= BINARIZE
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        masked = np.where(hard[..., None], np.float32(0.5), pixels.astype(np.float32))  # 0 in [-1, 1]
        latents = encode(masked, lambda _done, _total: None)
        h, w = mask.shape
        m = torch.from_numpy(np.ascontiguousarray(hard, dtype=np.float32))[None, None]
        m = torch.nn.functional.interpolate(m, size=(h // scale, w // scale))  # nearest, as the pipeline
        return cls(m.to(device, dtype), latents.to(device, dtype))

    def crops(self, tiles: Sequence[Tile], halves: int) -> torch.Tensor:
        """(halves · len(tiles), 1 + C, th, tw): each tile's mask and masked latents, the rows in
        the order of the UNet batch ([unconditional tiles; conditional tiles])."""
        both = torch.cat([crop(self.mask, tiles, 1), crop(self.masked, tiles, 1)], dim=1)
        return torch.cat([both] * halves) if halves > 1 else both
