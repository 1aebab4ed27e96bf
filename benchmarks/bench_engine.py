"""Engine timing: tile_batch and preview cost, on a tiny model (CPU) or SD1.5's real architecture
with random weights (GPU; speed does not depend on weight values). No download.

    python benchmarks/bench_engine.py --model tiny                 # the CPU figure of docs/PERFORMANCE.md
    python benchmarks/bench_engine.py --model sd15-random          # on a CUDA machine

Writes benchmarks/results/engine-<model>-<device>.json with machine and library versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import diffusers
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny model builders live with the tests

from paradiff_gui.engine import GenerationRequest, TilePlan, generate  # noqa: E402
from paradiff_gui.engine.models.sd.backend import SDDenoiser  # noqa: E402


def sd15_unet():
    """SD1.5's UNet configuration (diffusers' defaults are SD 1.x) with random weights."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768)


def sd15_random(device: torch.device, dtype: torch.dtype):
    """StableDiffusionPipeline with SD1.5's real UNet/VAE/CLIP-L configs and random weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline
    from tiny import tiny_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    with torch.device(device):
        unet = sd15_unet()
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512,
        )
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12,
                                            max_position_embeddings=77, hidden_act="quick_gelu"))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tiny_tokenizer(),
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False).to(device, dtype)
    return SDDenoiser(pipe, "sd15-random", device, dtype)


def tiny(device: torch.device, dtype: torch.dtype):
    from tiny import tiny_sd

    return SDDenoiser(tiny_sd().to(device, dtype), "tiny-sd", device, dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(req: GenerationRequest, den, previews: bool, repeats: int) -> dict:
    cpu, wall, steps = [], [], []
    for _ in range(repeats):
        step_times: list[float] = []

        def on_event(e, step_times=step_times):
            if type(e).__name__ == "StepFinished":
                step_times.append(e.seconds)

        sync(den.device)
        c0, w0 = time.process_time(), time.perf_counter()
        generate(req, on_event, denoiser=den, previews=previews)
        sync(den.device)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        steps.append(statistics.median(step_times))
    return {"cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall),
            "step_s": statistics.median(steps), "runs": repeats}


def batch_sizes(tiles: int, batch: int) -> list[int]:
    """The model calls of one step: ``tile_batch`` tiles each, the last one the rest."""
    return [batch] * (tiles // batch) + ([tiles % batch] if tiles % batch else [])


def bare_unet_ms_per_view(den, batch: int | list[int], tile: int | tuple[int, int], repeats: int = 10) -> float:
    """The UNet alone, both guidance halves, on tiles of ``tile`` latent px (an int: square; or the
    plan's (height, width)) in calls of ``batch`` tiles (or the plan's own list of call sizes, the
    last call of a step the rest): the floor Paradiff is measured against, per tile."""
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    calls = [batch] if isinstance(batch, int) else list(batch)
    t = torch.tensor(500, device=den.device)
    inputs = []
    for b in calls:
        inputs.append((torch.randn(2 * b, 4, th, tw, device=den.device, dtype=den.dtype),
                       torch.randn(2 * b, 77, den.unet.config.cross_attention_dim, device=den.device,
                                   dtype=den.dtype)))
    with torch.inference_mode():
        for x, ehs in inputs[:2] * 2:  # warm-up, every shape once or twice
            den.unet(x, t, encoder_hidden_states=ehs)
        sync(den.device)
        start = time.perf_counter()
        for _ in range(repeats):
            for x, ehs in inputs:
                den.unet(x, t, encoder_hidden_states=ehs)
        sync(den.device)
    return (time.perf_counter() - start) / repeats / sum(calls) * 1000


# What each side of the comparison times (written into the results).
TIMED = {
    "paradiff": "median over runs of the median step time (StepFinished.seconds): every tile's model call in "
                "the plan's batches, fusion and the scheduler step, and previews when on; not the prompt encoding, "
                "the decode or loading",
    "bare_unet": "the UNet forward alone on random inputs of the plan's tile shape, in the same sequence of batch "
                 "sizes as one step (the last call the rest), both guidance halves; no fusion, scheduler or previews",
    "ms_per_view": "per tile (a tile with both guidance halves is one view)",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["tiny", "sd15-random"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a small canvas and one step: checks the script runs")
    ap.add_argument("--out", type=Path, help="default benchmarks/results/engine-<model>-<device>.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.set_num_threads(min(torch.get_num_threads(), 2) if device.type == "cpu" else torch.get_num_threads())
    den = (tiny if args.model == "tiny" else sd15_random)(device, dtype)
    if args.model == "tiny":  # the figure issue 2 asks for: 512x256, 3x5 tiles, 4 steps
        base = GenerationRequest(model="tiny-sd", prompt="a red castle", width=512, height=256, grid=(3, 5),
                                 overlap=16, steps=4, seed=1, sampler="euler")
        batches = [1, 15]
        if args.quick:
            base, batches = base.replace(steps=1), [1, 4]
    else:  # 2048x2048, 512 px tiles, 128 px overlap: 25 tiles
        base = GenerationRequest(model="sd15-random", prompt="a red castle", width=2048, height=2048, tile=512,
                                 overlap=128, steps=10, seed=1, sampler="euler")
        batches = [1, 8, 25]
        if args.quick:
            base, batches = base.replace(width=1024, height=512, steps=1), [1, 3]
    generate(base.replace(tile_batch=batches[-1]), denoiser=den)  # warm-up: kernels, preview fit
    rows = []
    for b in batches:
        for previews in (True, False):
            r = timed(base.replace(tile_batch=b), den, previews, args.repeats)
            rows.append({"tile_batch": b, "previews": previews, **r})
            print(json.dumps(rows[-1]), flush=True)
    plan = TilePlan.for_request(base, den.scale, den.native_tile)
    n_tiles, shape = len(plan), (plan.tile_h, plan.tile_w)
    calls = {b: batch_sizes(n_tiles, b) for b in batches}
    bare = {b: bare_unet_ms_per_view(den, calls[b], shape, repeats=3 if args.quick else 10) for b in batches}
    for r in rows:
        r["ms_per_view"] = r["step_s"] / n_tiles * 1000
        r["bare_unet_ms_per_view"] = bare[r["tile_batch"]]
        r["bare_calls"] = calls[r["tile_batch"]]
        r["ratio_to_bare"] = r["ms_per_view"] / bare[r["tile_batch"]]
    out = {
        "model": args.model, "device": str(device), "dtype": str(dtype),
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "driver": (torch.version.cuda if device.type == "cuda" else None),
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "python": platform.python_version(), "date": date.today().isoformat(),
        "request": base.to_dict(), "tiles": n_tiles, "tile_latent_px": list(shape), "timed": TIMED, "rows": rows,
    }
    path = args.out or ROOT / "benchmarks" / "results" / f"engine-{args.model}-{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
