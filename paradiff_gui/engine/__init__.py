"""Paradiff's engine: synchronized tiled diffusion, Qt-free.

    from paradiff_gui.engine import GenerationRequest, generate
    result = generate(GenerationRequest(model="path/to/sd15", prompt="a castle", width=2048, height=1024))

Compositions are request fields: ``regions=[{"rect": [0, 0, 1024, 1024], "prompt": "a lake"}]``,
``init_image="photo.png", strength=0.5``, ``wrap="xy"``; ``upscale("photo.png", 4)`` runs the x2
passes and writes each one; ``refine("big.png", rect=(0, 0, 512, 512))`` re-draws a selection.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use (PEP 562): `paradiff --help`/`--version` and anything that only needs the
# request or the plan do not pay for torch and diffusers (1.3 s of a 1.5 s CLI start on 2 cores).
_LAZY = {
    "events": ".core.events",
    "CancelToken": ".core.cancel",
    "Cancelled": ".core.cancel",
    "Tile": ".core.plan",
    "TilePlan": ".core.plan",
    "GenerationRequest": ".core.request",
    "RequestError": ".core.request",
    "Denoiser": ".models.base",
    "ModelUnavailable": ".models.base",
    "register_builtin": ".models.registry",
    "GenerationResult": ".sampling.sampler",
    "generate": ".sampling.sampler",
    "request_for": ".api.requests",
    "build_request": ".api.requests",
    "upscale": ".api.upscale",
    "upscale_passes": ".api.upscale",
    "refine": ".api.refine",
    "refine_request": ".api.refine",
    "Region": ".core.regions",
}

__all__ = [  # noqa: RUF022 (kept as the names of _LAZY, in its order)
    "events", "CancelToken", "Cancelled", "Tile", "TilePlan", "GenerationRequest", "RequestError", "Denoiser",
    "ModelUnavailable", "register_builtin", "GenerationResult", "generate", "request_for", "build_request",
    "upscale", "upscale_passes", "refine", "refine_request", "Region",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    value = module if name == "events" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from .api.refine import refine, refine_request
    from .api.requests import build_request, request_for
    from .api.upscale import upscale, upscale_passes
    from .core import events
    from .core.cancel import Cancelled, CancelToken
    from .core.plan import Tile, TilePlan
    from .core.regions import Region
    from .core.request import GenerationRequest, RequestError
    from .models.base import Denoiser, ModelUnavailable
    from .models.registry import register_builtin
    from .sampling.sampler import GenerationResult, generate
