"""Host memory of the exact tiled decode, in memory and spilled to the scratch disk.

    python benchmarks/bench_decode_memory.py sd15 --sizes 8192x512,8192x1024 --store disk
    python benchmarks/bench_decode_memory.py sd15 --sizes 1024x1024 --store memory,disk
    python benchmarks/bench_decode_memory.py tiny       # a whole tiny-SD run at 4096², 1 step (the CLI)
    python benchmarks/bench_decode_memory.py tiny --host-memory none,2   # the same, then under a 2 GiB budget
    python benchmarks/bench_decode_memory.py accuracy   # spilled decode against a whole decode, tiny VAE
    python benchmarks/bench_decode_memory.py flops      # SD1.5's decode: convolutions against attention

``sd15``: SD1.5's VAE (its published configuration, random weights: the memory and the time do
not depend on the weights) decodes a smooth random latent of each size, each run in a fresh
process; recorded: the process's peak resident memory (VmHWM) and what the decode added to it, the
scratch disk's peak (the open scratch files' sizes, sampled every 0.1 s), the wall time of the
decode alone (no model loading), the device and dtype (fp32 on a CPU, fp16 on CUDA). ``--store
memory`` keeps every stage canvas in host memory, ``disk`` spills them (to ``--scratch``, or
$PARADIFF_SCRATCH, or the user cache folder), ``disk-recompute`` spills them but computes the
resnets' hidden canvases twice instead of storing them.

``tiny``: ``paradiff generate --model <tiny SD folder> --size 4096x4096 --steps 1`` in a fresh
process (the tests' tiny SD, saved once to ``--cache``): its peak resident memory and wall time,
everything included (loading, denoising, decode, PNG export); with ``--host-memory none,2`` once
without a budget and once under ``--host-memory 2``: where the decode kept its canvases (the
recipe's ``decode``) and whether the picture is the same, pixel for pixel.

``accuracy``: the tests' tiny VAE, a smooth latent, the exact tiled decode with every canvas
spilled (small bands) against ``vae.decode`` on the whole latent, PSNR over [-1, 1]; with the
middle block's attention over the whole canvas (the default) and tile-local (the option).

``flops``: SD1.5's VAE decoder counted by ``torch.utils.flop_counter`` on a 512² decode (meta
tensors: nothing runs); its convolutions scaled with the area, against the whole-canvas
attention's 4·N²·512 FLOP (N latent px), at 4096² and 8192².
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

CHILD = r"""
import json, os, sys, threading, time
from pathlib import Path
sys.path.insert(0, {root!r})
import torch
from diffusers import AutoencoderKL
from paradiff_gui.engine.models.sd import vae as V

def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

width, height, store, scratch, device = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
dtype = torch.float16 if device == "cuda" else torch.float32
torch.manual_seed(0)
vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
vae = vae.to(device, dtype).eval()
g = torch.Generator().manual_seed(1)
h, w = height // 8, width // 8
z = torch.nn.functional.interpolate(torch.randn(1, 4, max(2, h // 8), max(2, w // 8), generator=g), size=(h, w),
                                    mode="bicubic")
disk_peak = [0]
stop = threading.Event()

def watch():
    while not stop.is_set():
        used = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{{fd}}").startswith(scratch):
                    used += os.fstat(int(fd)).st_size
            except OSError:
                pass
        disk_peak[0] = max(disk_peak[0], used)
        time.sleep(0.1)

threading.Thread(target=watch, daemon=True).start()
before = status_kb("VmRSS")
t0 = time.perf_counter()
with torch.no_grad():
    image = V.decode_synced(vae, z, lambda d, n: None, spill=None if store == "memory" else Path(scratch),
                            recompute=store == "disk-recompute")
if device == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - t0
stop.set()
print(json.dumps({{"width": width, "height": height, "store": store, "device": device, "dtype": str(dtype),
                  "seconds": round(seconds, 1), "peak_rss_gib": round(status_kb("VmHWM") / 2**20, 2),
                  "rss_before_decode_gib": round(before / 2**20, 2),
                  "added_by_decode_gib": round((status_kb("VmHWM") - before) / 2**20, 2),
                  "scratch_peak_gib": round(disk_peak[0] / 2**30, 2),
                  "estimate_in_memory_gib": round(V.synced_host_bytes(vae, h, w, dtype) / 2**30, 2),
                  "estimate_spilled_host_gib": round(V.synced_spill_host_bytes(vae, h, w, dtype) / 2**30, 2),
                  "estimate_tile_gib": round(V.synced_tile_bytes(vae, h, w, dtype) / 2**30, 2),
                  "estimate_disk_gib": round(V.synced_disk_bytes(vae, h, w, dtype,
                                                                 recompute=store == "disk-recompute") / 2**30, 2),
                  "picture": list(image.shape)}}))
"""

TINY = r"""
import sys, time
sys.path.insert(0, {root!r})
from paradiff_gui.cli import main
t0 = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - t0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("RESULT", int(line.split()[1]), round(seconds, 1), code)
"""


def machine() -> dict:
    import torch

    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def sd15(args: argparse.Namespace) -> list[dict]:
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    scratch = args.scratch or os.environ.get("PARADIFF_SCRATCH") or tempfile.mkdtemp(prefix="paradiff-bench-")
    Path(scratch).mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.lower().split("x"))
        for store in args.store.split(","):
            out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), str(width), str(height), store,
                                  str(Path(scratch).resolve()), device], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(row, flush=True)
            rows.append(row)
    return rows


def tiny(args: argparse.Namespace) -> list[dict]:
    import hashlib

    from PIL import Image

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import save, tiny_sd

    from paradiff_gui.engine.io.metadata import read_recipe

    folder = Path(args.cache) / "tiny-sd"
    if not (folder / "model_index.json").exists():
        save(tiny_sd(), folder)
    rows, pictures = [], {}
    budgets = [b.strip() for b in args.host_memory.split(",")] if args.host_memory else ["none"]
    for budget in budgets:
        with tempfile.TemporaryDirectory() as out:
            cmd = ["generate", "--model", str(folder), "--size", "4096x4096", "--steps", "1", "--device", "cpu",
                   "--seed", "1", "--prompt", "a castle"] + (["--host-memory", budget] if budget != "none" else [])
            target = Path(out) / "t.png"
            env = {k: v for k, v in os.environ.items() if k != "PARADIFF_HOST_MEMORY"}
            res = subprocess.run([sys.executable, "-c", TINY.format(root=str(ROOT)), *cmd, "-o", str(target)],
                                 capture_output=True, text=True, check=True, env=env)
            with Image.open(target) as im:
                pixels = im.tobytes()
            decode = read_recipe(target)["info"].get("decode")
        kb, seconds, code = res.stdout.strip().splitlines()[-1].split()[1:]
        pictures[budget] = pixels
        row = {"command": "paradiff " + " ".join(cmd) + " -o t.png", "host_memory_gib": budget,
               "peak_rss_gib": round(int(kb) / 2**20, 2), "seconds": float(seconds), "exit": int(code),
               "decode": decode, "picture_sha256": hashlib.sha256(pixels).hexdigest(),
               "same_picture_as_first": pixels == pictures[budgets[0]]}
        print(row, flush=True)
        rows.append(row)
    return rows


def accuracy(args: argparse.Namespace) -> list[dict]:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import tiny_sd

    from paradiff_gui.engine.models.sd import vae as V

    torch.manual_seed(0)
    model = tiny_sd().vae
    V.SPILL_MIN_BYTES, V.BAND_BYTES = 0, 1 << 20  # spill every canvas, in bands of a few rows
    rows = []
    for side in (1024, 2048, 3072):
        g = torch.Generator().manual_seed(1)
        z = torch.nn.functional.interpolate(torch.randn(1, 4, side // 64, side // 64, generator=g),
                                            size=(side // 8, side // 8), mode="bicubic")
        with torch.no_grad():
            whole = model.decode(z, return_dict=False)[0][0].permute(1, 2, 0).numpy()
        for attention, whole_px in (("whole canvas (the default)", None), ("tile-local, 16 px halo", 0)):
            with torch.no_grad(), tempfile.TemporaryDirectory() as scratch:
                spilled = V.decode_synced(model, z, lambda d, n: None, convert=lambda a: a, spill=Path(scratch),
                                          attention_whole_px=whole_px)
            psnr = 10 * np.log10(4.0 / float(np.mean((spilled - whole) ** 2)))
            row = {"size": f"{side}x{side}", "attention": attention, "psnr_db": round(psnr, 1)}
            print(row)
            rows.append(row)
    return rows


def flops(args: argparse.Namespace) -> list[dict]:
    import torch
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            vae.decode(torch.randn(1, 4, 64, 64))
    conv = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(k))
    rows = []
    for side in (512, 4096, 8192):
        n = (side // 8) ** 2
        row = {"size": f"{side}x{side}", "convolutions_pflop": round(conv * (side / 512) ** 2 / 1e15, 3),
               "whole_canvas_attention_pflop": round(4 * n * n * 512 / 1e15, 3)}
        print(row)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["sd15", "tiny", "accuracy", "flops"])
    ap.add_argument("--sizes", default="8192x512,8192x1024", help="sd15: WIDTHxHEIGHT image sizes, comma-separated")
    ap.add_argument("--store", default="disk", help="sd15: memory, disk, disk-recompute (comma-separated)")
    ap.add_argument("--scratch", help="sd15: the scratch folder (default: a new temporary folder)")
    ap.add_argument("--cpu", action="store_true", help="sd15: on the CPU even with a GPU")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "paradiff-bench"), help="tiny: model folder")
    ap.add_argument("--host-memory", help="tiny: budgets in GiB to run under, comma-separated (none: no budget), "
                                          "e.g. none,2")
    ap.add_argument("--out", help="results JSON (default benchmarks/results/decode-memory-<what>.json)")
    args = ap.parse_args()
    rows = {"sd15": sd15, "tiny": tiny, "accuracy": accuracy, "flops": flops}[args.what](args)
    out = Path(args.out) if args.out else RESULTS / f"decode-memory-{args.what}.json"
    out.write_text(json.dumps({"what": args.what, "machine": machine(), "timed": {
        "sd15": "the decode call alone (weights already loaded), in a fresh process per run",
        "tiny": "the whole CLI run: loading, 1 step, decode, PNG export",
        "accuracy": "no timing", "flops": "no timing (counted)"}[args.what], "runs": rows}, indent=2) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
