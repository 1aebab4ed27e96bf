"""What every model backend is: the :class:`Denoiser` protocol, its error, and how a built-in
model declares itself (:class:`Builtin`) so that the registry can list it without loading it.

A backend imports this module and the core layer, never the registry: the registry imports the
backends (one way), so adding a model never creates an import cycle.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..core.plan import Tile, TilePlan
from ..core.request import GenerationRequest


class ModelUnavailable(Exception):
    """The requested model cannot be loaded here; the message says how to get it."""


@runtime_checkable
class Denoiser(Protocol):
    """What the synchronized loop needs from a model.

    Attributes:
        name: shown to users and written to metadata.
        scale: image pixels per latent pixel (8 for the SD VAE, 1 for pixel-space models).
        channels: channels of the latent canvas.
        native_tile: the model's natural tile side in image pixels (its training resolution).
        device, dtype: where and in what precision the model runs.
    """

    name: str
    scale: int
    channels: int
    native_tile: int
    device: torch.device
    dtype: torch.dtype

    def make_scheduler(self, sampler: str) -> Any:
        """A fresh diffusers scheduler for ``sampler`` (one of ``request.SAMPLERS``)."""
        ...

    def prepare(self, request: GenerationRequest, plan: TilePlan) -> Any:
        """Everything computed once per generation (text embeddings, guidance...)."""
        ...

    def predict(self, x: torch.Tensor, t: torch.Tensor, tiles: Sequence[Tile], cond: Any) -> torch.Tensor:
        """The guided model output for a batch of tile crops.

        ``x`` is (len(tiles), channels, tile_h, tile_w), already scaled by the scheduler's
        ``scale_model_input``; the result has the same shape, in whatever the scheduler expects
        (noise, v or sample prediction). Classifier-free guidance happens inside, with the
        unconditional and conditional halves in one batch.
        """
        ...

    def preview(self, x: torch.Tensor, pred: torch.Tensor, t: float, linear: bool = False) -> torch.Tensor:
        """Cheap RGB previews of the batch's denoised estimate: (B, h, w, 3) uint8, on any device.

        Stay on the device: the loop copies previews to the host without stalling the GPU.
        ``linear``: the cheap linear map even where a tiny autoencoder is loaded (the loop asks
        for it for the tiles a ``preview_budget`` does not pay for); a backend whose previews are
        all cheap may ignore it.
        """
        ...

    def decode(self, latents: torch.Tensor, on_progress: Callable[[int, int], None]) -> np.ndarray:
        """The finished canvas (1, channels, H, W) as an image on the CPU: (H, W, 3) uint8."""
        ...

    # Optional hooks the loop looks up with getattr (a backend without them is not asked):
    # encode(pixels, on_progress) for image-to-image; begin_step(plan, step, total) for step-steered
    # inputs (ControlNets); take_known(request, plan, known) -> bool, called before prepare with a
    # refine's known picture or None: True when the model takes it as input and keeps the known
    # part itself (SD inpainting checkpoints, sd/inpaint.py), so the loop does not blend it.


Factory = Callable[[GenerationRequest, torch.device, torch.dtype], "Denoiser"]


@dataclass(frozen=True)
class Builtin:
    """A ``builtin:<name>`` model: how to load it and what it is, known without loading it.

    ``defaults`` are request fields that suit the model (steps, sampler, tile...), applied where
    the user gave no value. ``info`` describes the model (see
    :class:`paradiff_gui.engine.core.modelinfo.ModelInfo`: scale, native_tile, text, samplers,
    controls, output), so a GUI can plan tiles and show the right controls.
    """

    name: str
    factory: Factory
    defaults: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def downloads_allowed() -> bool:
    """Whether the user allowed network downloads (``PARADIFF_ALLOW_DOWNLOAD=1``)."""
    return os.environ.get("PARADIFF_ALLOW_DOWNLOAD", "").lower() in ("1", "true", "yes")


def pickle_allowed() -> bool:
    """Whether the user allowed pickle checkpoints' tensors (``PARADIFF_ALLOW_PICKLE=1``)."""
    return os.environ.get("PARADIFF_ALLOW_PICKLE", "").lower() in ("1", "true", "yes")
