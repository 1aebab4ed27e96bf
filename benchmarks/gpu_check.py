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
from paradiff_gui.engine.models.sd.backend import SDDenoiser


def run(device: str, dtype: torch.dtype, tile_batch: int, sampler: str = "dpmpp_2m_karras"):
    den = SDDenoiser(tiny_sd().to(device, dtype), "tiny", torch.device(device), dtype)
    req = GenerationRequest(model="tiny", prompt="a red castle", width=512, height=256, grid=(3, 5), overlap=16,
                            steps=6, seed=3, tile_batch=tile_batch, sampler=sampler)
    return generate(req, denoiser=den)


def compare(name: str, res, ref, latent_tol: float | None, image_max: int, image_mean: float) -> bool:
    d = (res.latents - ref.latents).abs().max().item()
    img = abs(res.image.astype(int) - ref.image.astype(int))
    passed = bool((latent_tol is None or d <= latent_tol) and img.max() <= image_max and img.mean() <= image_mean)
    print(json.dumps({"check": name, "max_abs_latent_diff": d, "latent_tol": latent_tol,
                      "image_max_diff": int(img.max()), "image_mean_diff": float(img.mean()), "pass": passed}),
          flush=True)
    return passed


def main() -> int:
    ok = True
    cpu = run("cpu", torch.float32, 15)
    cpu_a = run("cpu", torch.float32, 4, "euler_a")
    # Strict: without TF32, CUDA fp32 must match the CPU up to float rounding.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ok &= compare("cuda fp32 (no TF32) == cpu fp32", run("cuda", torch.float32, 15), cpu, 2e-3, 1, 0.01)
    ok &= compare("cuda fp32 (no TF32) tile_batch 1 == cpu", run("cuda", torch.float32, 1), cpu, 2e-3, 1, 0.01)
    ok &= compare("euler_a: the same ancestral noise on cuda (no TF32) and cpu",
                  run("cuda", torch.float32, 15, "euler_a"), cpu_a, 2e-3, 1, 0.01)
    # PyTorch's defaults (TF32 convolutions) and fp16: the same image up to rounding.
    torch.backends.cudnn.allow_tf32 = True
    ok &= compare("cuda fp32 (TF32 convs, default) ≈ cpu fp32", run("cuda", torch.float32, 15), cpu, None, 2, 0.1)
    ok &= compare("cuda fp16 ≈ cpu fp32", run("cuda", torch.float16, 15), cpu, None, 3, 0.5)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
