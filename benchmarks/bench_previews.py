"""Live previews: the tiny autoencoder (TAESD) against the linear map, and whether previews slow
the step. CPU, no download (TAESD's real architecture — diffusers' AutoencoderTiny defaults — with
random weights: its speed does not depend on the weight values).

    python benchmarks/bench_previews.py            # the figures of docs/PERFORMANCE.md

1. ms per tile of a preview of a 512² tile (64² latent px): linear map vs TAESD decode (+ averaging
   to 256 px), batch 1 and 4, median of repeats.
2. The same request (tiny random SD model, 1024×512, 256 px tiles, 8 steps) with previews on
   (TAESD found in a model folder, held to its budget; the linear map for the tiles it does not pay
   for) and off, runs alternated, median wall time; the previews made by each decoder.

Writes benchmarks/results/previews-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import diffusers
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's package; tiny model builders
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def per_tile_ms(fn, batch: int, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) / batch * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3, help="generate() runs each with previews on and off")
    args = ap.parse_args()
    torch.set_num_threads(2)
    load_start = os.getloadavg()  # the machine is shared: how quiet it was is part of the figure
    from diffusers import AutoencoderTiny
    from tiny import save, tiny_sd

    from paradiff_gui.engine import GenerationRequest, generate
    from paradiff_gui.engine.models.sd import preview as linear
    from paradiff_gui.engine.models.sd import taesd

    tmp = Path(tempfile.mkdtemp(prefix="bench-previews-"))
    torch.manual_seed(0)
    folder = tmp / "models" / "taesd"
    AutoencoderTiny().save_pretrained(str(folder), safe_serialization=True)  # TAESD's architecture
    os.environ["PARADIFF_MODEL_PATH"] = str(folder.parent)
    tiny = taesd.TinyPreview(folder, torch.device("cpu"), torch.float32)
    matrix = torch.randn(5, 3)
    cost = {}
    with torch.inference_mode():
        for batch in (1, 4):
            z = torch.randn(batch, 4, 64, 64)
            cost[f"linear_b{batch}"] = per_tile_ms(lambda z=z: linear.apply_linear_rgb(z, matrix), batch, args.repeats)
            cost[f"taesd_b{batch}"] = per_tile_ms(lambda z=z: tiny.rgb(z), batch, args.repeats)
    print("ms per 512² tile:", {k: round(v, 2) for k, v in cost.items()})

    model = save(tiny_sd(), tmp / "tiny-sd")
    req = GenerationRequest(model=str(model), prompt="a red castle", width=1024, height=512, tile=256, overlap=64,
                            steps=8, seed=1, device="cpu", tile_batch=4)
    counts = {}

    def run(previews: bool) -> float:
        shown = []
        t = time.perf_counter()
        res = generate(req, shown.append, previews=previews)
        seconds = time.perf_counter() - t
        made = [e.decoder for e in shown if type(e).__name__ == "TilePreview"]
        counts[previews] = (len(made), res.info["preview"], len(res.plan) * req.steps,
                            {d: made.count(d) for d in sorted(set(made))})
        return seconds

    run(True)  # load, warm up
    on, off = [], []
    for _ in range(args.runs):
        on.append(run(True))
        off.append(run(False))
    ratio = statistics.median(on) / statistics.median(off)
    # On a shared machine another process's burst lands in single runs: the fastest run of each
    # (least disturbed) and each on/off pair's ratio are recorded beside the medians.
    fastest = min(on) / min(off)
    pairs = [a / b for a, b in zip(on, off, strict=True)]
    load_end = os.getloadavg()
    print(f"previews on {statistics.median(on):.2f} s, off {statistics.median(off):.2f} s: x{ratio:.3f}"
          f" (fastest runs x{fastest:.3f}, median pair x{statistics.median(pairs):.3f});"
          f" previews emitted {counts[True]}; load average {load_start} → {load_end}")
    out = {
        "date": date.today().isoformat(), "machine": platform.machine(), "processor": platform.processor(),
        "torch": torch.__version__, "diffusers": diffusers.__version__, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "load_average_1_5_15": {"start": load_start, "end": load_end},
        "preview_ms_per_512_tile": cost,
        "run": {"request": req.to_dict(), "on_s": on, "off_s": off, "on_over_off": ratio,
                "on_over_off_fastest": fastest, "on_over_off_pairs": pairs,
                "previews_emitted": counts[True][0], "previews_by_decoder": counts[True][3],
                "tiles_x_steps": counts[True][2], "preview": counts[True][1],
                "budget": taesd.BUDGET},
    }
    path = ROOT / "benchmarks" / "results" / "previews-cpu.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
