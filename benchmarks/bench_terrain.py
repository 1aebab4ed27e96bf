"""builtin:terrain's speed: the torch module against ONNX Runtime, side by side in one run.

    python benchmarks/bench_terrain.py                  # CPU table of docs/PERFORMANCE.md (~4 min on 2 cores)
    python benchmarks/bench_terrain.py --generate       # + the 512² default generation, end to end
    python benchmarks/bench_terrain.py --smoke          # seconds: the bookkeeping only (run by the tests)

What is timed, on both sides: one model call on a batch of 128² tiles, from a torch tensor in to a
torch tensor out (ONNX Runtime's numpy round trip included; it is part of using it), model
loaded and warmed up, same inputs (σ = 20, difficulty 35), same thread count. Rounds alternate
between the implementations so that a slow spell of a shared machine hits both; the figure is
the median over rounds, in ms per tile, and the median of the per-round ratios (each round's two
timings were taken back to back, so a drift in the machine's speed cancels).

On a CUDA machine it also times batch 64 in fp32, fp16 and under torch.compile (fp16).

Writes benchmarks/results/terrain-<device>.json with machine, versions and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paradiff_gui.engine.api.requests import request_for  # noqa: E402
from paradiff_gui.engine.models.terrain import TerrainConditioning, TerrainDenoiser  # noqa: E402
from paradiff_gui.engine.models.terrain.weights import onnx_path  # noqa: E402

SIGMA, DIFFICULTY = 20.0, 35


def ort_call(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path()), options, providers=["CPUExecutionProvider"])

    def call(x: torch.Tensor) -> torch.Tensor:
        b = len(x)
        feeds = {"noisy": x.numpy(), "sigma": torch.full((b,), SIGMA).numpy(),
                 "difficulty": torch.full((b,), (DIFFICULTY - 1) / 99).numpy()}
        return torch.from_numpy(session.run(["denoised"], feeds)[0])

    return call


def torch_call(device: torch.device, dtype: torch.dtype, compile: bool = False, channels_last: bool | None = None):
    den = TerrainDenoiser(device, dtype, compile)
    if channels_last is False:  # the plain-layout variant, for the record
        den.memory_format = torch.contiguous_format
        den.unet.to(memory_format=torch.contiguous_format)
    cond = TerrainConditioning(DIFFICULTY)
    t = torch.tensor(SIGMA)

    def call(x: torch.Tensor) -> torch.Tensor:
        out = den.predict(x.to(device, dtype), t, [None] * len(x), cond)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return call


def time_side_by_side(calls: dict, batch: int, rounds: int, min_seconds: float, device: torch.device) -> dict:
    """Median ms per tile for each call, rounds interleaved."""
    g = torch.Generator().manual_seed(0)
    x = (SIGMA * torch.randn(batch, 1, 128, 128, generator=g)).to(device)
    per_tile: dict[str, list[float]] = {name: [] for name in calls}
    for name, call in calls.items():  # warm-up (and compile, for compiled calls)
        call(x.cpu() if name.startswith("onnxruntime") else x)
    for _ in range(rounds):
        for name, call in calls.items():
            xi = x.cpu() if name.startswith("onnxruntime") else x
            n, start = 0, time.perf_counter()
            while True:
                call(xi)
                n += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
            per_tile[name].append(elapsed / n / batch * 1000)
    return {name: {"ms_per_tile": statistics.median(v), "rounds_ms_per_tile": [round(t, 2) for t in v]}
            for name, v in per_tile.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both implementations (default 2)")
    ap.add_argument("--batches", default="1,8,49")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="minimum time per measurement")
    ap.add_argument("--generate", action="store_true", help="also time the 512² default generation (3 runs)")
    ap.add_argument("--smoke", action="store_true", help="tiny settings: checks the bookkeeping, not the speed")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.batches, args.rounds, args.seconds = "1,2", 1, 0.0
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    batches = [int(b) for b in args.batches.split(",")]
    result: dict = {
        "what": "ms per 128² tile for one model call on a batch (tensor in → tensor out; ONNX Runtime's numpy "
                "round trip included), model loaded and warmed up, σ=20, difficulty 35; median of interleaved "
                "rounds",
        "date": date.today().isoformat(), "machine": platform.machine(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "threads": args.threads, "python": platform.python_version(),
        "torch": torch.__version__, "onnxruntime": _ort_version(), "smoke": args.smoke, "cpu": {},
    }
    calls = {"onnxruntime": ort_call(args.threads), "torch": torch_call(cpu, torch.float32),
             "torch_contiguous": torch_call(cpu, torch.float32, channels_last=False)}
    for batch in batches:
        rows = time_side_by_side(calls, batch, args.rounds, args.seconds, cpu)
        ort_rounds = rows["onnxruntime"]["rounds_ms_per_tile"]
        for row in rows.values():
            row["ratio_to_onnxruntime"] = row["ms_per_tile"] / rows["onnxruntime"]["ms_per_tile"]
            # Paired by round (both sides timed back to back): steadier on a machine whose speed drifts.
            paired = [a / b for a, b in zip(row["rounds_ms_per_tile"], ort_rounds)]
            row["paired_ratios"] = [round(r, 3) for r in paired]
            row["paired_ratio_median"] = statistics.median(paired)
        result["cpu"][str(batch)] = rows
        print(f"batch {batch:3d}: " + ", ".join(
            f"{k} {v['ms_per_tile']:.1f} ms/tile ({v['ratio_to_onnxruntime']:.2f}x, "
            f"paired {v['paired_ratio_median']:.2f}x)"
            for k, v in rows.items()), flush=True)
    if args.generate:
        result["generate_512"] = time_generation(runs=1 if args.smoke else 3, smoke=args.smoke)
        print(f"512² default generation: {result['generate_512']}", flush=True)
    if torch.cuda.is_available():
        result["cuda"] = device_figures(torch.device("cuda"), args.smoke)
    elif args.smoke:  # the same bookkeeping on the CPU, so the GPU section cannot rot unseen
        result["cuda_path_on_cpu"] = device_figures(cpu, args.smoke)
    out = args.out or ROOT / "benchmarks" / "results" / f"terrain-{'cuda' if torch.cuda.is_available() else 'cpu'}" \
        f"{'-smoke' if args.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def time_generation(runs: int, smoke: bool) -> dict:
    """The default request (512², 49 tiles × 8 steps), end to end: load excluded, decode included."""
    from paradiff_gui.engine import generate

    size = 128 if smoke else 512
    req = request_for("builtin:terrain", width=size, height=size, seed=0, device="cpu",
                                      **({"steps": 1} if smoke else {}))
    generate(request_for("builtin:terrain", width=128, height=128, steps=1, device="cpu"))  # load
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        generate(req, previews=True)
        times.append(time.perf_counter() - start)
    return {"size": size, "steps": req.steps, "tiles_per_step": None if smoke else 49,
            "seconds": [round(t, 2) for t in times], "median_s": statistics.median(times),
            "what": "generate() wall time with previews, model already loaded"}


def device_figures(dev: torch.device, smoke: bool) -> dict:
    """Batch 64 in fp32, fp16 and fp16 compiled (on a CPU, in smoke mode: fp32 and bf16 at batch 2)."""
    batch = 2 if smoke else 64
    if dev.type == "cuda":
        calls = {"fp32": torch_call(dev, torch.float32), "fp16": torch_call(dev, torch.float16),
                 "fp16_compiled": torch_call(dev, torch.float16, compile=True)}
    else:
        calls = {"fp32": torch_call(dev, torch.float32), "bf16": torch_call(dev, torch.bfloat16)}
    rows: dict = time_side_by_side(calls, batch, 1 if smoke else 5, 0.0 if smoke else 2.0, dev)
    rows["device_name"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    rows["batch"] = batch
    print(f"{dev.type} batch {batch}: " + ", ".join(f"{k} {v['ms_per_tile']:.3f} ms/tile" for k, v in rows.items()
                                                  if isinstance(v, dict)), flush=True)
    return rows


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    raise SystemExit(main())
