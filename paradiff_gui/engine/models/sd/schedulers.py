"""Sampler names → diffusers schedulers, built from a model's own scheduler config.

The loop keeps one scheduler for the whole canvas and calls its ``step`` once per model
evaluation, so multistep solvers (DPM++, UniPC) keep their history unchanged.
"""

from __future__ import annotations

from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    UniPCMultistepScheduler,
)

from ...core.request import SAMPLERS

_TABLE: dict[str, tuple[type, dict[str, Any]]] = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "unipc": (UniPCMultistepScheduler, {}),
    "lcm": (LCMScheduler, {}),
}
assert set(_TABLE) == set(SAMPLERS), "every request sampler needs a scheduler"

def make_scheduler(name: str, config: Any) -> Any:
    """A fresh scheduler for sampler ``name`` from a model's scheduler ``config``."""
    cls, overrides = _TABLE[name]
    return cls.from_config(config, **overrides)
