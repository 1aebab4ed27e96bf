"""Correctness of the CUDA path on a tiny model, next to the CPU path (run on a CUDA machine).

    python benchmarks/gpu_check.py

Checks: the same seed gives the same canvas on CUDA as on the CPU (noise comes from a CPU
generator), tile_batch does not change the CUDA result, fp16 runs and stays close to fp32.
Prints one JSON line per check and exits non-zero if any fails.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny import tiny_sd

from paradiff_gui.engine import GenerationRequest, generate
from paradiff_gui.engine.denoisers.sd import SDDenoiser


def run(device: str, dtype: torch.dtype, tile_batch: int, sampler: str = "dpmpp_2m_karras"):
    den = SDDenoiser(tiny_sd().to(device, dtype), "tiny", torch.device(device), dtype)
    req = GenerationRequest(model="tiny", prompt="a red castle", width=512, height=256, grid=(3, 5), overlap=16,
                            steps=6, seed=3, tile_batch=tile_batch, sampler=sampler)
    return generate(req, denoiser=den)


def main() -> int:
    ok = True
    cpu = run("cpu", torch.float32, 15)
    for name, res, tol in [
        ("cuda fp32 == cpu fp32 (tile_batch 15)", run("cuda", torch.float32, 15), 2e-3),
        ("cuda fp32 tile_batch 1 == cpu", run("cuda", torch.float32, 1), 2e-3),
        ("cuda fp16 ≈ cpu fp32", run("cuda", torch.float16, 15), 5e-2),
    ]:
        d = (res.latents - cpu.latents).abs().max().item()
        img = (res.image.astype(int) - cpu.image.astype(int))
        passed = d <= tol
        ok &= passed
        print(json.dumps({"check": name, "max_abs_latent_diff": d, "tol": tol, "image_max_diff": int(abs(img).max()),
                          "image_mean_diff": float(abs(img).mean()), "pass": passed}), flush=True)
    a = run("cuda", torch.float32, 15, "euler_a")
    b = run("cpu", torch.float32, 4, "euler_a")
    d = (a.latents - b.latents).abs().max().item()
    ok &= d <= 2e-3
    print(json.dumps({"check": "euler_a: ancestral noise identical on cuda and cpu", "max_abs_latent_diff": d,
                      "pass": d <= 2e-3}))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
