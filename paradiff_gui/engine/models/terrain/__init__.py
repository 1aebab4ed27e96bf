"""``builtin:terrain``: the built-in offline model — real pretrained weights, no download.

The PyPI package ``adaptive-terrain-diffusion`` (MIT) ships a consistency UNet as an ONNX file:
128×128 single-channel terrain heightmaps, x0-prediction conditioned on the noise level σ
(0.002…80) and a "difficulty" class 1…100 (fed scaled to [0, 1]); model space is [-1, 1] with an
asinh height encoding. Paradiff runs it as a native torch module written from that graph
(``unet.TerrainUNet``; weights converted once into the user cache by ``weights.py``), so it runs
on cpu, cuda and mps, in fp32/fp16/bf16, under ``torch.compile``, and its layers are open to the
loop. ONNX Runtime stays only as the reference the equality test and the benchmark compare with.

Samplers, on a geometric σ schedule from 80 down to ``SIGMA_END``:
- ``lcm``: multistep consistency sampling (Song et al. 2023, Algorithm 1): x0 = f(x, σ_i), then
  re-noise to σ_{i+1} with fresh noise: x = x0 + sqrt(σ_{i+1}² − σ_min²)·z.
- ``euler`` / ``ddim``: the deterministic probability-flow step: x = x0 + (σ_{i+1}/σ_i)·(x − x0).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...core.plan import Tile, TilePlan
from ...core.request import GenerationRequest, RequestError
from ..base import Builtin, ModelUnavailable
from .weights import load_unet, onnx_path

NATIVE = 128  # px; the size the model was trained at (the ONNX graph accepts only this)
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
# The bundled model is distilled for one step: asked again at lower σ it leaves a fine speckle
# (80→10: 4.4x the one-step output's mean |Laplacian| at 512²). Stopping higher is smoother but
# the tiles agree less (80→20: 2.1x, seam ratio 1.058 ± 0.126 against 1.022 ± 0.043), so the
# default stays at 10 (docs/QUALITY.md, "Schedules"; benchmarks/bench_speckle.py).
SIGMA_END = 10.0
HEIGHT_RANGE = 22.16864013671875  # metres spanned by model space [-1, 1] (from the package)
ASINH_SCALE = 0.1
DEFAULT_DIFFICULTY = 35
SAMPLERS = ("lcm", "euler", "ddim")
CPU_CHUNK = 8  # tiles per model call on a CPU
COMPILE_BACKEND = "inductor"  # torch.compile's default; the tests trace with aot_eager (no C++ build)
# Overlap 64 (half a tile): the seam ratio is 1.02 ± 0.03 at 512² against 1.08 ± 0.10 at 48 and
# 1.76 ± 0.43 at an actual 32 (docs/QUALITY.md); jitter and global context stay opt-in (they cost
# 1.5–1.9× and do not beat the wider overlap with cosine fusion).
DEFAULTS = {"steps": 8, "sampler": "lcm", "guidance": 1.0, "tile": NATIVE, "overlap": 64, "width": 512,
            "height": 512}


# Image-to-image (img2img, upscaling): strength S raises the init image to
# σ = SIGMA_IMAGE_LOW·(SIGMA_MAX/SIGMA_IMAGE_LOW)^S: S = 1 is 80 (text-to-image), 0.5 is 2.0, 0.8 is 18.
# σ is in units of half the data's spread: 10 (the end of the text-to-image schedule) keeps only
# the largest shapes of a picture, 2 its shapes and not its fine texture (docs/QUALITY.md).
SIGMA_IMAGE_LOW = 0.05


def image_sigma(strength: float) -> float:
    """The noise level an init image is raised to for a strength in (0, 1]."""
    return SIGMA_IMAGE_LOW * (SIGMA_MAX / SIGMA_IMAGE_LOW) ** strength


def sigma_schedule(n: int, sigma_max: float = SIGMA_MAX, sigma_end: float | None = None) -> list[float]:
    """n noise levels, geometric from sigma_max down to sigma_end (default ``SIGMA_END``)."""
    sigma_end = SIGMA_END if sigma_end is None else sigma_end
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

    def set_image_timesteps(self, steps: int, strength: float) -> torch.Tensor:
        """Image-to-image: the init image is raised to σ = :func:`image_sigma` (strength). Above the
        text-to-image schedule's end (10) the run takes that schedule's remaining part from there
        (as many of the ``steps`` as its σ range spans); at or below it, one consistency step —
        every further step re-noises and re-draws what the first kept (two x2 passes from σ 1.26:
        42.6 dB in one step against 21.9 dB in four; docs/QUALITY.md)."""
        start = image_sigma(strength)
        if start <= SIGMA_END:
            self.timesteps = torch.tensor([start], dtype=torch.float32)
        else:
            span = math.log(start / SIGMA_END) / math.log(SIGMA_MAX / SIGMA_END)
            n = 1 + round((steps - 1) * span)
            self.timesteps = torch.tensor(sigma_schedule(n, start, SIGMA_END), dtype=torch.float32)
        self._index = 0
        return self.timesteps

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x0 + sigma.reshape(-1, 1, 1, 1).to(x0) * noise

    def scale_model_input(self, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return sample  # the model takes the raw noisy sample and σ (c_in is inside)

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


def model_from_heights(metres: np.ndarray) -> np.ndarray:
    """Metres → model space [-1, 1]: the package's asinh encoding (inverse of heights_from_model)."""
    unit = np.arcsinh(np.clip(metres, 0.0, HEIGHT_RANGE) / ASINH_SCALE) / np.arcsinh(HEIGHT_RANGE / ASINH_SCALE)
    return unit * 2.0 - 1.0


@dataclass(frozen=True)
class TerrainConditioning:
    difficulty: int


class TerrainDenoiser:
    """The bundled consistency UNet, in torch, behind the Denoiser protocol (pixel space, 1 channel)."""

    name = "builtin:terrain"
    scale = 1
    channels = 1
    native_tile = NATIVE

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32, compile: bool = False) -> None:
        unet = load_unet().to(device).set_compute_dtype(dtype)
        # Channels-last: oneDNN's CPU convolutions and tensor-core convolutions both prefer it
        # (CPU, 2 cores: 1.17-1.24x faster than the plain layout; benchmarks/bench_terrain.py).
        self.memory_format = torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
        self.unet = unet.to(memory_format=self.memory_format)
        self.device = device
        self.dtype = dtype
        self.compiled = compile
        # The layers bridges reach into (sampling/bridges.py), and the bridge of the run when
        # the loop installs one: each model call then tells it which tiles the call holds.
        self.bridge_module = unet
        self.bridge: Any = None
        if compile:
            # fullgraph: a graph break would silently run part of the model uncompiled.
            self.unet = torch.compile(self.unet, fullgraph=True, dynamic=False, backend=COMPILE_BACKEND)

    @contextlib.contextmanager
    def bridgeable(self) -> Iterator[None]:
        """Nothing to open: the terrain UNet's modules already have what bridges reach into."""
        yield

    @torch.inference_mode()
    def predict(
        self, x: torch.Tensor, t: torch.Tensor, tiles: Sequence[Tile], cond: TerrainConditioning
    ) -> torch.Tensor:
        b = len(tiles)
        sigma = torch.full((b,), float(t), device=self.device)
        label = torch.full((b,), (cond.difficulty - 1) / 99, device=self.device)
        x = x.to(self.device, torch.float32).contiguous(memory_format=self.memory_format)
        # On a CPU, activations of more than a few tiles fall out of the caches and the
        # elementwise passes become memory-bound (49 tiles at once: 1.5x slower per tile).
        # Same-step bridges need the whole batch in one call.
        fresh = self.bridge is not None and self.bridge.config.fresh
        chunk = CPU_CHUNK if self.device.type == "cpu" and not fresh else b
        outs = []
        for i in range(0, b, chunk):
            part = slice(i, i + chunk)
            with self.bridge.tiles(tiles[part]) if self.bridge is not None else contextlib.nullcontext():
                outs.append(self.unet(x[part], sigma[part], label[part]))
        return torch.cat(outs).float()

    def notices(self, request: GenerationRequest) -> list[str]:
        out = []
        if request.prompt or request.negative_prompt:
            out.append("builtin:terrain is conditioned on difficulty, not text: the prompt is ignored")
        if request.guidance != 1.0:
            out.append("builtin:terrain is directly conditioned: guidance is ignored")
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

    def preview(self, x: torch.Tensor, pred: torch.Tensor, t: float, linear: bool = False) -> torch.Tensor:
        grey = ((pred[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return grey[..., None].expand(-1, -1, -1, 3)

    def encode(self, pixels: np.ndarray, on_progress: Callable[[int, int], None]) -> torch.Tensor:
        """A heightmap in [0, 1] of the 16-bit range (what :meth:`decode` writes, divided by 65535)
        as a (1, 1, H, W) canvas in model space: the inverse of :func:`heights_from_model`."""
        on_progress(0, 1)
        x = torch.from_numpy(model_from_heights(np.asarray(pixels, dtype=np.float64) * HEIGHT_RANGE))
        on_progress(1, 1)
        return x.float()[None, None]

    def decode(self, latents: torch.Tensor, on_progress: Callable[[int, int], None], wrap: str = "none") -> np.ndarray:
        """The 16-bit heightmap: 0 = sea level of the model, 65535 = its full 22.17 m range (pixel
        space: a wrapped canvas needs nothing more)."""
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
    try:
        return onnx_path().stat().st_size
    except (ModelUnavailable, OSError):
        return None


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
    # Measured: 53.5-58.6 s for 49 tiles x 8 steps at 512² on a 2-core CPU (docs/PERFORMANCE.md).
    "seconds_per_view": {"cpu": 0.14},
    "channels": 1,
    "weight_bytes": _weights_bytes(),  # the ONNX file: fp32 weights
    "weight_dtype_bytes": 4,
    # Peak live activations of one model call, counted tensor by tensor on the CPU: 24.4 MiB for
    # one tile in fp32, 42.4 MiB for four in bf16 — about 340 bytes per px per dtype byte; 400
    # leaves room for attention workspaces on a GPU.
    "view_bytes_per_px": 400,
}

BUILTIN = Builtin("terrain", lambda request, device, dtype: TerrainDenoiser(device, dtype, request.compile),
                  DEFAULTS, INFO)
