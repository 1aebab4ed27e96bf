"""``builtin:terrain``: the built-in offline model — real pretrained weights, no download.

The PyPI package ``adaptive-terrain-diffusion`` (MIT) ships a consistency UNet as an ONNX file:
128×128 single-channel terrain heightmaps, x0-prediction conditioned on the noise level σ
(0.002…80) and a "difficulty" class 1…100 (fed scaled to [0, 1]); model space is [-1, 1] with an
asinh height encoding. We load the bundled file with ONNX Runtime (CUDA provider when present)
and drive it with our own multistep samplers, so every step fuses all tiles on one canvas.

Samplers, on a geometric σ schedule from 80 down to ``SIGMA_END``:
- ``lcm``: multistep consistency sampling (Song et al. 2023, Algorithm 1): x0 = f(x, σ_i), then
  re-noise to σ_{i+1} with fresh noise: x = x0 + sqrt(σ_{i+1}² − σ_min²)·z.
- ``euler`` / ``ddim``: the deterministic probability-flow step: x = x0 + (σ_{i+1}/σ_i)·(x − x0).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..devices import cpu_threads
from ..plan import Tile, TilePlan
from ..request import GenerationRequest, RequestError
from . import ModelUnavailable, register_builtin

NATIVE = 128  # px; the ONNX graph accepts exactly this
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
# The bundled model is distilled for one step: asked again at σ below ~5 with fresh noise it
# returns visibly noisy terrain (mean |∇| 0.08 at 80→2 vs 0.02 at 80→10 and 0.006 one-step,
# measured on 128² tiles, difficulty 35). So the schedule stays at high σ; issue 3 tunes it.
SIGMA_END = 10.0
HEIGHT_RANGE = 22.16864013671875  # metres spanned by model space [-1, 1] (from the package)
ASINH_SCALE = 0.1
DEFAULT_DIFFICULTY = 35
SAMPLERS = ("lcm", "euler", "ddim")
# Overlap 64 (half a tile): the seam ratio is 1.02 ± 0.03 at 512² against 1.08 ± 0.10 at 48 and
# 1.76 ± 0.43 at an actual 32 (docs/QUALITY.md); jitter and global context stay opt-in (they cost
# 1.5–1.9× and do not beat the wider overlap with cosine fusion).
DEFAULTS = {"steps": 8, "sampler": "lcm", "guidance": 1.0, "tile": NATIVE, "overlap": 64, "width": 512,
            "height": 512}


def sigma_schedule(n: int, sigma_max: float = SIGMA_MAX, sigma_end: float = SIGMA_END) -> list[float]:
    """n noise levels, geometric from sigma_max down to sigma_end."""
    if n == 1:
        return [sigma_max]
    return [sigma_max * (sigma_end / sigma_max) ** (i / (n - 1)) for i in range(n)]


class TerrainSampler:
    """A scheduler with the slice of diffusers' interface the synchronized loop uses."""

    order = 1

    def __init__(self, stochastic: bool) -> None:
        self.stochastic = stochastic
        self.init_noise_sigma = SIGMA_MAX
        self.timesteps = torch.empty(0)
        self._index = 0

    def set_timesteps(self, steps: int, device: Any = None) -> None:
        self.timesteps = torch.tensor(sigma_schedule(steps), dtype=torch.float32)
        self._index = 0

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x0 + sigma.reshape(-1, 1, 1, 1).to(x0) * noise

    def scale_model_input(self, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return sample  # the ONNX graph takes the raw noisy sample and σ

    def step(self, x0: torch.Tensor, sigma: torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = False) -> tuple[torch.Tensor]:
        self._index += 1
        if self._index >= len(self.timesteps):
            return (x0,)
        nxt = float(self.timesteps[self._index])
        if self.stochastic:
            z = torch.randn(sample.shape, generator=generator, dtype=torch.float32).to(sample.device)
            return (x0 + math.sqrt(max(nxt**2 - SIGMA_MIN**2, 0.0)) * z,)
        return (x0 + (nxt / float(sigma)) * (sample - x0),)


def heights_from_model(x: np.ndarray) -> np.ndarray:
    """Model space [-1, 1] → metres, inverting the package's asinh encoding."""
    unit = np.clip((x + 1.0) * 0.5, 0.0, 1.0)
    return ASINH_SCALE * np.sinh(unit * np.arcsinh(HEIGHT_RANGE / ASINH_SCALE))


@dataclass(frozen=True)
class TerrainConditioning:
    difficulty: int


class TerrainDenoiser:
    """The bundled ONNX consistency UNet behind the Denoiser protocol (pixel space, 1 channel)."""

    name = "builtin:terrain"
    scale = 1
    channels = 1
    native_tile = NATIVE
    dtype = torch.float32

    def __init__(self, device: torch.device) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelUnavailable(
                "model: builtin:terrain needs ONNX Runtime; pip install onnxruntime (or onnxruntime-gpu)"
            ) from None
        try:
            weights = importlib.resources.files("terrain_diffusion").joinpath(
                "weights/terrain_consistency_unet_difficulty100.onnx")
        except ModuleNotFoundError:
            raise ModelUnavailable(
                "model: builtin:terrain needs the package adaptive-terrain-diffusion (pip install "
                "adaptive-terrain-diffusion==0.4.2); it carries the weights, no download at run time"
            ) from None
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = ort.SessionOptions()
        options.log_severity_level = 3  # keep provider chatter off the user's terminal
        if cpu_threads() is not None:
            options.intra_op_num_threads = cpu_threads()
        self.session = ort.InferenceSession(str(weights), sess_options=options, providers=providers)
        # The canvas lives where torch can keep it; ONNX Runtime gets numpy either way.
        self.device = device if device.type == "cuda" else torch.device("cpu")
        self.providers = tuple(self.session.get_providers())

    def notices(self, request: GenerationRequest) -> list[str]:
        out = []
        if request.prompt or request.negative_prompt:
            out.append("builtin:terrain is conditioned on difficulty, not text: the prompt is ignored")
        if request.guidance != 1.0:
            out.append("builtin:terrain is directly conditioned: guidance is ignored")
        if request.compile:
            out.append("builtin:terrain runs in ONNX Runtime: compile is ignored")
        return out

    def make_scheduler(self, sampler: str) -> TerrainSampler:
        if sampler not in SAMPLERS:
            raise RequestError("sampler", f"builtin:terrain supports {', '.join(SAMPLERS)}; got {sampler!r}")
        return TerrainSampler(stochastic=sampler == "lcm")

    def prepare(self, request: GenerationRequest, plan: TilePlan) -> TerrainConditioning:
        if (plan.tile_h, plan.tile_w) != (NATIVE, NATIVE):
            raise RequestError(
                "tile", f"builtin:terrain works on {NATIVE} px tiles (the model's size) and canvases of at least "
                f"{NATIVE}x{NATIVE}; got tiles of {plan.tile_w}x{plan.tile_h}")
        return TerrainConditioning(terrain_difficulty(request))

    def predict(
        self, x: torch.Tensor, t: torch.Tensor, tiles: Sequence[Tile], cond: TerrainConditioning
    ) -> torch.Tensor:
        b = len(tiles)
        feeds = {
            "noisy": np.ascontiguousarray(x.float().cpu().numpy()),
            "sigma": np.full(b, float(t), dtype=np.float32),
            "difficulty": np.full(b, (cond.difficulty - 1) / 99, dtype=np.float32),
        }
        out = self.session.run(["denoised"], feeds)[0]
        return torch.from_numpy(out).to(x.device)

    def preview(self, x: torch.Tensor, pred: torch.Tensor, t: float) -> torch.Tensor:
        grey = ((pred[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return grey[..., None].expand(-1, -1, -1, 3)

    def decode(self, latents: torch.Tensor, on_progress: Callable[[int, int], None]) -> np.ndarray:
        """The 16-bit heightmap: 0 = sea level of the model, 65535 = its full 22.17 m range."""
        on_progress(0, 1)
        metres = heights_from_model(latents[0, 0].float().cpu().numpy())
        on_progress(1, 1)
        return np.round(metres / HEIGHT_RANGE * 65535).astype(np.uint16)


def terrain_difficulty(request: GenerationRequest) -> int:
    value = request.extra.get("terrain_difficulty", DEFAULT_DIFFICULTY)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise RequestError("terrain_difficulty", f"must be a whole number from 1 to 100, got {value!r}")
    return value


def _weights_bytes() -> int | None:
    # Located, not imported: the package pulls in its own runtime on import.
    spec = importlib.util.find_spec("terrain_diffusion")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "weights" / "terrain_consistency_unet_difficulty100.onnx"
    return path.stat().st_size if path.is_file() else None


INFO = {
    "label": "Terrain heightmaps (built-in, offline)",
    "scale": 1,
    "native_tile": NATIVE,
    "fixed_tile": True,
    "text": False,
    "guidance": False,
    "samplers": SAMPLERS,
    "output": "height",
    # (extra key, label, min, max, default): backend options the GUI shows as spin boxes.
    "controls": (("terrain_difficulty", "Difficulty", 1, 100, DEFAULT_DIFFICULTY),),
    # Measured: 62 s for 49 tiles x 8 steps at 512² on a 2-core CPU (docs/QUALITY.md).
    "seconds_per_view": {"cpu": 0.16},
    "channels": 1,
    "weight_bytes": _weights_bytes(),
}

register_builtin("terrain", lambda request, device, dtype: TerrainDenoiser(device), DEFAULTS, INFO)
