"""Paradiff's engine: synchronized tiled diffusion, Qt-free.

    from paradiff_gui.engine import GenerationRequest, generate
    result = generate(GenerationRequest(model="path/to/sd15", prompt="a castle", width=2048, height=1024))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use (PEP 562): `paradiff --help`/`--version` and anything that only needs the
# request or the plan do not pay for torch and diffusers (1.3 s of a 1.5 s CLI start on 2 cores).
_LAZY = {
    "events": ".events",
    "CancelToken": ".cancel",
    "Cancelled": ".cancel",
    "Denoiser": ".denoisers",
    "ModelUnavailable": ".denoisers",
    "register_builtin": ".denoisers",
    "Tile": ".plan",
    "TilePlan": ".plan",
    "GenerationRequest": ".request",
    "RequestError": ".request",
    "GenerationResult": ".sampler",
    "generate": ".sampler",
}

__all__ = [  # noqa: RUF022 (kept as the names of _LAZY, in its order)
    "events", "CancelToken", "Cancelled", "Denoiser", "ModelUnavailable", "register_builtin", "Tile", "TilePlan",
    "GenerationRequest", "RequestError", "GenerationResult", "generate",
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
    from . import events
    from .cancel import Cancelled, CancelToken
    from .denoisers import Denoiser, ModelUnavailable, register_builtin
    from .plan import Tile, TilePlan
    from .request import GenerationRequest, RequestError
    from .sampler import GenerationResult, generate
