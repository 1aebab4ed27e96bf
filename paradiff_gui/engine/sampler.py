"""The synchronized tiled sampler — the heart of Paradiff, in one file.

Every step, every tile's crop of the *same* canvas goes through the model (in batches of
``tile_batch`` tiles), the tiles' predictions are fused on the canvas with blend windows, and
one scheduler step moves the whole canvas:

    canvas_pred = Σ_i W_i · pred_i / Σ_i W_i        (MultiDiffusion, Bar-Tal et al. 2023, eq. 5;
                                                     Mixture of Diffusers, Jiménez 2023, eq. 3)
    canvas      = scheduler.step(canvas_pred, t, canvas)

Fusing *predictions* rather than per-tile stepped latents keeps one scheduler state for the
canvas, so multistep solvers work unchanged, and the result does not depend on how tiles are
batched. ``fusion="independent"`` is the baseline that skips all of this: each tile runs start
to finish on its own crop of the noise and the results are stitched at ownership lines.

Sections:
  1. resolve device, load the model, plan the tiles
  2. condition (prompt embeddings, once)
  3. initial noise for the whole canvas, from the seed, on a CPU generator
  4. denoise: synchronized loop (or the independent baseline)
  5. decode and finish
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import blend
from .cancel import Cancelled, CancelToken
from .denoisers import Denoiser, ModelUnavailable, load_denoiser
from .devices import dtype_name, resolve_device, resolve_dtype
from .events import (
    BatchStarted,
    Decoding,
    Event,
    Failed,
    Finished,
    Notice,
    Planned,
    StepFinished,
    StepStarted,
    TilePreview,
)
from .events import Cancelled as CancelledEvent
from .plan import Tile, TilePlan
from .request import GenerationRequest, RequestError

EventSink = Callable[[Event], None]


@dataclass(frozen=True)
class GenerationResult:
    """What ``generate`` returns: the image plus everything needed to reproduce or inspect it."""

    image: np.ndarray  # (H, W, 3) uint8
    latents: torch.Tensor  # (1, C, h, w) float32 on the CPU: the finished canvas before decoding
    request: GenerationRequest
    plan: TilePlan
    seconds: float
    info: dict[str, Any]


def _step_kwargs(scheduler: Any, generator: torch.Generator) -> dict[str, Any]:
    # Only ancestral/stochastic samplers take a generator; passing it to others is an error.
    return {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}


class _Denoise:
    """Shared state of one denoising run: the model, the plan, events, cancellation."""

    def __init__(self, den: Denoiser, request: GenerationRequest, plan: TilePlan, cond: Any,
                 emit: EventSink, cancel: CancelToken, previews: bool) -> None:
        self.den, self.request, self.plan, self.cond = den, request, plan, cond
        self.emit, self.cancel, self.previews = emit, cancel, previews
        self.batch = request.tile_batch
        self.step = 0
        self.t_value = 0.0  # the current timestep as a host float (no device sync to read it)
        self._pending: tuple | None = None  # the previous batch's previews, still in flight to the host

    def batches(self) -> list[list[Tile]]:
        tiles = list(self.plan.tiles)
        return [tiles[i : i + self.batch] for i in range(0, len(tiles), self.batch)]

    def run_batch(self, crops: torch.Tensor, t: torch.Tensor, tiles: list[Tile]) -> torch.Tensor:
        """One model call on a batch of tile crops; emits the batch and its previews."""
        # Cancel is checked before every batch: a cancel lands within one batch.
        self.cancel.check()
        self.emit(BatchStarted(self.step, tuple(tl.index for tl in tiles)))
        pred = self.den.predict(crops.to(self.den.dtype), t, tiles, self.cond).float()
        if self.previews:
            self._queue_previews(tiles, self.den.preview(crops, pred, self.t_value))
        return pred

    def _queue_previews(self, tiles: list[Tile], rgb: torch.Tensor) -> None:
        """Start copying this batch's previews to the host and emit the previous batch's.

        Reading a GPU result on the host waits for the GPU. Emitting one batch late means the
        wait is for a copy queued *before* the current batch's model call, so the GPU is never
        left idle by previews; the last batch of a step is flushed once per step.
        """
        if rgb.device.type == "cuda":
            host = torch.empty(rgb.shape, dtype=rgb.dtype, pin_memory=True)
            host.copy_(rgb, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        else:
            host, done = rgb, None
        previous, self._pending = self._pending, (self.step, tiles, host, done)
        if previous is not None:
            self._emit_previews(*previous)

    def flush_previews(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._emit_previews(*pending)

    def _emit_previews(self, step: int, tiles: list[Tile], host: torch.Tensor, done: Any) -> None:
        if done is not None:
            done.synchronize()
        arrays = host.numpy()
        for k, tl in enumerate(tiles):
            self.emit(TilePreview(step, tl.index, np.ascontiguousarray(arrays[k])))


def predict_canvas(run: _Denoise, x_in: torch.Tensor, t: torch.Tensor, wins: torch.Tensor,
                   inv_wsum: torch.Tensor) -> torch.Tensor:
    """4.2 The fused prediction for the whole canvas: Σ W_i·pred_i / Σ W_i.

    ``x_in`` is the scaled canvas (1, C, H, W); ``wins`` the (n, th, tw) blend windows;
    ``inv_wsum`` the (H, W) reciprocal of their sum on the canvas (fixed for the whole run).
    """
    acc = torch.zeros(x_in.shape, dtype=torch.float32, device=x_in.device)
    for tiles in run.batches():
        crops = torch.cat([x_in[..., tl.y0 : tl.y1, tl.x0 : tl.x1] for tl in tiles])
        pred = run.run_batch(crops, t, tiles)
        for k, tl in enumerate(tiles):
            acc[0, :, tl.y0 : tl.y1, tl.x0 : tl.x1] += pred[k] * wins[tl.index]
    return acc * inv_wsum


def _synchronized(run: _Denoise, noise: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """4. All tiles, every step, one canvas, one scheduler."""
    den, plan = run.den, run.plan
    scheduler = den.make_scheduler(run.request.sampler)
    scheduler.set_timesteps(run.request.steps, device=den.device)
    # 4.1 Blend windows and their canvas sum are fixed for the run: computed once.
    wins_np = blend.windows(plan, run.request.fusion)
    wins = torch.from_numpy(wins_np).to(den.device)
    inv_wsum = torch.from_numpy(1.0 / blend.weight_sum(plan, wins_np)).float().to(den.device)
    latents = noise.to(den.device) * scheduler.init_noise_sigma
    kwargs = _step_kwargs(scheduler, generator)
    t_host = scheduler.timesteps.cpu()
    total = len(t_host)
    for i, t in enumerate(scheduler.timesteps):
        run.step, run.t_value = i, float(t_host[i])
        run.cancel.check()
        started = time.perf_counter()
        run.emit(StepStarted(i, total, run.t_value))
        # Scaling is position-independent, so the whole canvas is scaled once, then cropped.
        x_in = scheduler.scale_model_input(latents, t)
        pred = predict_canvas(run, x_in, t, wins, inv_wsum)
        # 4.3 One scheduler step on the whole canvas.
        latents = scheduler.step(pred, t, latents, **kwargs, return_dict=False)[0]
        run.flush_previews()  # the one host wait of the step, after the step is queued
        run.emit(StepFinished(i, total, time.perf_counter() - started))
    return latents


def _independent(run: _Denoise, noise: torch.Tensor, seed: int) -> torch.Tensor:
    """4'. Baseline: each tile denoised start to finish on its own, then stitched.

    Each tile has its own scheduler and (for ancestral samplers) its own generator, so the
    result does not depend on ``tile_batch`` either; only the model calls are batched.
    """
    den, plan = run.den, run.plan
    scheds = [den.make_scheduler(run.request.sampler) for _ in plan.tiles]
    for s in scheds:
        s.set_timesteps(run.request.steps, device=den.device)
    gens = [torch.Generator("cpu").manual_seed(seed + 1 + tl.index) for tl in plan.tiles]
    noise = noise.to(den.device)
    states = [noise[..., tl.y0 : tl.y1, tl.x0 : tl.x1] * scheds[tl.index].init_noise_sigma for tl in plan.tiles]
    timesteps = scheds[0].timesteps
    t_host = timesteps.cpu()
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        run.step, run.t_value = i, float(t_host[i])
        run.cancel.check()
        started = time.perf_counter()
        run.emit(StepStarted(i, total, run.t_value))
        for tiles in run.batches():
            crops = torch.cat([scheds[tl.index].scale_model_input(states[tl.index], t) for tl in tiles])
            pred = run.run_batch(crops, t, tiles)
            for k, tl in enumerate(tiles):
                s = scheds[tl.index]
                states[tl.index] = s.step(
                    pred[k : k + 1], t, states[tl.index], **_step_kwargs(s, gens[tl.index]), return_dict=False
                )[0]
        run.flush_previews()
        run.emit(StepFinished(i, total, time.perf_counter() - started))
    # Stitch: each latent pixel from the tile whose centre is nearest (hard seams by design).
    owner = torch.from_numpy(blend.ownership(plan)).to(den.device)
    canvas = torch.zeros_like(noise)
    for tl in plan.tiles:
        mask = owner[tl.y0 : tl.y1, tl.x0 : tl.x1] == tl.index
        region = canvas[..., tl.y0 : tl.y1, tl.x0 : tl.x1]
        region[..., mask] = states[tl.index].float()[..., mask]
    return canvas


def generate(
    request: GenerationRequest,
    on_event: EventSink | None = None,
    cancel: CancelToken | None = None,
    *,
    denoiser: Denoiser | None = None,
    previews: bool = True,
) -> GenerationResult:
    """Run one generation. Events go to ``on_event``; the last one is always terminal
    (Finished, Cancelled or Failed). Raises :class:`Cancelled`, :class:`RequestError`,
    :class:`ModelUnavailable` or the runtime error after emitting the terminal event.
    """
    emit: EventSink = on_event or (lambda _e: None)
    cancel = cancel or CancelToken()
    started = time.perf_counter()
    run: _Denoise | None = None
    try:
        # 1. Device, model, plan.
        if denoiser is None:
            device = resolve_device(request.device)
            dtype = resolve_dtype(request.dtype, device)
            den = load_denoiser(request, device, dtype)
        else:
            den = denoiser
        plan = TilePlan.for_request(request, den.scale, den.native_tile)
        emit(Planned(request, plan, request.steps, str(den.device), dtype_name(den.dtype)))
        for message in getattr(den, "notices", lambda _r: [])(request):
            emit(Notice(message))

        # 2. Conditioning, computed once for all tiles and steps.
        cond = den.prepare(request, plan)
        run = _Denoise(den, request, plan, cond, emit, cancel, previews)

        # 3. Noise for the whole canvas from one CPU generator: the image depends on the seed
        #    alone, not on tile_batch, the device or the number of devices.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        noise = torch.randn((1, den.channels, plan.height, plan.width), generator=generator)

        # 4. Denoise.
        with torch.inference_mode():
            if request.fusion == "independent":
                latents = _independent(run, noise, request.seed)
            else:
                latents = _synchronized(run, noise, generator)

            # 5. Decode (never after a cancel) and finish.
            cancel.check()
            image = den.decode(latents, lambda done, total: emit(Decoding(done, total)))
        seconds = time.perf_counter() - started
        info = {"model_name": den.name, "device": str(den.device), "dtype": dtype_name(den.dtype),
                "tiles": len(plan), "plan": plan.describe()}
        result = GenerationResult(image, latents.float().cpu(), request, plan, seconds, info)
        emit(Finished(image, request, plan, seconds, info))
        return result
    except Cancelled:
        emit(CancelledEvent(run.step if run else 0))
        raise
    except RequestError as exc:
        emit(Failed(str(exc), "request"))
        raise
    except ModelUnavailable as exc:
        emit(Failed(str(exc), "model"))
        raise
    except Exception as exc:
        emit(Failed(f"{type(exc).__name__}: {exc}", "runtime"))
        raise
