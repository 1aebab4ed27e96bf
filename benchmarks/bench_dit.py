"""FLUX.1 and SD3.5 on one card: bench_gpu.py's section 11 (``bench_gpu.py --dit-only`` runs it alone).

Random weights of the REAL transformer and VAE configurations (tests/dit_configs.py), built on the
device directly in bf16 — nothing is downloaded. The text encoders are one-layer stand-ins of the
real widths (CLIP-L 768, CLIP-G 1280, T5 4096) on the CPU: they only have to produce embeddings of
the real shapes, and the policy keeps them off the device while denoising anyway. Measured:

1. ms per view at 1024² tiles: Paradiff's ``predict`` on B tiles against the bare transformer called
   with the same inputs (the packed tokens, positions, embeddings, timesteps, guidance) in one call
   of the same batch — model calls only, CUDA-synchronised, warm-up excluded (target ≤ 1.10×);
2. 2048² and 4096² end to end (``generate``: 4 steps, tile_batch auto, decode included): wall,
   denoising, peak VRAM (``torch.cuda.max_memory_allocated``) and the planner's estimate beside it;
3. the same 2048² run with ``weights fp8`` (FLUX): peak VRAM against full.

``--smoke`` runs it on tiny configs at 1/16 of the sizes on the CPU (the script works, not any figure).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

GiB = 1 << 30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Modules built inside are created in ``dtype`` (bf16 on the card: FLUX in fp32 would be 48 GB)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _stand_in_encoders(sd3: bool) -> dict[str, Any]:
    """One-layer text encoders of the real output widths, with the tests' tokenizers (CPU, fp32 → the
    run's dtype when the pipeline is placed)."""
    from tiny import _text_config, tiny_tokenizer
    from tiny_dit import tiny_t5_tokenizer
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=4096, d_kv=64, d_ff=256, num_layers=1, num_heads=2,
                                 relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                                 eos_token_id=1))

    def clip(width: int, cls: Any = CLIPTextModelWithProjection) -> Any:
        return cls(_text_config(hidden_size=width, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                projection_dim=width, hidden_act="gelu"))

    if sd3:
        return dict(text_encoder=clip(768), tokenizer=tiny_tokenizer(), text_encoder_2=clip(1280),
                    tokenizer_2=tiny_tokenizer(), text_encoder_3=t5, tokenizer_3=tiny_t5_tokenizer())
    return dict(text_encoder=clip(768, CLIPTextModel), tokenizer=tiny_tokenizer(), text_encoder_2=t5,
                tokenizer_2=tiny_t5_tokenizer())


def build(kind: str, device: torch.device, dtype: torch.dtype, smoke: bool, folder: Path) -> Any:
    """A FLUX (dev: guidance embedded) or SD3.5-large backend with random weights; the real configs,
    or with ``smoke`` the tests' tiny ones. ``folder`` receives its configs (no weights), so that
    the planner describes the model as it would a downloaded one."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from dit_configs import FLUX_DEV, FLUX_SCHEDULER, SD35_LARGE, VAE16

    from paradiff_gui.engine.models import flow
    from paradiff_gui.engine.models.flux.backend import FluxDenoiser
    from paradiff_gui.engine.models.sd3.backend import SD3Denoiser

    torch.manual_seed(0)
    if smoke:
        from tiny_dit import tiny_flux, tiny_sd3

        pipe = tiny_flux() if kind == "flux" else tiny_sd3()
    else:
        with torch.device(device), default_dtype(dtype):
            if kind == "flux":
                transformer = FluxTransformer2DModel(**FLUX_DEV)
                vae = AutoencoderKL(**VAE16, scaling_factor=0.3611, shift_factor=0.1159)
            else:
                transformer = SD3Transformer2DModel(**SD35_LARGE)
                vae = AutoencoderKL(**VAE16, scaling_factor=1.5305, shift_factor=0.0609)
        if kind == "flux":
            pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae,
                                transformer=transformer, **_stand_in_encoders(False))
        else:
            pipe = StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                            transformer=transformer, **_stand_in_encoders(True))
    for m in flow.text_encoders(pipe):
        m.to(dtype)
    flow.place(pipe, device)  # the text encoders on the CPU, as the loaders keep them
    pipe.set_progress_bar_config(disable=True)
    folder.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": type(pipe).__name__, "transformer": ["diffusers", type(pipe.transformer).__name__],
             "vae": ["diffusers", "AutoencoderKL"]}
    for part in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if getattr(pipe, part, None) is not None:
            index[part] = ["transformers", type(getattr(pipe, part)).__name__]
            (folder / part).mkdir(exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    for part in ("transformer", "vae", "scheduler"):
        getattr(pipe, part).save_config(str(folder / part))
    cls = FluxDenoiser if kind == "flux" else SD3Denoiser
    return cls(pipe, str(folder), device, dtype)


def bare_and_predict_ms(den: Any, kind: str, batch: int, tile_px: int, repeats: int) -> dict:
    """ms per view: Paradiff's predict on ``batch`` tiles of ``tile_px`` image px, and the bare
    transformer called once with exactly the inputs predict builds (guidance halves included for
    SD3), both on the same noise and timestep; model calls only, warm-up excluded."""
    from paradiff_gui.engine import GenerationRequest
    from paradiff_gui.engine.core.plan import TilePlan
    from paradiff_gui.engine.models import flow

    req = GenerationRequest(model=den.name, prompt="a red castle", width=tile_px * batch, height=tile_px,
                            tile=tile_px, overlap=0, sampler="euler", guidance=3.5 if kind == "flux" else 7.0,
                            steps=4)
    plan = TilePlan.for_request(req, den.scale, den.native_tile)
    assert len(plan) == batch, "one call of the whole batch"
    cond = den.prepare(req, plan)
    tiles = list(plan.tiles)
    h, w = plan.tile_h, plan.tile_w  # latent px
    g = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(batch, den.channels, h, w, generator=g).to(den.device, den.dtype)
    t = torch.tensor(500.0, device=den.device)
    if kind == "flux":
        kwargs = dict(hidden_states=flow.pack(x), timestep=t.expand(batch).to(x.dtype) / flow.NUM_TRAIN_TIMESTEPS,
                      guidance=torch.full([batch], cond.guidance, device=den.device, dtype=torch.float32),
                      pooled_projections=cond.pooled.expand(batch, -1),
                      encoder_hidden_states=cond.embeds.expand(batch, -1, -1), txt_ids=cond.txt_ids,
                      img_ids=den.image_ids(tiles[0], cond.positions), return_dict=False)
        views = batch
    else:
        views = 2 * batch
        kwargs = dict(hidden_states=torch.cat([x, x]), timestep=t.expand(views),
                      encoder_hidden_states=cond.embeds.repeat_interleave(batch, dim=0),
                      pooled_projections=cond.pooled.repeat_interleave(batch, dim=0), return_dict=False)

    def timed(call: Callable[[], Any]) -> float:
        with torch.inference_mode():
            for _ in range(2):  # warm-up: kernels, allocator
                call()
            sync(den.device)
            start = time.perf_counter()
            for _ in range(repeats):
                call()
            sync(den.device)
        return (time.perf_counter() - start) / repeats / batch * 1000

    bare = timed(lambda: den.transformer(**kwargs))
    paradiff = timed(lambda: den.predict(x, t, tiles, cond))
    return {"bare_ms_per_view": round(bare, 3), "paradiff_ms_per_view": round(paradiff, 3),
            "ratio": round(paradiff / bare, 3), "tile_px": tile_px, "batch": batch, "model_calls_per_tile": views
            // batch, "timed": "per tile: the bare transformer on the inputs predict builds, one call of the "
                                "batch (both guidance halves for SD3), against predict on the same tiles; "
                                "repeats after 2 warm-ups, CUDA-synchronised"}


def info_of(den: Any, model: str) -> Any:
    """What the planner knows of a loaded backend: its configs' description, weights counted from
    the modules on the device (the transformer and the VAE; the text encoders are on the host)."""
    import dataclasses

    from paradiff_gui.engine.models import flow
    from paradiff_gui.engine.models.info import describe_model

    info = describe_model(model)
    transformer = sum(p.numel() for p in den.transformer.parameters()) * 2
    vae = flow.module_bytes([den.vae])
    return dataclasses.replace(info, weight_bytes=transformer + vae, transformer_bytes=transformer,
                               weight_dtype_bytes=2, host_weight_bytes=flow.module_bytes(flow.text_encoders(den.pipe)))


def end_to_end(den: Any, kind: str, size: int, steps: int, tile: int, weights: str = "full") -> dict:
    """One generate of a ``size``² canvas: wall, denoising (StepFinished), peak VRAM and the
    planner's estimate at the tile batch that ran."""
    from paradiff_gui.engine import GenerationRequest, generate
    from paradiff_gui.engine.core.events import StepFinished
    from paradiff_gui.engine.runtime import memory

    req = GenerationRequest(model=den.name, prompt="a red castle", width=size, height=size, tile=tile, steps=steps,
                            sampler="euler", guidance=3.5 if kind == "flux" else 7.0, seed=1, tile_batch="auto",
                            weights=weights)
    if den.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(den.device)
    times: list[float] = []
    sync(den.device)
    t0 = time.perf_counter()
    result = generate(req, lambda e: times.append(e.seconds) if isinstance(e, StepFinished) else None, denoiser=den,
                      previews=False)
    sync(den.device)
    wall = time.perf_counter() - t0
    batch = int(result.info["tile_batch"])
    fp = memory.footprint(req, info_of(den, den.name), "fp32" if den.dtype == torch.float32 else "bf16")
    peak = torch.cuda.max_memory_allocated(den.device) if den.device.type == "cuda" else None
    return {"size": size, "steps": steps, "tiles": len(result.plan), "tile_batch_run": batch, "weights": weights,
            "wall_s": round(wall, 2), "denoise_s": round(sum(times), 2),
            "step_s": round(statistics.median(times), 3) if times else None,
            "peak_vram_gib": round(peak / GiB, 2) if peak else None, "estimate_gib": round(fp.peak(batch) / GiB, 2),
            "estimate": fp.describe(batch),
            "timed": "one generate (prompt encoding and decode included, previews off); peak = "
                     "torch.cuda.max_memory_allocated; estimate = memory.footprint(...).peak(the tile batch that ran)"}


def section(device: torch.device, smoke: bool, log: Callable[[str, Any], None]) -> None:
    """Section 11 for FLUX.1-dev and SD3.5-large, logged as ``dit_flux`` and ``dit_sd3``."""
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    s = 16 if smoke else 1  # smoke: 128² (one tile) and 256² (3×3 tiles of 128 px), to stay quick
    batch = 2 if smoke else 4
    with tempfile.TemporaryDirectory(prefix="paradiff-dit-") as tmp:
        for kind in ("flux", "sd3"):
            den = build(kind, device, dtype, smoke, Path(tmp) / kind)
            tile = den.native_tile if not smoke else 128
            row: dict[str, Any] = {"dtype": str(dtype),
                                   "params_b": round(sum(p.numel() for p in den.transformer.parameters()) / 1e9, 3)}
            row["per_view"] = bare_and_predict_ms(den, kind, batch, tile, repeats=2 if smoke else 10)
            steps = 2 if smoke else 4
            row["end_to_end"] = {str(size // s): end_to_end(den, kind, size // s, steps, tile)
                                 for size in (2048, 4096)}
            if kind == "flux":
                # fp8 storage: the same 2048² run on the transformer stored in float8.
                den.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                row["end_to_end_fp8"] = end_to_end(den, kind, 2048 // s, steps, tile, weights="fp8")
            log(f"dit_{kind}", row)
            del den
            if device.type == "cuda":
                torch.cuda.empty_cache()
