"""Loading an SD model from a local folder: time and peak host memory, in a fresh process each.

    python benchmarks/bench_load.py --out benchmarks/results/load-<label>.json

Two folders, made once in ``--cache`` (random weights, nothing downloaded): the tiny SDXL of the
tests, and an SD 1.5-sized UNet (its published configuration, 860 M parameters, fp16
safetensors) loaded alone with ``UNet2DConditionModel.from_pretrained`` — where loading twice
over shows. Each load runs in its own process (``--runs`` times, the median kept): wall time of
the load call, then with every weight read once (safetensors may stay memory-mapped until first
use, as on a move to the GPU), and the process's peak resident memory (VmHWM) minus its resident
memory just before the call. Records whether ``accelerate`` is importable and whether diffusers said it
could not load with low CPU memory usage.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import io, json, logging, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
import torch
log = io.StringIO()
handler = logging.StreamHandler(log)
logging.getLogger("diffusers").addHandler(handler)
def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
kind, folder = sys.argv[1], sys.argv[2]
before = status_kb("VmRSS")
t0 = time.perf_counter()
if kind == "sdxl":
    from paradiff_gui.engine.models.sd.backend import load_sd
    den = load_sd(folder, torch.device("cpu"), torch.float32)
    modules = [m for m in den.pipe.components.values() if isinstance(m, torch.nn.Module)]
else:
    from diffusers import UNet2DConditionModel
    modules = [UNet2DConditionModel.from_pretrained(folder, torch_dtype=torch.float16)]
seconds = time.perf_counter() - t0
# Safetensors weights may stay memory-mapped until first used: read every weight once, as the
# first step (or a move to the GPU) does, so the peak includes them.
with torch.no_grad():
    for m in modules:
        for p in m.parameters():
            p.detach().float().sum()
seconds_to_first_use = time.perf_counter() - t0
peak = status_kb("VmHWM")  # this process's own peak (ru_maxrss would carry the parent's over fork)
print(json.dumps({{"seconds": seconds, "seconds_to_first_use": seconds_to_first_use,
                  "peak_rss_mb": peak / 1024, "added_peak_mb": (peak - before) / 1024,
                  "warned": "low cpu memory usage" in log.getvalue()}}))
"""

def folders(cache: Path) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from bench_engine import sd15_unet
    from tiny import save, tiny_sdxl

    out = {"sdxl": cache / "tiny-sdxl", "unet15": cache / "unet-sd15"}
    if not (out["sdxl"] / "model_index.json").is_file():
        save(tiny_sdxl(), out["sdxl"])
    if not (out["unet15"] / "config.json").is_file():
        torch.manual_seed(0)
        sd15_unet().half().save_pretrained(str(out["unet15"]), safe_serialization=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path("/tmp/paradiff-bench-load"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    try:
        import accelerate
        acc = accelerate.__version__
    except ImportError:
        acc = None
    results = {"date": time.strftime("%Y-%m-%d"), "accelerate": acc, "machine": "2 CPU cores", "loads": {}}
    for kind, folder in folders(args.cache).items():
        child = CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"))
        runs = []
        for _ in range(args.runs):
            done = subprocess.run([sys.executable, "-c", child, kind, str(folder)], capture_output=True, text=True,
                                  env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=600)
            if done.returncode:
                raise SystemExit(done.stderr[-2000:])
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        results["loads"][kind] = {k: round(statistics.median(r[k] for r in runs), 2) for k in
                                  ("seconds", "seconds_to_first_use", "peak_rss_mb", "added_peak_mb")}
        results["loads"][kind]["warned"] = any(r["warned"] for r in runs)
        print(kind, json.dumps(results["loads"][kind]), flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
