"""Progress events: small frozen dataclasses, one per thing that happened.

The engine emits them through one callback and never knows who listens (CLI, GUI bridge,
tests). Arrays in events are numpy, never torch, so listeners need no torch and no device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from .plan import TilePlan
    from .request import GenerationRequest


@dataclass(frozen=True)
class Planned:
    """The plan is fixed and the model is loaded; ``total_steps`` model evaluations follow."""

    request: GenerationRequest
    plan: TilePlan
    total_steps: int
    device: str
    dtype: str


@dataclass(frozen=True)
class Notice:
    """Something the user should know that does not stop the run (e.g. an ignored prompt)."""

    message: str


@dataclass(frozen=True)
class StepStarted:
    step: int  # 0-based
    total: int
    timestep: float
    plan: TilePlan  # the tiles of this step (with jitter, the grid moves from step to step)


@dataclass(frozen=True)
class BatchStarted:
    """A batch of tiles went to the model (the GUI highlights them)."""

    step: int
    tiles: tuple[int, ...]


@dataclass(frozen=True)
class TilePreview:
    """A cheap RGB approximation of one tile's current state (uint8; the linear map's at most 128
    latent px a side, a tiny autoencoder's at most 256 px: painted into ``rect`` at any size)."""

    step: int
    tile: int  # index into this step's plan
    rgb: np.ndarray  # (h, w, 3) uint8
    rect: tuple[int, int, int, int]  # where the tile sits: x0, y0, x1, y1 in image px
    # What made it: "linear" (the backend's cheap latent→RGB map) or "tiny" (a tiny autoencoder:
    # sharp, costly; with a budget, the linear map fills the tiles it does not pay for).
    decoder: str = "linear"


@dataclass(frozen=True)
class StepFinished:
    step: int
    total: int
    seconds: float
    consensus: float | None = None  # RMS disagreement of overlapping tiles before fusion
    device_memory: int | None = None  # peak bytes allocated on the GPU so far (CUDA only)


@dataclass(frozen=True)
class Decoding:
    done: int
    total: int


@dataclass(frozen=True)
class Finished:
    image: np.ndarray  # (H, W, 3) uint8 RGB, or (H, W) uint16 for single-channel models
    request: GenerationRequest
    plan: TilePlan
    seconds: float
    info: dict[str, Any]


@dataclass(frozen=True)
class Cancelled:
    step: int


@dataclass(frozen=True)
class Failed:
    message: str
    kind: str  # "request" | "model" | "runtime"


Event = (
    Planned | Notice | StepStarted | BatchStarted | TilePreview | StepFinished | Decoding | Finished
    | Cancelled | Failed
)
TERMINAL = (Finished, Cancelled, Failed)
