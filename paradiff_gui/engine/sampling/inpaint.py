"""Known regions: refine part of a picture and keep the rest (engine.api.refine).

The canvas is a cut-out of a larger picture. Where the soft mask is 0 the cut-out's own picture is
*known*: after every sampler step the canvas is pulled back to the known picture noised to the next
step's level, so the model sees the surroundings it must fit while it re-draws the masked part —
blended latent diffusion (Avrahami et al. 2022, "Blended Latent Diffusion", alg. 1):

    latents = m · latents + (1 − m) · add_noise(known, noise, t_next)      (after each step)
    latents = m · latents + (1 − m) · known                                 (after the last)

``m`` is the soft mask averaged over each latent pixel, so a feathered border stays soft in the
latent too. The blend moves latents only; the picture outside the mask is made exact in pixels by
the caller, who composites the decoded cut-out over the original pixels with the same soft mask.

A model that takes the known picture as input (an SD inpainting checkpoint: models/sd/inpaint.py)
says so through its ``take_known`` hook and is not blended: it was trained to keep the unmasked part
from its own inputs. The pixel composite applies to it all the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class Known:
    """The cut-out's source picture and where it may change."""

    pixels: np.ndarray  # (h, w) or (h, w, 3) float32 in [0, 1] at the canvas's size (image px)
    mask: np.ndarray  # (h, w) float32 in [0, 1], image px: 1 = re-draw, 0 = keep

    def latent_mask(self, scale: int, device: torch.device | str) -> torch.Tensor:
        """(1, 1, h/scale, w/scale): the mask's mean over each latent pixel."""
        h, w = self.mask.shape
        m = self.mask.reshape(h // scale, scale, w // scale, scale).mean(axis=(1, 3))
        return torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None].to(device)


def keep_known(latents: torch.Tensor, mask: torch.Tensor, known: torch.Tensor, noise: torch.Tensor,
               scheduler: object, t_next: torch.Tensor | None) -> torch.Tensor:
    """The canvas with its known part put back at the noise level of ``t_next`` (None: the last
    step, the known latents themselves)."""
    ref = known if t_next is None else scheduler.add_noise(known, noise, t_next)  # type: ignore[attr-defined]
    return mask * latents + (1 - mask) * ref
