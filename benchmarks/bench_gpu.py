"""Scale and speed on one CUDA card, in one run: the figures of docs/PERFORMANCE.md's GPU section.

    python benchmarks/bench_gpu.py            # on a CUDA machine (about 10 min on an H200)
    python benchmarks/bench_gpu.py --smoke    # tiny models, small sizes, CPU: checks the script end to end

Random weights with the real SD1.5 and SDXL configs (speed and memory do not depend on weight
values; nothing is downloaded). Measures, on the same card in the same process:

1. the bare SD1.5 UNet with classifier-free guidance, ms per 512² view at batch B;
2. Paradiff's ms per view at tile_batch B, previews on (a plan of exactly B tiles);
3. diffusers' panorama pipeline (MultiDiffusion; window 64, stride 8 latent px) at its best
   view_batch_size against Paradiff on the same views (512 px tiles, 448 px overlap), 2048²;
4. end to end: 4096² SD1.5, 30 steps, default plan, tile_batch auto, decode included;
5. peak VRAM of an 8192² generation (one step, decode included) for SD1.5 and SDXL, fp16;
6. the memory planner's estimate next to each measured peak;
7. a 16384² SD1.5 generation (one step) to the end: peak VRAM, peak host memory, decode method;
8. Paradiff at batch B again with ``--compile`` (torch.compile, channels-last);
9. bridges (issue 12): ms per view at 2048² with full and attention bridges against bridges off,
   the same request otherwise (target: full ≤ 1.15× off); and same-step bridges (issue 24, norms
   and full with ``bridge_step same``: every tile of a step in one call, against bridges off with
   every tile in one call too; target ≤ 1.3× per view);
10. the exact tiled decode alone at 4096² and 8192²: where its stage canvases go, time, VRAM;
11. FLUX.1-dev and SD3.5-large, random weights of the real configurations in bf16 (bench_dit.py):
    ms per view of Paradiff's predict against the bare transformer (target ≤ 1.10×), 2048² and 4096²
    end to end with peak VRAM and the planner's estimate, FLUX with ``weights fp8``. Alone:
    ``python benchmarks/bench_gpu.py --dit-only`` (``--smoke --dit-only``: tiny configs on the CPU).

Writes ``benchmarks/results/gpu-<card>.json`` (card, driver, torch, diffusers, date).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import diffusers
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout this script is in, not whichever one is installed
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_dit  # noqa: E402
from bench_engine import bare_unet_ms_per_view, sd15_random, sync  # noqa: E402

from paradiff_gui.engine import GenerationRequest, generate  # noqa: E402
from paradiff_gui.engine.core.events import StepFinished  # noqa: E402
from paradiff_gui.engine.core.modelinfo import ModelInfo  # noqa: E402
from paradiff_gui.engine.core.plan import TilePlan  # noqa: E402
from paradiff_gui.engine.models.sd.backend import SDDenoiser  # noqa: E402
from paradiff_gui.engine.runtime import memory as mem  # noqa: E402

GiB = 1 << 30


def sdxl_random(device: torch.device, dtype: torch.dtype) -> SDDenoiser:
    """StableDiffusionXLPipeline with SDXL base's UNet/VAE/text-encoder configs, random weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from tiny import tiny_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=128, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=1024,
            scaling_factor=0.13025)
        te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                          num_hidden_layers=12, num_attention_heads=12, projection_dim=768,
                                          max_position_embeddings=77, hidden_act="quick_gelu"))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
            num_attention_heads=20, projection_dim=1280, max_position_embeddings=77, hidden_act="gelu"))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(unet=unet, vae=vae, text_encoder=te, text_encoder_2=te2,
                                     tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(),
                                     scheduler=sched).to(device, dtype)
    return SDDenoiser(pipe, "sdxl-random", device, dtype)


def tiny_sd(device: torch.device, dtype: torch.dtype) -> SDDenoiser:
    from tiny import tiny_sd as build

    return SDDenoiser(build().to(device, dtype), "tiny-sd", device, dtype)


def tiny_sdxl(device: torch.device, dtype: torch.dtype) -> SDDenoiser:
    from tiny import tiny_sdxl as build

    return SDDenoiser(build().to(device, dtype), "tiny-sdxl", device, dtype)


def info_of(den: SDDenoiser) -> ModelInfo:
    """What the memory planner knows of a loaded backend (weights counted from its modules)."""
    modules = [m for m in (den.unet, den.vae, getattr(den.pipe, "text_encoder", None),
                           getattr(den.pipe, "text_encoder_2", None)) if m is not None]
    weights = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    return ModelInfo(id=den.name, label=den.name, scale=den.scale, native_tile=den.native_tile,
                     weight_bytes=weights, weight_dtype_bytes=2 if den.dtype != torch.float32 else 4,
                     unet_channels=den.unet.config.block_out_channels[0])


LAST_INFO: dict = {}  # the info of the last generation step_times ran (the tile batch it chose)


def step_times(req: GenerationRequest, den: SDDenoiser, previews: bool = True) -> tuple[list[float], float]:
    """The step times (StepFinished: the step's model calls, fusion, scheduler step and previews)
    and the wall time of the whole generate (prompt encoding and decode included)."""
    times: list[float] = []
    sync(den.device)
    t0 = time.perf_counter()
    result = generate(req, lambda e: times.append(e.seconds) if isinstance(e, StepFinished) else None, denoiser=den,
                      previews=previews)
    sync(den.device)
    LAST_INFO.clear()
    LAST_INFO.update(result.info)
    return times, time.perf_counter() - t0


def peak_run(req: GenerationRequest, den: SDDenoiser) -> dict:
    """Peak device memory of one generation (and the planner's estimate for it)."""
    if den.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(den.device)
    _, wall = step_times(req, den)
    fp = mem.footprint(req, info_of(den), "fp16" if den.dtype != torch.float32 else "fp32")
    peak = torch.cuda.max_memory_allocated(den.device) if den.device.type == "cuda" else None
    batch = int(LAST_INFO["tile_batch"])  # the batch that ran ("auto" resolved), where the estimate is taken
    return {"size": [req.width, req.height], "wall_s": round(wall, 2), "peak_bytes": peak,
            "peak_gib": round(peak / GiB, 2) if peak else None,
            "estimate_gib": round(fp.peak(batch) / GiB, 2), "tile_batch": req.tile_batch, "tile_batch_run": batch,
            "timed": "one generate, prompt encoding and decode included; peak = torch.cuda.max_memory_allocated; "
                     "estimate = memory.footprint(...).peak(the tile batch that ran)"}


def panorama(den: SDDenoiser, size: int, steps: int, view_batch: int) -> tuple[float, float]:
    """diffusers' StableDiffusionPanoramaPipeline (MultiDiffusion), latents out (no decode): its
    wall time and its median step time (between step-end callbacks, as Paradiff's StepFinished)."""
    from diffusers import DDIMScheduler, StableDiffusionPanoramaPipeline

    pipe = StableDiffusionPanoramaPipeline(
        vae=den.vae, text_encoder=den.pipe.text_encoder, tokenizer=den.pipe.tokenizer, unet=den.unet,
        scheduler=DDIMScheduler.from_config(den.pipe.scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ends: list[float] = []

    def on_step_end(_pipe, _i, _t, kwargs):
        sync(den.device)
        ends.append(time.perf_counter())
        return kwargs

    sync(den.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        pipe("a red castle", height=size, width=size, num_inference_steps=steps, view_batch_size=view_batch,
             output_type="latent", generator=torch.Generator("cpu").manual_seed(1), callback_on_step_end=on_step_end)
    sync(den.device)
    wall = time.perf_counter() - t0
    steps_s = [b - a for a, b in itertools.pairwise(ends)]
    return wall, statistics.median(steps_s) if steps_s else wall


def card_info(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"card": platform.processor() or "cpu", "driver": None}
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        driver = None
    props = torch.cuda.get_device_properties(device)
    return {"card": props.name, "memory_gib": round(props.total_memory / GiB, 1), "driver": driver,
            "cuda": torch.version.cuda}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny models, small sizes (CPU is fine)")
    ap.add_argument("--batch", type=int, default=16, help="B, the tile batch of sections 1 and 2")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--dit-only", action="store_true", help="section 11 alone (FLUX.1 and SD3.5)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    s = 8 if args.smoke else 1  # sizes are divided by s in the smoke run
    B = 2 if args.smoke else args.batch
    results: dict = {"date": date.today().isoformat(), **card_info(device), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "python": platform.python_version(),
                     "dtype": str(dtype), "smoke": args.smoke, "batch": B}

    def log(name: str, value) -> None:
        results[name] = value
        print(json.dumps({name: value}), flush=True)

    name = results["card"].replace(" ", "-").lower() if not args.smoke else "smoke-cpu"
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu-{name}{'-dit' if args.dit_only else ''}.json"
    if args.dit_only:
        bench_dit.section(device, args.smoke, log)
        return write(results, out)

    den = (tiny_sd if args.smoke else sd15_random)(device, dtype)
    view = den.native_tile // 8  # latent px of one view

    # 1 + 2. Bare UNet vs Paradiff at the same batch, previews on.
    bare = bare_unet_ms_per_view(den, B, view, repeats=3 if args.smoke else 20)
    rows = {4: (2, 2), 16: (4, 4), 2: (1, 2), 8: (2, 4), 32: (4, 8)}.get(B, (1, B))
    t, o = den.native_tile, den.native_tile // 4
    req = GenerationRequest(model=den.name, prompt="a red castle", width=t + (t - o) * (rows[1] - 1),
                            height=t + (t - o) * (rows[0] - 1), tile=t, overlap=o, steps=2 if args.smoke else 12,
                            seed=1, sampler="euler", tile_batch=B)
    generate(req.replace(steps=1), denoiser=den)  # warm-up
    times, _ = step_times(req, den)
    paradiff = statistics.median(times[1:] or times) / B * 1000
    plan = TilePlan.for_request(req, den.scale, den.native_tile)
    assert len(plan) == B and (plan.tile_h, plan.tile_w) == (view, view), "the bare UNet must time the plan's shape"
    log("unet_vs_paradiff", {"bare_ms_per_view": round(bare, 3), "paradiff_ms_per_view": round(paradiff, 3),
                             "ratio": round(paradiff / bare, 3), "tiles": B, "previews": True,
                             "tile_latent_px": [plan.tile_h, plan.tile_w], "batch": B,
                             "timed": "bare: the UNet forward alone, B tiles of the plan's shape in one call, both "
                                      "guidance halves; Paradiff: median step (StepFinished) of a plan of exactly B "
                                      "tiles at tile_batch B, previews on, divided by B"})

    # 3. diffusers' panorama pipeline vs Paradiff at equal views (window 64, stride 8 latent px).
    size, steps = (512, 2) if args.smoke else (2048, 10)
    window, stride = 64 * 8, 8 * 8  # image px
    runs = {vb: panorama(den, size, steps, vb) for vb in ((1, 4) if args.smoke else (8, 16, 32))}
    pano = {vb: wall for vb, (wall, _) in runs.items()}
    pano_step = {vb: step for vb, (_, step) in runs.items()}
    best_vb = min(pano_step, key=pano_step.get)
    req3 = GenerationRequest(model=den.name, prompt="a red castle", width=size, height=size, tile=window,
                             overlap=window - stride, steps=steps, seed=1, sampler="ddim", tile_batch="auto")
    _, _ = step_times(req3.replace(steps=1), den)  # warm-up
    times3, wall3 = step_times(req3, den)
    views = ((size // 8 - 64) // 8 + 1) ** 2
    paradiff_step = statistics.median(times3[1:] or times3)
    log("panorama_vs_paradiff", {
        "size": size, "steps": steps, "views_per_step": views,
        "diffusers_s": {str(k): round(v, 2) for k, v in pano.items()},
        "diffusers_step_s": {str(k): round(v, 4) for k, v in pano_step.items()}, "diffusers_best_view_batch": best_vb,
        "paradiff_denoise_s": round(sum(times3), 2), "paradiff_step_s": round(paradiff_step, 4),
        "paradiff_wall_s": round(wall3, 2),
        # Like with like: the median step on both sides (every view's UNet call, the fusion, the
        # scheduler step; Paradiff's previews on); walls are listed, not divided (diffusers' holds
        # the prompt encoding and no decode, Paradiff's both).
        "speedup": round(pano_step[best_vb] / paradiff_step, 3),
        "diffusers_ms_per_view": round(pano_step[best_vb] / views * 1000, 3),
        "paradiff_ms_per_view": round(paradiff_step / views * 1000, 3),
        "timed": "median step time on both sides: diffusers between step-end callbacks, Paradiff StepFinished; "
                 "the walls include prompt encoding (both) and decode (Paradiff only)"})

    # 4. End to end: 4096² SD1.5, 30 steps, default plan, auto batch, decode included.
    size4 = 4096 // s
    req4 = GenerationRequest(model=den.name, prompt="a red castle", width=size4, height=size4, tile=den.native_tile,
                             steps=3 if args.smoke else 30, seed=1, sampler="euler", tile_batch="auto")
    times4, wall4 = step_times(req4, den)
    log("end_to_end_4096", {"size": size4, "steps": req4.steps, "wall_s": round(wall4, 2),
                            "denoise_s": round(sum(times4), 2), "decode_and_rest_s": round(wall4 - sum(times4), 2)})

    # 5 + 6. Peak VRAM at 8192², SD1.5 and SDXL, one step, decode included; estimate alongside.
    size8 = 8192 // s
    vram = {"sd15": peak_run(GenerationRequest(model=den.name, prompt="x", width=size8, height=size8,
                                               tile=den.native_tile, steps=1, seed=1, sampler="euler",
                                               tile_batch="auto"), den)}
    del den
    if device.type == "cuda":
        torch.cuda.empty_cache()
    xl = (tiny_sdxl if args.smoke else sdxl_random)(device, dtype)
    vram["sdxl"] = peak_run(GenerationRequest(model=xl.name, prompt="x", width=size8, height=size8,
                                              tile=xl.native_tile, steps=1, seed=1, sampler="euler",
                                              tile_batch="auto"), xl)
    log("vram_8192", vram)
    del xl
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # 7. 16384² must complete: SD1.5, one step, auto batch; peak VRAM, host peak and how it decoded.
    import resource

    den = (tiny_sd if args.smoke else sd15_random)(device, dtype)
    req16 = GenerationRequest(model=den.name, prompt="x", width=16384 // s, height=16384 // s,
                              tile=den.native_tile, steps=1, seed=1, sampler="euler", tile_batch="auto")
    run16 = peak_run(req16, den)
    run16["host_peak_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20), 2)  # kB → GiB
    run16["decode"] = den.decode_method
    log("end_to_end_16384", run16)

    # 9. Bridges (issue 12): ms/view at 2048² with full bridges against bridges off — the same
    #    request otherwise (plan, batch B, sampler, steps, previews on); step times only (no
    #    prompt encoding, no decode); step 0 runs unbridged in both and is left out.
    size9 = 2048 // s
    req9 = GenerationRequest(model=den.name, prompt="a red castle", width=size9, height=size9,
                             tile=den.native_tile, steps=3 if args.smoke else 10, seed=1, sampler="euler",
                             tile_batch=B)
    per_view = {}
    every = len(TilePlan.for_request(req9, den.scale, den.native_tile).tiles)
    # Same-step bridges run every tile of a step in one call; like with like, they are compared
    # with bridges off at that batch too ("off-all"), the others with off at B.
    for name in ("off", "full", "attention", "norms", "off-all", "norms-same", "full-same"):
        bridges, _, how = name.partition("-")
        r = req9.replace(bridges=bridges, **({"bridge_step": "same", "tile_batch": "auto"} if how == "same" else
                                             {"tile_batch": every} if how == "all" else {}))
        generate(r.replace(steps=2), denoiser=den, previews=False)  # warm-up (ring geometry, kernels)
        times9, _ = step_times(r, den)
        tiles9 = len(TilePlan.for_request(r, den.scale, den.native_tile).tiles)
        per_view[name] = statistics.median(times9[1:]) / tiles9 * 1000
    log("bridges_2048", {"size": size9, "tile_batch": B, "steps": req9.steps,
                         "ms_per_view": {k: round(v, 3) for k, v in per_view.items()},
                         "full_to_off": round(per_view["full"] / per_view["off"], 3),
                         "attention_to_off": round(per_view["attention"] / per_view["off"], 3),
                         "norms_to_off": round(per_view["norms"] / per_view["off"], 3),
                         "tiles": every,
                         "norms_same_to_off_all": round(per_view["norms-same"] / per_view["off-all"], 3),
                         "full_same_to_off_all": round(per_view["full-same"] / per_view["off-all"], 3),
                         "timed": "median step time over steps 1.., divided by the plan's tiles; previews on; "
                                  "same-step: every tile of a step in one call, against off-all (off, every tile in "
                                  "one call); the rest at B against off"})

    # 10. The exact tiled decode alone (issue 14): SD1.5's VAE at 4096² and 8192², where the
    #     planner puts its stage canvases (memory, or spilled to $PARADIFF_SCRATCH), its time and
    #     the peak VRAM; a smooth random latent.
    from paradiff_gui.engine.models.sd import vae as vae_mod

    decodes = {}
    for side in (4096 // s, 8192 // s):
        h = side // den.scale
        coarse = torch.randn(1, 4, h // 8, h // 8, generator=torch.Generator().manual_seed(1))
        z = torch.nn.functional.interpolate(coarse, size=(h, h), mode="bicubic")
        store = vae_mod.stage_storage(den.vae, h, h, den._vae_dtype)
        row = {"where": store.where, "host_estimate_gib": round(store.memory / GiB, 1),
               "disk_estimate_gib": round(store.disk / GiB, 1), "scratch_free_gib": round(store.free / GiB, 1)}
        if store.where != "none":
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            t0 = time.perf_counter()
            vae_mod.decode_synced(den.vae, z.to(den._vae_dtype), lambda d, n: None,
                                  spill=store.folder if store.where == "disk" else None)
            sync(device)
            row["seconds"] = round(time.perf_counter() - t0, 2)
            if device.type == "cuda":
                row["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 2)
        decodes[f"{side}x{side}"] = row
    log("exact_decode", {**decodes, "timed": "decode_synced alone (latents on the host in, uint8 picture out)"})

    # 8. torch.compile (and channels-last on CUDA): Paradiff ms/view at batch B again, compiled.
    if args.smoke:
        log("compiled", "not run in the smoke run (compiling on a CPU takes minutes)")
    else:
        den.enable_compile()
        t0 = time.perf_counter()
        generate(req.replace(steps=1), denoiser=den)  # compiles
        compile_s = time.perf_counter() - t0
        times, _ = step_times(req, den)
        compiled = statistics.median(times[1:] or times) / B * 1000
        log("compiled", {"paradiff_ms_per_view": round(compiled, 3), "ratio_to_bare_eager": round(compiled / bare, 3),
                         "first_step_with_compile_s": round(compile_s, 1)})

    # 11. FLUX.1-dev and SD3.5-large (bench_dit.py); last, so a card too small for them keeps the rest.
    del den
    if device.type == "cuda":
        torch.cuda.empty_cache()
    bench_dit.section(device, args.smoke, log)
    return write(results, out)


def write(results: dict, out: Path) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
