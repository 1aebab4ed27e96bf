"""Paradiff's engine: synchronized tiled diffusion, Qt-free.

    from paradiff_gui.engine import GenerationRequest, generate
    result = generate(GenerationRequest(model="path/to/sd15", prompt="a castle", width=2048, height=1024))
"""

from __future__ import annotations

from . import events
from .cancel import Cancelled, CancelToken
from .denoisers import Denoiser, ModelUnavailable, register_builtin
from .plan import Tile, TilePlan
from .request import GenerationRequest, RequestError
from .sampler import GenerationResult, generate

__all__ = [
    "CancelToken",
    "Cancelled",
    "Denoiser",
    "GenerationRequest",
    "GenerationResult",
    "ModelUnavailable",
    "RequestError",
    "Tile",
    "TilePlan",
    "events",
    "generate",
    "register_builtin",
]
