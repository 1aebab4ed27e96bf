"""The model registry: which models exist, their defaults and descriptions, and the loader that
picks a backend for ``request.model``.

The built-in backends are listed here by import (one way: a backend never imports the registry).
A model of your own plugs in by satisfying :class:`~.base.Denoiser` — see
``examples/custom_denoiser.py`` — and either passing the object to ``generate(..., denoiser=...)``
or registering a factory for a ``builtin:NAME`` id with :func:`register_builtin`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.request import GenerationRequest, RequestError
from ..runtime.devices import cpu_threads
from . import terrain
from .base import Builtin, Denoiser, Factory, ModelUnavailable, downloads_allowed, pickle_allowed

_BUILTINS: dict[str, Builtin] = {b.name: b for b in (terrain.BUILTIN,)}


def register_builtin(name: str, factory: Factory, defaults: dict[str, Any] | None = None,
                     info: dict[str, Any] | None = None) -> None:
    """Make ``builtin:<name>`` load through ``factory(request, device, dtype)`` (see :class:`Builtin`)."""
    _BUILTINS[name] = Builtin(name, factory, dict(defaults or {}), dict(info or {}))


def builtin_info(name: str) -> dict[str, Any] | None:
    """What ``builtin:<name>`` says about itself; None if unknown."""
    return dict(_BUILTINS[name].info) if name in _BUILTINS else None


def model_defaults(model: str) -> dict[str, Any]:
    """Request fields that suit ``model`` (empty for models that take the request's defaults)."""
    if model.startswith("builtin:"):
        builtin = _BUILTINS.get(model.split(":", 1)[1])
        return dict(builtin.defaults) if builtin else {}
    from .flow import describe_folder, model_folder  # configs only: nothing heavy is imported

    folder = model_folder(model)
    described = describe_folder(folder) if folder is not None else None
    return dict(described["defaults"]) if described else {}


def builtin_names() -> list[str]:
    return sorted(_BUILTINS)


# One loaded model is kept: the GUI and tests generate many times with the same weights, and
# loading an SD checkpoint costs seconds. A different model/device/dtype replaces it, and so does
# a different CPU thread limit (the backend's pools are sized when it loads).
_CACHE: dict[tuple[str, str | None, str, str, bool, int | None, str], Denoiser] = {}

# diffusers pipelines (a folder's or a cached hub id's ``model_index.json`` ``_class_name``) that a
# backend other than the SD one runs: module and loader, imported when used.
_PIPELINES = {
    "FluxPipeline": ("flux", "load_flux"),
    "StableDiffusion3Pipeline": ("sd3", "load_sd3"),
}


def load_denoiser(request: GenerationRequest, device: torch.device, dtype: torch.dtype) -> Denoiser:
    """Load (or reuse) the backend for ``request.model`` on ``device`` in ``dtype``."""
    key = (request.model, request.transformer, str(device), str(dtype), request.compile, cpu_threads(),
           request.weights)
    if key in _CACHE:
        return _CACHE[key]
    if request.model.startswith("builtin:"):
        name = request.model.split(":", 1)[1]
        if name not in _BUILTINS:
            known = ", ".join(f"builtin:{n}" for n in builtin_names()) or "none"
            raise ModelUnavailable(f"model: there is no built-in model {name!r} (built-in: {known})")
        _full_weights_only(request, f"builtin:{name}")
        den = _BUILTINS[name].factory(request, device, dtype)
    else:
        den = _load_diffusers(request, device, dtype)
        if request.compile:
            enable = getattr(den, "enable_compile", None)
            if enable is None:  # refused by name, not an AttributeError from deep inside the loader
                raise RequestError("compile", f"{den.name} ({getattr(den, 'kind', type(den).__name__)}) cannot be "
                                              "compiled yet: run it without compile (--compile)")
            enable()
    _CACHE.clear()
    _CACHE[key] = den
    return den


def _load_diffusers(request: GenerationRequest, device: torch.device, dtype: torch.dtype) -> Any:
    """A diffusers model, by the pipeline its folder (or cached hub id) names; SD for the rest."""
    import importlib
    from pathlib import Path

    from .flow import KIND_NAMES, checkpoint_kind, pipeline_class_name

    name = pipeline_class_name(request.model)
    if name in _PIPELINES:
        module, loader = _PIPELINES[name]
        load = getattr(importlib.import_module(f".{module}.backend", __package__), loader)
        return load(request.model, device, dtype, transformer=request.transformer, allow_download=downloads_allowed(),
                    weights=request.weights)
    _full_weights_only(request, request.model)
    path = Path(request.model).expanduser()
    if request.transformer is not None:
        what = f"a {name} model" if name else f"{path.name}"
        raise ModelUnavailable(f"transformer: a single-file transformer goes with a FLUX.1 or SD3 model folder (its "
                               f"text encoders and VAE); {what} is neither: leave --transformer out, or give --model "
                               "the folder the transformer belongs to")
    if path.suffix == ".safetensors" and path.is_file() and checkpoint_kind(path) in ("flux", "sd3"):
        kind = KIND_NAMES[checkpoint_kind(path)]
        raise ModelUnavailable(f"model: {path.name} holds {kind} alone, without the text encoders and the VAE: give "
                               "--model the diffusers folder of that model (FLUX.1 or SD3) and --transformer "
                               f"{path.name}")
    from .sd.backend import load_sd  # diffusers pipelines import slowly; only pay when used

    return load_sd(request.model, device, dtype, allow_download=downloads_allowed(), allow_pickle=pickle_allowed())


def _full_weights_only(request: GenerationRequest, model: str) -> None:
    """fp8 storage is offered for the diffusion transformers (FLUX.1, SD3) alone: refuse it by name."""
    if request.weights != "full":
        raise RequestError("weights", f"{request.weights} storage is offered for FLUX.1 and SD3 transformers; "
                                      f"{model} is neither: use weights full")


def clear_cache() -> None:
    _CACHE.clear()
