"""Pictures ↔ latent canvases through a diffusers ``AutoencoderKL``, for every backend that has one
(SD 1.x/2.x/XL, and the 16-channel VAE of FLUX and SD3): the whole decode for small canvases, the
exact staged decode above the threshold (vae.py), the per-tile fallback, and the encode of an init
image. The VAE's ``shift_factor`` (FLUX, SD3) and ``scaling_factor`` map its latents to the
diffusion model's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ...core.request import GenerationRequest, RequestError
from .vae import (
    DECODE_THRESHOLD,
    StageStorage,
    decode_latents,
    decode_synced,
    encode_synced,
    stage_storage,
    synced_decode_supported,
    to_uint8,
)


class VaeCodec:
    """The VAE half of a backend, mixed into its denoiser class.

    The denoiser sets ``vae`` (an AutoencoderKL), ``scale`` (image px per latent px), ``device``,
    ``_vae_dtype`` (what the VAE runs in) and ``decode_method = ""``; it gets :meth:`notices`,
    :meth:`encode` and :meth:`decode` of the Denoiser protocol.
    """

    vae: torch.nn.Module
    scale: int
    device: torch.device
    _vae_dtype: torch.dtype
    decode_method: str

    def notices(self, request: GenerationRequest) -> list[str]:
        """Said before any work: where the exact tiled decode (and an init image's encode) will keep
        its stage canvases when the host cannot hold them — spilled to the scratch disk, or, for
        the decode when that disk has no room either, per-tile statistics instead (the recipe's
        ``decode`` says so too; an encode that fits nowhere is refused)."""
        said = []
        h, w = request.height // self.scale, request.width // self.scale
        if max(h, w) > DECODE_THRESHOLD and synced_decode_supported(self.vae):
            store = stage_storage(self.vae, h, w, self._vae_dtype)
            what = f"the exact tiled decode of {request.width}x{request.height}"
            if store.where == "disk":
                said.append(store.describe(what))
            elif store.where == "none":
                said.append(f"{store.describe(what)}: the picture will be decoded tile by tile with each tile's own "
                            "GroupNorm statistics (small brightness and contrast steps between 512 px tiles are "
                            "possible)")
            if request.init_image is not None:
                self._check_encode(request.height, request.width, said)
        return said

    def _check_encode(self, height: int, width: int, said: list[str] | None = None) -> StageStorage:
        """Where the exact tiled encode of a (height, width) picture keeps its stages (a
        StageStorage); refuses, naming init_image, an encode that fits neither memory nor disk."""
        store = stage_storage(self.vae, height, width, self._vae_dtype, encoder=True)
        what = f"encoding the {width}x{height} init image"
        if store.where == "none":
            raise RequestError("init_image", f"{store.describe(what)}; use a smaller size or free some memory")
        if store.where == "disk" and said is not None:
            said.append(store.describe(what))
        return store

    @torch.no_grad()
    def encode(self, pixels: np.ndarray, on_progress: Callable[[int, int], None]) -> torch.Tensor:
        """An (H, W, 3) picture in [0, 1] as a latent canvas (1, C, H/8, W/8): the mean of the VAE's
        latent distribution (no sampling: the same picture always gives the same canvas), tiled with
        whole-canvas GroupNorm statistics above the decode threshold (vae.encode_synced)."""
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None].float() * 2 - 1
        h, w = x.shape[-2] // self.scale, x.shape[-1] // self.scale
        if max(h, w) <= DECODE_THRESHOLD or not synced_decode_supported(self.vae):
            on_progress(0, 1)
            mean = self.vae.encode(x.to(self.device, self._vae_dtype)).latent_dist.mean
            on_progress(1, 1)
        else:
            store = self._check_encode(x.shape[-2], x.shape[-1])
            moments = encode_synced(self.vae, x.to(self._vae_dtype), on_progress,
                                    spill=store.folder if store.where == "disk" else None, recompute=store.recompute)
            mean = moments[:, : moments.shape[1] // 2]
        return ((mean.float() - shift) * cfg.scaling_factor).cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, on_progress: Callable[[int, int], None],
               wrap: str = "none") -> np.ndarray:
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0

        def decode_fn(z: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(z.to(self._vae_dtype) / cfg.scaling_factor + shift, return_dict=False)[0]

        h, w = latents.shape[-2:]
        small = max(h, w) <= DECODE_THRESHOLD
        # A wrapped canvas always goes through the staged decoder: it is the one that pads circularly.
        store = stage_storage(self.vae, h, w, self._vae_dtype) \
            if (not small or wrap != "none") and synced_decode_supported(self.vae) else None
        if store is not None and store.where != "none":
            # Tiled, with every GroupNorm on whole-canvas statistics (vae.py).
            self.decode_method = "tiled, whole-canvas GroupNorm" + (f", wraps {wrap}" if wrap != "none" else "") \
                + (", stages spilled to disk" if store.where == "disk" else "") \
                + (" (hidden canvases recomputed)" if store.recompute else "")
            z = latents.to(self.device, self._vae_dtype) / cfg.scaling_factor + shift
            return decode_synced(self.vae, z, on_progress, wrap=wrap,
                                 spill=store.folder if store.where == "disk" else None, recompute=store.recompute)
        self.decode_method = "whole" if small else \
            "tiled, per-tile GroupNorm (host memory and scratch disk too small for exact)"
        if wrap != "none":
            self.decode_method += "; does not wrap (this VAE or the host memory does not allow the staged decoder)"
        return to_uint8(decode_latents(decode_fn, latents, self.scale, on_progress))
