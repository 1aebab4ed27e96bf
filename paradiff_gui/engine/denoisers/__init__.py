"""Model backends behind one protocol, and the loader that picks one from ``request.model``.

A backend is anything that satisfies :class:`Denoiser`. The synchronized loop only ever calls
these methods, so a model of your own plugs in by implementing them — see
``examples/custom_denoiser.py`` for a complete, runnable one — and either passing the object to
``generate(..., denoiser=...)`` or registering a factory for a ``builtin:NAME`` model id with
:func:`register_builtin`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..plan import Tile, TilePlan
from ..request import GenerationRequest


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

    def preview(self, x: torch.Tensor, pred: torch.Tensor, t: float) -> torch.Tensor:
        """Cheap RGB previews of the batch's denoised estimate: (B, h, w, 3) uint8, on any device.

        Stay on the device: the loop copies previews to the host without stalling the GPU.
        """
        ...

    def decode(self, latents: torch.Tensor, on_progress: Callable[[int, int], None]) -> np.ndarray:
        """The finished canvas (1, channels, H, W) as an image on the CPU: (H, W, 3) uint8."""
        ...


Factory = Callable[[GenerationRequest, torch.device, torch.dtype], "Denoiser"]
_BUILTINS: dict[str, Factory] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}
_INFO: dict[str, dict[str, Any]] = {}


def register_builtin(name: str, factory: Factory, defaults: dict[str, Any] | None = None,
                     info: dict[str, Any] | None = None) -> None:
    """Make ``builtin:<name>`` load through ``factory(request, device, dtype)``.

    ``defaults`` are request fields that suit the model (steps, sampler, tile...), applied by
    :func:`model_defaults` where the user gave no value. ``info`` describes the model without
    loading it (see :class:`paradiff_gui.engine.modelinfo.ModelInfo`: scale, native_tile, text,
    samplers, controls, output), so a GUI can plan tiles and show the right controls.
    """
    _BUILTINS[name] = factory
    _DEFAULTS[name] = dict(defaults or {})
    _INFO[name] = dict(info or {})


def builtin_info(name: str) -> dict[str, Any] | None:
    """What :func:`register_builtin` was told about ``builtin:<name>``; None if unknown."""
    return dict(_INFO[name]) if name in _INFO else None


def model_defaults(model: str) -> dict[str, Any]:
    """Request fields that suit ``model`` (empty for models that take the request's defaults)."""
    if model.startswith("builtin:"):
        return dict(_DEFAULTS.get(model.split(":", 1)[1], {}))
    return {}


def builtin_names() -> list[str]:
    return sorted(_BUILTINS)


# One loaded model is kept: the GUI and tests generate many times with the same weights, and
# loading an SD checkpoint costs seconds. A different model/device/dtype replaces it.
_CACHE: dict[tuple[str, str, str, bool], Denoiser] = {}


def downloads_allowed() -> bool:
    """Whether the user allowed network downloads (``PARADIFF_ALLOW_DOWNLOAD=1``)."""
    return os.environ.get("PARADIFF_ALLOW_DOWNLOAD", "").lower() in ("1", "true", "yes")


def pickle_allowed() -> bool:
    """Whether the user allowed pickle checkpoints' tensors (``PARADIFF_ALLOW_PICKLE=1``)."""
    return os.environ.get("PARADIFF_ALLOW_PICKLE", "").lower() in ("1", "true", "yes")


def load_denoiser(request: GenerationRequest, device: torch.device, dtype: torch.dtype) -> Denoiser:
    """Load (or reuse) the backend for ``request.model`` on ``device`` in ``dtype``."""
    key = (request.model, str(device), str(dtype), request.compile)
    if key in _CACHE:
        return _CACHE[key]
    if request.model.startswith("builtin:"):
        name = request.model.split(":", 1)[1]
        if name not in _BUILTINS:
            known = ", ".join(f"builtin:{n}" for n in builtin_names()) or "none"
            raise ModelUnavailable(f"model: there is no built-in model {name!r} (built-in: {known})")
        den = _BUILTINS[name](request, device, dtype)
    else:
        from .sd import load_sd  # diffusers pipelines import slowly; only pay when used

        den = load_sd(request.model, device, dtype, allow_download=downloads_allowed(), allow_pickle=pickle_allowed())
        if request.compile:
            den.enable_compile()
    _CACHE.clear()
    _CACHE[key] = den
    return den


def clear_cache() -> None:
    _CACHE.clear()


# Built-in backends register themselves; importing them is cheap (their runtimes load lazily).
from . import terrain  # noqa: E402, F401
