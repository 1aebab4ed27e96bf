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

import contextlib
import dataclasses
import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core import blend
from ..core.cancel import Cancelled, CancelToken
from ..core.events import (
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
from ..core.events import Cancelled as CancelledEvent
from ..core.modelinfo import ModelInfo
from ..core.plan import Tile, TilePlan
from ..core.request import GenerationRequest, RequestError
from ..io.init_image import file_digest as init_digest
from ..io.init_image import image_size, load_init_image
from ..models import lora as lora_models
from ..models.base import Denoiser, ModelUnavailable
from ..models.control_images import control_notes, control_record
from ..models.info import describe_model
from ..models.registry import load_denoiser
from ..runtime import distributed, memory
from ..runtime.devices import dtype_name, resolve_device, resolve_dtype
from .anchor import back_project, keep_low_band, latent_factor
from .bridges import Bridge, config_for
from .compose import Regional, extend, fold, image_timesteps, regional
from .inpaint import Known, keep_known
from .previews import PROBE, PreviewBudget

EventSink = Callable[[Event], None]


@dataclass(frozen=True)
class GenerationResult:
    """What ``generate`` returns: the image plus everything needed to reproduce or inspect it."""

    image: np.ndarray | None  # (H, W, 3) uint8 (or (H, W) uint16); None on ranks other than 0
    latents: torch.Tensor  # (1, C, h, w) float32 on the CPU: the finished canvas before decoding
    request: GenerationRequest
    plan: TilePlan
    seconds: float
    info: dict[str, Any]


def new_scheduler(den: Denoiser, sampler: str, plan: TilePlan) -> Any:
    """A fresh scheduler for a run over ``plan``. A schedule that depends on how much the model
    sees at once (the resolution-dependent shift of flow models, models/flow.py) offers
    ``for_tile`` and is set for one tile: the model sees a tile, never the whole canvas."""
    scheduler = den.make_scheduler(sampler)
    if hasattr(scheduler, "for_tile"):
        scheduler.for_tile(plan.tile_h, plan.tile_w)
    return scheduler


def _step_kwargs(scheduler: Any, generator: torch.Generator) -> dict[str, Any]:
    # Only ancestral/stochastic samplers take a generator; passing it to others is an error.
    return {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}


class _Denoise:
    """Shared state of one denoising run: the model, the plan, events, cancellation."""

    def __init__(self, den: Denoiser, request: GenerationRequest, plan: TilePlan, cond: Any,
                 emit: EventSink, cancel: CancelToken, previews: bool) -> None:
        self.den, self.request, self.plan, self.cond = den, request, plan, cond
        self.emit, self.cancel, self.previews = emit, cancel, previews
        self.shard = distributed.current()
        self.batch = request.tile_batch if isinstance(request.tile_batch, int) else 1  # set by generate
        self.step = 0
        self.step_offset = 0  # steps of earlier passes (global context), for one running count
        self.total_steps = 0
        self.t_value = 0.0  # the current timestep as a host float (no device sync to read it)
        self._pending: tuple | None = None  # the previous batch's previews, still in flight to the host
        self.regional: Regional | None = None  # regional prompts: each tile mixes several conditionings
        # Costly previews (a tiny autoencoder) share a budget of the run's time; None: every batch.
        share = getattr(den, "preview_budget", None)
        self._budget = PreviewBudget(share) if previews and share else None

    def batches(self, plan: TilePlan) -> Iterator[list[Tile]]:
        """This rank's tiles in batches of ``tile_batch`` (all tiles when running alone).

        Cancel is checked before every batch, so it lands within one batch. With several ranks
        a rank must not leave the step alone (the others would wait in the all-reduce for ever):
        a cancelled rank skips its remaining batches and says so through the step's all-reduce.
        """
        tiles = self.shard.mine(list(plan.tiles))
        i = 0
        while i < len(tiles):  # self.batch is read anew each time: an out-of-memory halves it
            if self.shard.active:
                if self.cancel.cancelled:
                    return
            else:
                self.cancel.check()
            batch = tiles[i : i + self.batch]
            i += len(batch)
            yield batch

    def begin_step(self, plan: TilePlan, step: int, total: int) -> None:
        """Tell a model that steers by the step (ControlNets' start/end range, their maps cropped at
        the plan's canvas) that step ``step`` of ``total`` starts on ``plan``."""
        hook = getattr(self.den, "begin_step", None)
        if hook is not None:
            hook(plan, step, total)

    def agree_on_cancel(self) -> None:
        """With several ranks: raise Cancelled on every rank if any rank was cancelled."""
        if self.shard.active:
            flag = torch.tensor([1.0 if self.cancel.cancelled else 0.0], device=self.den.device)
            if self.shard.all_reduce(flag).item() > 0:
                raise Cancelled

    def run_batch(self, crops: torch.Tensor, t: torch.Tensor, tiles: list[Tile], plan: TilePlan) -> torch.Tensor:
        """One model call on a batch of tile crops; emits the batch and its previews."""
        self.emit(BatchStarted(self.step, tuple(tl.index for tl in tiles)))
        pred = self._predict(crops, t, tiles, plan)
        if self.previews:
            self._preview(crops, pred, tiles, plan)
        return pred

    def _preview(self, crops: torch.Tensor, pred: torch.Tensor, tiles: list[Tile], plan: TilePlan) -> None:
        """The batch's previews; costly ones (a tiny autoencoder) only for the tiles the preview
        budget pays for (sampling/previews.py), so they never slow the step by more than it; the
        other tiles get the cheap linear map, unless their costly preview is still fresh."""
        if self._budget is None:  # every tile, at every batch
            decoder = "linear" if getattr(self.den, "tiny", None) is None else "tiny"
            self._queue_previews([(tiles, self.den.preview(crops, pred, self.t_value), decoder)], plan)
            return
        pixels = crops.shape[-2] * crops.shape[-1]  # latent px of a tile
        if self._budget.needs_probe:  # its cost, measured on a corner of one tile (shown to no one)
            started = time.perf_counter()
            corner = (slice(0, 1), slice(None), slice(0, PROBE), slice(0, PROBE))
            self.den.preview(crops[corner], pred[corner], self.t_value)
            self._budget.measured(min(PROBE, crops.shape[-2]) * min(PROBE, crops.shape[-1]),
                                  time.perf_counter() - started)
        index = [tl.index for tl in tiles]
        due = self._budget.due(index, pixels)
        parts = []
        if due:
            started = time.perf_counter()
            keep = [tiles[k] for k in due]
            rgb = self.den.preview(crops[due], pred[due], self.t_value) if len(due) < len(tiles) \
                else self.den.preview(crops, pred, self.t_value)
            parts.append((keep, rgb, "tiny"))
            self._budget.paid([tl.index for tl in keep], pixels, time.perf_counter() - started, self.step)
        fill = self._budget.filled(index, self.step, due)
        if fill:
            parts.append(([tiles[k] for k in fill], self.den.preview(crops[fill], pred[fill], self.t_value,
                                                                     linear=True), "linear"))
        if parts:
            self._queue_previews(parts, plan)

    def _model(self, crops: torch.Tensor, t: torch.Tensor, tiles: list[Tile], plan: TilePlan) -> torch.Tensor:
        if self.regional is None:
            return self.den.predict(crops.to(self.den.dtype), t, tiles, self.cond).float()
        return self.regional.predict(lambda x, sub, cond: self.den.predict(x.to(self.den.dtype), t, sub, cond),
                                     crops, tiles, plan)

    def _predict(self, crops: torch.Tensor, t: torch.Tensor, tiles: list[Tile], plan: TilePlan) -> torch.Tensor:
        """The model on a batch; out of memory, the batch is halved and the same step goes on
        (tiles are fused one by one, so the picture does not change), down to one tile."""
        try:
            return self._model(crops, t, tiles, plan)
        except Exception as exc:
            if not _out_of_memory(exc):
                raise
        _free_device_cache(self.den.device)
        tl = tiles[0]
        bridge = getattr(self.den, "bridge", None)
        if bridge is not None and bridge.config.fresh:  # halving would change the picture: say why
            raise RequestError("bridge_step", f"same-step bridges run {len(tiles)} tiles in one call, which does not "
                                              f"fit in the memory of {self.den.device}: use bridge_step previous, "
                                              "fewer or smaller tiles, --dtype fp16, or more devices")
        if len(tiles) == 1:
            s = self.plan.scale
            kept = "" if bridge is None else (
                f" next to the {bridge.kept_bytes() / 2**30:.2f} GiB that bridges keep (use bridges off, attention "
                "with a --bridge-width, or fewer, larger tiles)")
            raise RequestError(
                "tile", f"one tile ({tl.width * s}x{tl.height * s} px) does not fit in the memory of "
                f"{self.den.device}{kept}: use smaller tiles (--tile), --dtype fp16, or close what else uses the "
                "device")
        half = len(tiles) // 2
        if half < self.batch:  # said once per new size, not once per retried batch
            self.batch = half
            self.emit(Notice(f"out of memory at a batch of {len(tiles)} tiles: continuing with {half} "
                             "(the same step; the picture does not change)"))
        return torch.cat([self._predict(crops[:half], t, tiles[:half], plan),
                          self._predict(crops[half:], t, tiles[half:], plan)])

    def _queue_previews(self, parts: list[tuple[list[Tile], torch.Tensor, str]], plan: TilePlan) -> None:
        """Start copying this batch's previews (``parts``: tiles, their RGB, the decoder that made
        it) to the host and emit the previous batch's.

        Reading a GPU result on the host waits for the GPU. Emitting one batch late means the
        wait is for a copy queued *before* the current batch's model call, so the GPU is never
        left idle by previews; the last batch of a step is flushed once per step.
        """
        queued = []
        for tiles, rgb, decoder in parts:
            if rgb.device.type == "cuda":
                host = torch.empty(rgb.shape, dtype=rgb.dtype, pin_memory=True)
                host.copy_(rgb, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
            else:
                host, done = rgb, None
            queued.append((tiles, [plan.image_rect(tl) for tl in tiles], host, done, decoder))
        previous, self._pending = self._pending, (self.step, queued)
        if previous is not None:
            self._emit_previews(*previous)

    def flush_previews(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._emit_previews(*pending)

    def _emit_previews(self, step: int, queued: list) -> None:
        for tiles, rects, host, done, decoder in queued:
            if done is not None:
                done.synchronize()
            arrays = host.numpy()
            for k, tl in enumerate(tiles):
                self.emit(TilePreview(step, tl.index, np.ascontiguousarray(arrays[k]), rects[k], decoder))


@dataclass(frozen=True)
class _Weights:
    """Everything about a plan's blend windows that stays fixed while the plan does."""

    wins: torch.Tensor  # (n, th, tw) blend windows
    inv_wsum: torch.Tensor  # (H, W) 1 / Σ windows on the canvas
    inv_count: torch.Tensor  # (H, W) 1 / number of tiles covering each pixel
    multi: torch.Tensor  # (H, W) bool: covered by two or more tiles (where tiles can disagree)
    any_multi: bool  # host copy of multi.any(): reading it from the device each step would stall it

    @classmethod
    def build(cls, plan: TilePlan, fusion: str, device: torch.device) -> _Weights:
        wins = blend.windows(plan, fusion)
        count = blend.weight_sum(plan, np.ones_like(wins))
        return cls(
            torch.from_numpy(wins).to(device),
            torch.from_numpy(1.0 / blend.weight_sum(plan, wins)).float().to(device),
            torch.from_numpy(1.0 / count).float().to(device),
            torch.from_numpy(count >= 2).to(device),
            bool((count >= 2).any()),
        )


def predict_canvas(run: _Denoise, plan: TilePlan, x_in: torch.Tensor, t: torch.Tensor,
                   weights: _Weights) -> tuple[torch.Tensor, torch.Tensor | None]:
    """4.2 The fused prediction for the whole canvas, Σ W_i·pred_i / Σ W_i, and the overlap
    consensus error: the RMS spread of the tiles' own predictions where two or more overlap,
    before any blending (0 = the tiles already agree). ``x_in`` is the scaled canvas (1, C, H, W).
    A wrapped plan's tiles read the canvas continued across its edges, and what they add past an
    edge lands at the opposite one.
    """
    x_in = extend(plan, x_in)
    acc = torch.zeros(x_in.shape, dtype=torch.float32, device=x_in.device)
    first = torch.zeros_like(acc)  # Σ pred and Σ pred², unweighted, for the consensus error
    second = torch.zeros_like(acc)
    for tiles in run.batches(plan):
        crops = torch.cat([x_in[..., tl.y0 : tl.y1, tl.x0 : tl.x1] for tl in tiles])
        pred = run.run_batch(crops, t, tiles, plan)
        for k, tl in enumerate(tiles):
            region = (0, slice(None), slice(tl.y0, tl.y1), slice(tl.x0, tl.x1))
            acc[region] += pred[k] * weights.wins[tl.index]
            first[region] += pred[k]
            second[region] += pred[k] * pred[k]
    acc, first, second = fold(plan, acc), fold(plan, first), fold(plan, second)
    if run.shard.active:
        # 4.2' Several ranks: one all-reduce adds up every rank's sums (and raises the cancel
        # flag of any rank), so every rank steps the identical canvas.
        flag = torch.full((1,), 1.0 if run.cancel.cancelled else 0.0, device=acc.device)
        packed = run.shard.all_reduce(torch.cat([acc.flatten(), first.flatten(), second.flatten(), flag]))
        if packed[-1].item() > 0:
            raise Cancelled
        n = acc.numel()
        acc, first, second = (packed[k * n : (k + 1) * n].view_as(acc) for k in range(3))
    consensus = None
    if weights.any_multi:
        mean = first * weights.inv_count
        var = (second * weights.inv_count - mean * mean).clamp_min(0)
        consensus = var[0][:, weights.multi].mean().sqrt()
    return acc * weights.inv_wsum, consensus


def jitter_offsets(plan: TilePlan, seed: int, steps: int) -> list[tuple[int, int]]:
    """Per step, a seeded random shift (latent px) of the tile grid, below one stride per axis."""
    rng = np.random.default_rng([seed, 0x6A17])
    sy, sx = plan.stride
    return [(int(rng.integers(0, sy)), int(rng.integers(0, sx))) for _ in range(steps)]


def _context_weights(steps: int, strength: float, power: float = 3.0) -> list[float]:
    """DemoFusion's skip-residual weights (Du et al. 2024, eq. 4): c_i = ((1 + cos(π i/N)) / 2)^α,
    scaled by ``strength``: the low-resolution structure leads early and fades out."""
    n = max(steps - 1, 1)
    return [strength * ((1 + np.cos(np.pi * i / n)) / 2) ** power for i in range(steps)]


def _synchronized(run: _Denoise, plan: TilePlan, noise: torch.Tensor, generator: torch.Generator, *,
                  jitter: bool = False, guide: torch.Tensor | None = None,
                  bridge: Bridge | None = None, init: torch.Tensor | None = None,
                  strength: float = 1.0, keep: torch.Tensor | None = None) -> torch.Tensor:
    """4. All tiles, every step, one canvas, one scheduler.

    ``jitter`` shifts the tile grid by a seeded offset every step, so seams never sit in the same
    place twice; the canvas itself never moves. ``guide`` is an x0 estimate of the whole canvas
    (the upscaled low-resolution pass of global context), mixed in through the skip residual.
    ``init`` is an encoded init image: the canvas starts from it noised to the first of the
    timesteps that ``strength`` keeps (strength 1: from pure noise, as text-to-image).
    """
    den, request = run.den, run.request
    scheduler = new_scheduler(den, request.sampler, plan)
    scheduler.set_timesteps(request.steps, device=den.device)
    timesteps = scheduler.timesteps
    if init is not None and strength < 1.0:
        timesteps, _ = image_timesteps(scheduler, request.steps, strength)
        if len(timesteps) == 0:  # nothing left to re-draw: the init image as it is
            return init.to(den.device)
        latents = scheduler.add_noise(init.to(den.device), noise.to(den.device), timesteps[:1])
    else:
        latents = noise.to(den.device) * scheduler.init_noise_sigma
    anchor = latent_factor(request.anchor, plan.height, plan.width) if init is not None else 0
    if anchor or keep is not None:
        init, noise = init.to(den.device, latents.dtype), noise.to(den.device, latents.dtype)
    if keep is not None:
        keep = keep.to(den.device, latents.dtype)
    kwargs = _step_kwargs(scheduler, generator)
    t_host = timesteps.cpu()
    total = len(t_host)
    offsets = jitter_offsets(plan, request.seed, total) if jitter else [(0, 0)] * total
    context = _context_weights(total, request.global_context) if guide is not None else [0.0] * total
    weights: dict[TilePlan, _Weights] = {}  # 4.1 windows depend only on the plan: built once per plan
    for i, t in enumerate(timesteps):
        run.step, run.t_value = run.step_offset + i, float(t_host[i])
        if not run.shard.active:  # with several ranks the step's all-reduce carries the cancel
            run.cancel.check()
        started = time.perf_counter()
        step_plan = plan.shifted(*offsets[i]) if jitter else plan
        if step_plan not in weights:
            weights[step_plan] = _Weights.build(step_plan, request.fusion, den.device)
        run.emit(StepStarted(run.step, run.total_steps, run.t_value, step_plan))
        run.begin_step(step_plan, i, total)
        if context[i] > 0:  # skip residual: pull the canvas toward the noised global layout
            noised_guide = scheduler.add_noise(guide, noise.to(den.device), t.reshape(1))
            latents = context[i] * noised_guide + (1 - context[i]) * latents
        # Scaling is position-independent, so the whole canvas is scaled once, then cropped.
        x_in = scheduler.scale_model_input(latents, t)
        pred, consensus = predict_canvas(run, step_plan, x_in, t, weights[step_plan])
        # 4.3 One scheduler step on the whole canvas.
        latents = scheduler.step(pred, t, latents, **kwargs, return_dict=False)[0]
        if anchor and getattr(scheduler, "state_in_first_order", True):  # ILVR: keep the init image's low band
            ref = init if i + 1 == total else scheduler.add_noise(init, noise, timesteps[i + 1: i + 2])
            latents = keep_low_band(latents, ref, anchor)
        if keep is not None and getattr(scheduler, "state_in_first_order", True):  # 4.3' keep the known part
            latents = keep_known(latents, keep, init, noise, scheduler, None if i + 1 == total
                                 else timesteps[i + 1 : i + 2])
        if bridge is not None:  # 4.4 this step's values are the neighbours' values of the next
            bridge.end_step()
        run.flush_previews()  # the one host wait of the step, after the step is queued
        run.emit(StepFinished(run.step, run.total_steps, time.perf_counter() - started,
                              None if consensus is None else float(consensus), _device_memory(den.device)))
    run.step_offset += total
    return latents


def _global_context(run: _Denoise, plan: TilePlan, generator: torch.Generator) -> torch.Tensor | None:
    """4a. Global context: denoise the canvas at the model's native resolution first (short side =
    one tile), so the large structure is decided once for the whole canvas; return it upscaled.
    None when the canvas is no larger than that already."""
    native = run.den.native_tile // run.den.scale  # latent px
    short = min(plan.height, plan.width)
    if short <= native:
        return None
    low_h, low_w = round(plan.height * native / short), round(plan.width * native / short)
    low_plan = TilePlan.create(low_h, low_w, overlap=min(plan.overlap, native // 4), tile=native, scale=plan.scale)
    low_noise = torch.randn((1, run.den.channels, low_h, low_w), generator=generator)
    # Previews of the small pass would not sit on the canvas's tiles; its steps still count.
    previews, run.previews = run.previews, False
    try:
        low = _synchronized(run, low_plan, low_noise, generator)
    finally:
        run.previews = previews
    return torch.nn.functional.interpolate(low.float(), size=(plan.height, plan.width), mode="bicubic",
                                           align_corners=False)


def _independent(run: _Denoise, noise: torch.Tensor, seed: int) -> torch.Tensor:
    """4'. Baseline: each tile denoised start to finish on its own, then stitched.

    Each tile has its own scheduler and (for ancestral samplers) its own generator, so the
    result does not depend on ``tile_batch`` either; only the model calls are batched.
    """
    den, plan = run.den, run.plan
    scheds = [new_scheduler(den, run.request.sampler, plan) for _ in plan.tiles]
    for s in scheds:
        s.set_timesteps(run.request.steps, device=den.device)
    gens = [torch.Generator("cpu").manual_seed(seed + 1 + tl.index) for tl in plan.tiles]
    noise = noise.to(den.device)
    states = [noise[..., tl.y0 : tl.y1, tl.x0 : tl.x1] * scheds[tl.index].init_noise_sigma for tl in plan.tiles]
    timesteps = scheds[0].timesteps
    t_host = timesteps.cpu()
    for i, t in enumerate(timesteps):
        run.step, run.t_value = i, float(t_host[i])
        if run.shard.active:
            run.agree_on_cancel()
        else:
            run.cancel.check()
        started = time.perf_counter()
        run.emit(StepStarted(i, run.total_steps, run.t_value, plan))
        run.begin_step(plan, i, len(timesteps))
        for tiles in run.batches(plan):
            crops = torch.cat([scheds[tl.index].scale_model_input(states[tl.index], t) for tl in tiles])
            pred = run.run_batch(crops, t, tiles, plan)
            for k, tl in enumerate(tiles):
                s = scheds[tl.index]
                states[tl.index] = s.step(
                    pred[k : k + 1], t, states[tl.index], **_step_kwargs(s, gens[tl.index]), return_dict=False
                )[0]
        run.flush_previews()
        run.emit(StepFinished(i, run.total_steps, time.perf_counter() - started, None, _device_memory(run.den.device)))
    run.agree_on_cancel()
    # Stitch: each latent pixel from the tile whose centre is nearest (hard seams by design).
    # Owned regions are disjoint, so with several ranks the sum of their canvases is the canvas.
    owner = torch.from_numpy(blend.ownership(plan)).to(den.device)
    canvas = torch.zeros_like(noise)
    for tl in run.shard.mine(list(plan.tiles)):
        mask = owner[tl.y0 : tl.y1, tl.x0 : tl.x1] == tl.index
        region = canvas[..., tl.y0 : tl.y1, tl.x0 : tl.x1]
        region[..., mask] = states[tl.index].float()[..., mask]
    return run.shard.all_reduce(canvas)


@contextlib.contextmanager
def _bridged(den: Denoiser, plan: TilePlan, request: GenerationRequest, shard: Any,
             emit: EventSink) -> Iterator[Bridge | None]:
    """4b. Bridges for the full-size pass: installed on the model's layers, always removed (a
    loaded model is kept for the next run). At step 0 nothing from a previous step exists yet,
    so the tiles run unbridged (a filling pass would need every tile in one batch)."""
    module = getattr(den, "bridge_module", None)
    if request.bridges == "off":
        yield None
        return
    if module is None:
        emit(Notice(f"bridges: {den.name} does not expose its layers to bridges; running without them"))
        yield None
        return
    if shard.active and len(plan.tiles) < shard.world:
        raise RequestError("bridges", f"need a tile for every process: {len(plan.tiles)} tiles for {shard.world} "
                                      "processes; use fewer devices, smaller tiles or bridges off")
    bridge = Bridge(module, plan, config_for(request.bridges, _reach(request, plan), _same_step(request, den)),
                    reduce=shard.all_reduce if shard.active else None, local=len(shard.mine(list(plan.tiles))))
    # The denoiser opens its layers for the run first (SD: self-attention gets `attend`) and
    # closes them last, after the bridge is removed.
    with getattr(den, "bridgeable", contextlib.nullcontext)(), bridge.installed():
        den.bridge = bridge
        try:
            yield bridge
        finally:
            den.bridge = None


def _same_step(request: GenerationRequest, den: Denoiser) -> bool:
    """Whether the run's bridges take the same step's values (every tile of a process in one call)."""
    return request.bridges != "off" and request.bridge_step == "same" \
        and getattr(den, "bridge_module", None) is not None


def _bridge_cost(den: Denoiser, plan: TilePlan, request: GenerationRequest, cond: Any, emit: EventSink) -> int:
    """Bytes the run's bridge will keep on the device (this step's neighbour values and the
    previous step's), found by running one tile through a bridge: its stores are made whole on
    first use, so one tile shows them all. 0 without bridges."""
    module = getattr(den, "bridge_module", None)
    if request.bridges == "off" or module is None:  # (compile with bridges is refused by the request)
        return 0
    if _same_step(request, den):
        return 0  # nothing kept between calls: each layer's values live while the call is at that layer
    config = dataclasses.replace(config_for(request.bridges, _reach(request, plan)), fresh=False)
    survey = Bridge(module, plan, config)
    tile = plan.tiles[0]
    scheduler = new_scheduler(den, request.sampler, plan)
    scheduler.set_timesteps(request.steps, device=den.device)
    x = torch.zeros(1, den.channels, tile.height, tile.width, device=den.device, dtype=den.dtype)
    with torch.inference_mode(), getattr(den, "bridgeable", contextlib.nullcontext)(), survey.installed():
        den.bridge = survey
        try:
            den.predict(x, scheduler.timesteps[0], [tile], cond)
        finally:
            den.bridge = None
    kept = 2 * survey.kept_bytes()
    emit(Notice(f"bridges keep {kept / 2**20:.1f} MiB of neighbour values on {den.device} "
                f"({kept // 2 / 2**20:.1f} MiB exchanged per step)"))
    return kept


def _reach(request: GenerationRequest, plan: TilePlan) -> int:
    """Attention bridges reach a strip of bridge_width px, or with 0 the whole neighbour tiles
    (latent px)."""
    return request.bridge_width // plan.scale or max(plan.tile_h, plan.tile_w)


def _tile_batch(request: GenerationRequest, den: Denoiser, plan: TilePlan, emit: EventSink,
                bridge_bytes: int = 0, host_batch: int | None = None, same_step: int = 0) -> int:
    """The request's tile batch, or for ``auto`` the largest that fits (engine.memory) — on a CPU
    under a host-memory budget, at most ``host_batch``; on a GPU a batch whose estimated peak
    exceeds the free memory is refused here, before any denoising. Same-step bridges need the
    process's ``same_step`` tiles in one call: refused up front, with the estimate, when they
    cannot be held."""
    device = torch.device(den.device)
    info = _loaded_info(request, den, plan)
    fp = memory.footprint(request, info, dtype_name(den.dtype))
    # Weights loaded already (the free memory below excludes them); the bridges' kept values.
    fp = dataclasses.replace(fp, weights=0, bridges=bridge_bytes)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    if same_step:
        held = None
        if free is not None and fp.peak(same_step) > free * memory.MARGIN:
            held = f"needs {fp.describe(same_step)} but {device} has {free / memory.GiB:.1f} GiB free"
        elif host_batch is not None and host_batch < same_step:
            held = f"the host-memory budget holds at most {host_batch} tiles a call"
        if held:
            raise RequestError("bridge_step", f"same-step bridges run this process's {same_step} tiles in one "
                                              f"call, which {held}: use bridge_step previous, fewer or smaller "
                                              "tiles, or more devices")
        emit(Notice(f"same-step bridges: the {same_step} tiles of each step in one call ({fp.describe(same_step)})"))
        return same_step
    if request.tile_batch == "auto":
        batch = memory.choose_tile_batch(fp, free, device.type)
        if host_batch is not None and host_batch < batch:
            batch = host_batch
            emit(Notice(f"tile batch {batch} (auto): more tiles a call would not fit the host-memory budget"))
        if free is not None:
            emit(Notice(f"tile batch {batch} (auto): {fp.describe(batch)} of {free / memory.GiB:.1f} GiB free"))
        return batch
    memory.check_fits(fp, int(request.tile_batch), free, device.type, where=str(device))
    return int(request.tile_batch)


def _check_host(request: GenerationRequest, info: ModelInfo, device: torch.device, dtype: torch.dtype,
                limit: int | None) -> None:
    """Refuse what the host's memory, or the user's budget (``limit``), cannot hold
    (runtime.memory), from the model's description: nothing is loaded yet."""
    try:
        hf, smallest, _ = memory.host_plan(request, info, device.type, dtype_name(dtype), limit)
    except RequestError:
        return  # a plan the model refuses is reported, with its own field, once the model is loaded
    memory.check_host_fits(hf, memory.host_available(), limit, smallest)


def _init_latents(den: Denoiser, request: GenerationRequest, plan: TilePlan, emit: EventSink) -> torch.Tensor | None:
    """The init image, resized to the canvas and encoded by the model: (1, C, h, w) on the CPU
    (None at strength 1, where it is read and checked but not used)."""
    encode = getattr(den, "encode", None)
    if encode is None:
        raise RequestError("init_image", f"{den.name} cannot start from an image (it has no encoder)")
    output = _loaded_info(request, den, plan).output  # "height" maps want a grayscale picture
    w, h = plan.image_size
    pixels, notes = load_init_image(request.init_image, w, h, output)
    for note in notes:
        emit(Notice(note))
    if request.image_strength >= 1.0:
        emit(Notice("strength 1 re-draws everything: the init image is not used (the same picture as text-to-image "
                    "with this seed)"))
        return None
    return encode(pixels, lambda _done, _total: None).float().cpu()


def _known_latents(den: Denoiser, request: GenerationRequest, plan: TilePlan, known: Known) -> torch.Tensor:
    """The known picture encoded (1, C, h, w) on the CPU, checked against what the run can keep."""
    if request.fusion == "independent":
        raise RequestError("fusion", "independent denoises each tile alone, which cannot keep the picture around "
                                     "a selection: use cosine (the default) or another fusion")
    if request.global_context > 0 or request.anchor:
        raise RequestError("global_context" if request.global_context > 0 else "anchor",
                           "a refine keeps the picture itself around the selection: use 0")
    encode = getattr(den, "encode", None)
    if encode is None:
        raise RequestError("model", f"{den.name} cannot start from an image (it has no encoder)")
    if known.mask.shape != (plan.height * plan.scale, plan.width * plan.scale):
        raise RequestError("mask", f"must be the canvas's size ({plan.width * plan.scale}x"
                                   f"{plan.height * plan.scale}); got {known.mask.shape[1]}x{known.mask.shape[0]}")
    return encode(known.pixels, lambda _done, _total: None).float().cpu()


def _anchored(image: np.ndarray, request: GenerationRequest, plan: TilePlan, den: Denoiser,
              cancel: CancelToken) -> np.ndarray:
    """The decoded picture back-projected so that shrunk ``anchor``× (box) it equals the init image
    shrunk as much: the init image's own pixels when it is that size already (an upscale pass),
    else the init image as the run read it (at canvas size) shrunk the same way."""
    n = request.anchor
    w, h = plan.image_size
    output = _loaded_info(request, den, plan).output
    if image_size(request.init_image) == (w // n, h // n):
        source, _ = load_init_image(request.init_image, w // n, h // n, output)
    else:
        pixels, _ = load_init_image(request.init_image, w, h, output)
        source = pixels.reshape(h // n, n, w // n, n, *pixels.shape[2:]).mean(axis=(1, 3))
    top = float(np.iinfo(image.dtype).max)
    return back_project(image, source * top, n, top, cancel=cancel.check)


def _loaded_info(request: GenerationRequest, den: Denoiser, plan: TilePlan) -> ModelInfo:
    # The loaded backend is the truth for geometry; the configs on disk for the rest.
    info = describe_model(request.model)
    return dataclasses.replace(info, scale=den.scale, channels=den.channels, native_tile=den.native_tile)


def _out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def _decoding(emit: EventSink, cancel: CancelToken, done: int, total: int) -> None:
    """Decode progress; a cancel stops a long decode (8192² spilled to disk takes minutes) between
    its passes, where no picture is half written."""
    emit(Decoding(done, total))
    if done < total:
        cancel.check()


def _free_device_cache(device: Any) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _device_memory(device: torch.device) -> int | None:
    """Peak bytes allocated on a CUDA device so far (a host-side counter: no sync); None elsewhere."""
    device = torch.device(device)
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def generate(
    request: GenerationRequest,
    on_event: EventSink | None = None,
    cancel: CancelToken | None = None,
    *,
    denoiser: Denoiser | None = None,
    previews: bool = True,
    known: Known | None = None,
) -> GenerationResult:
    """Run one generation. Events go to ``on_event``; the last one is always terminal
    (Finished, Cancelled or Failed). ``known`` (engine.api.refine): the canvas starts from its
    pixels rather than from ``init_image``'s file, and keeps them where its mask is 0. Raises
    :class:`Cancelled`, :class:`RequestError`, :class:`ModelUnavailable` or the runtime error after
    emitting the terminal event.
    """
    shard = distributed.current()
    # With several ranks, rank 0 speaks for all of them.
    emit: EventSink = (on_event if shard.leader else None) or (lambda _e: None)
    cancel = cancel or CancelToken()
    started = time.perf_counter()
    run: _Denoise | None = None
    budget = contextlib.ExitStack()
    try:
        # 1. Device, model, plan; a request the host's memory (or the user's budget for it) cannot
        #    hold is refused before any of it.
        limit = memory.host_limit(request)
        loras = lora_models.resolve_all(request.loras)  # a missing LoRA is refused before the model loads
        if denoiser is None:
            device = resolve_device(request.device)
            dtype = resolve_dtype(request.dtype, device)
            _check_host(request, describe_model(request.model), device, dtype, limit)
            den = load_denoiser(request, device, dtype)
        else:
            den = denoiser
        # LoRAs fused into the kept model for this run; the exact base weights come back when the
        # run ends, however it ends (models/lora.py).
        lora_notes: list[str] = []  # told once the run is planned
        budget.enter_context(lora_models.applied(den, loras, lora_notes))
        plan = TilePlan.for_request(request, den.scale, den.native_tile)
        host, _, host_batch = memory.host_plan(request, _loaded_info(request, den, plan), torch.device(den.device).type,
                                               dtype_name(den.dtype), limit)
        # What the budget leaves the exact decode, read by the decoder's storage choice (up front
        # for the Notice, and again at the decode).
        budget.enter_context(memory.decode_budget(None if limit is None else limit - host.held_while_decoding))
        probe = new_scheduler(den, request.sampler, plan)  # second-order samplers evaluate more than `steps`
        probe.set_timesteps(request.steps, device="cpu")
        passes = 2 if request.global_context > 0 and request.fusion != "independent" \
            and min(plan.height, plan.width) > den.native_tile // den.scale else 1
        total_steps = passes * len(image_timesteps(probe, request.steps, request.image_strength)[0]) \
            if request.init_image is not None else passes * len(probe.timesteps)
        emit(Planned(request, plan, total_steps, str(den.device), dtype_name(den.dtype)))
        for message in [*lora_notes, *getattr(den, "notices", lambda _r: [])(request)]:
            emit(Notice(message))
        if request.controls:
            if getattr(den, "begin_step", None) is None:
                raise RequestError("controls", f"{den.name} takes no ControlNet yet: use an SD 1.x/2.x, "
                                               "SDXL or FLUX.1 model, or no controls")
            for message in control_notes(request):
                emit(Notice(message))
        if request.fusion == "independent" and (request.jitter or request.global_context > 0):
            emit(Notice("fusion independent has no shared canvas: jitter and global context are ignored"))
        elif request.global_context > 0 and passes == 1:
            emit(Notice(f"global context has nothing to add: the canvas's short side is no larger than "
                        f"{den.name}'s native {den.native_tile} px, where one pass already sees the whole picture"))

        # 2. Conditioning, computed once for all tiles and steps; the tile batch that fits. A known
        #    picture is checked and encoded first: a model that takes it as input (an inpainting
        #    checkpoint, sd/inpaint.py) gets it before its conditioning is built, and then keeps
        #    the known part itself; for any other model the loop keeps it by blending.
        #    (Such a model without a known picture is refused before an init image is encoded.)
        take_known = getattr(den, "take_known", None)
        init = _known_latents(den, request, plan, known) if known is not None else None
        model_keeps = take_known(request, plan, known) if take_known is not None else False
        if known is None and request.init_image is not None:
            init = _init_latents(den, request, plan, emit)
        cond = den.prepare(request, plan)
        preview_method = getattr(den, "preview_method", "") if previews else "off"
        if request.preview == "taesd" and getattr(den, "tiny", None) is None:  # a backend without any
            raise RequestError("preview", f"taesd: {den.name} has no tiny-autoencoder previews; use preview auto "
                                          "or linear")
        if previews and getattr(den, "tiny", None) is not None:
            share = getattr(den, "preview_budget", None)
            emit(Notice(f"previews through the {preview_method}" + (
                f", on at most {share:.0%} of the run's time (tiles in turn)" if share else "")))
        run = _Denoise(den, request, plan, cond, emit, cancel, previews)
        run.regional = regional(den, request, plan, cond)
        keep = None if known is None or model_keeps else known.latent_mask(den.scale, den.device)
        run.total_steps = total_steps
        run.batch = _tile_batch(request, den, plan, emit, _bridge_cost(den, plan, request, cond, emit), host_batch,
                                same_step=len(shard.mine(list(plan.tiles))) if _same_step(request, den) else 0)

        # 3. Noise for the whole canvas from one CPU generator: the image depends on the seed
        #    alone, not on tile_batch, the device or the number of devices.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        noise = torch.randn((1, den.channels, plan.height, plan.width), generator=generator)

        # 4. Denoise.
        with torch.inference_mode():
            if request.fusion == "independent":
                latents = _independent(run, noise, request.seed)
            else:
                guide = _global_context(run, plan, generator) if request.global_context > 0 else None
                with _bridged(den, plan, request, shard, emit) as bridge:
                    latents = _synchronized(run, plan, noise, generator, jitter=request.jitter, guide=guide,
                                            bridge=bridge, init=init, strength=request.image_strength,
                                            keep=keep)

            # 5. Decode (never after a cancel) and finish; with several ranks rank 0 alone decodes.
            cancel.check()
            wrap = {"wrap": plan.wrap} if plan.wrap != "none" else {}  # (decoders without it never see it)
            image = den.decode(latents, lambda done, total: _decoding(emit, cancel, done, total), **wrap) \
                if shard.leader else None
            if request.anchor and image is not None:  # exact in pixels (sampling/anchor.py)
                image = _anchored(image, request, plan, den, cancel)
        seconds = time.perf_counter() - started
        info = {"model_name": den.name, "device": str(den.device), "dtype": dtype_name(den.dtype),
                "tiles": len(plan), "plan": plan.describe(), "tile_batch": run.batch}
        if shard.active:
            info["ranks"] = shard.world
        if getattr(den, "decode_method", ""):
            info["decode"] = den.decode_method
        if preview_method:
            info["preview"] = preview_method
        if loras:
            info["loras"] = [lo.recipe() for lo in loras]
        if request.init_image is not None:
            info["init_image_sha256"] = init_digest(request.init_image)
            info["init_image_size"] = list(image_size(request.init_image) or ())  # [w, h] as read: image px
            info["strength"] = request.image_strength
        if request.controls:
            info["controls"] = control_record(request)
        result = GenerationResult(image, latents.float().cpu(), request, plan, seconds, info)
        emit(Finished(image, request, plan, seconds, info))
        return result
    except Cancelled:
        emit(CancelledEvent(run.step if run else 0))
        if run is not None:  # the step's tensors are gone with the frame; hand their memory back
            _free_device_cache(run.den.device)
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
    finally:
        budget.close()
