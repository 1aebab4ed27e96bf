"""What a request will cost before it runs: views, time and host memory (from a ModelInfo)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.modelinfo import ModelInfo
from ..core.request import GenerationRequest
from .memory import footprint, host_footprint, host_limit, host_plan


@dataclass(frozen=True)
class Estimate:
    """What a request will cost, before running it."""

    tiles: int
    views_per_step: int  # model evaluations per step (tiles x 2 with classifier-free guidance)
    evaluations: int  # steps that evaluate the model (second-order samplers evaluate twice)
    seconds: float | None  # None when no speed is known for this model and device yet
    canvas_bytes: int  # host memory for the canvas, its fusion buffers and the decoded image
    weight_bytes: int | None
    host_bytes: int = 0  # the run's peak in host memory (memory.host_footprint)

    @property
    def total_views(self) -> int:
        return self.views_per_step * self.evaluations


def estimate(request: GenerationRequest, info: ModelInfo, seconds_per_view: float | None = None,
             device: str = "cpu") -> Estimate:
    """Views, time and memory of ``request``. ``seconds_per_view`` (measured on this machine)
    wins over the model's prior for ``device``."""
    plan = info.plan(request)
    cfg = info.views_per_tile if request.guidance > 1.0 else 1
    views = len(plan) * cfg
    evals = request.steps * (2 if request.sampler == "heun" else 1)
    if request.global_context > 0 and request.fusion != "independent":
        evals *= 2
    if request.jitter:
        # A shifted grid needs up to one more row and column of tiles.
        views = (plan.rows + 1) * (plan.cols + 1) * cfg
    rate = seconds_per_view if seconds_per_view is not None else info.seconds_per_view.get(device)
    seconds = rate * views * evals if rate is not None else None
    canvas = footprint(request, info, "fp32").canvas
    image = request.width * request.height * (2 if info.output == "height" else 3)
    device_type = "cpu" if device == "cpu" else "cuda"
    limit = host_limit(request)
    host = host_plan(request, info, device_type, "fp32", limit)[0].total if limit is not None \
        else host_footprint(request, info, device_type).total
    return Estimate(len(plan), views, evals, seconds, canvas + image, info.weight_bytes, host)
