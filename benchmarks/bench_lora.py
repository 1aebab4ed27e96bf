"""What applying and removing LoRAs costs per run, against one model call (tiny SD UNet, CPU).

    python benchmarks/bench_lora.py

Builds the tiny test UNet (tests/tiny.py) and a rank-4 attention LoRA (tests/tiny_lora.py) in a
temporary folder, then times, three times each: one UNet call on two 512² views, and
``models.lora.applied`` entered (load, set_adapters, snapshot, fuse) and left (unfuse, unload,
snapshot copied back). Per-run costs, paid once whatever the number of steps and tiles.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from paradiff_gui.engine import GenerationRequest  # noqa: E402
from paradiff_gui.engine.models import lora  # noqa: E402
from paradiff_gui.engine.models.registry import load_denoiser  # noqa: E402


def main() -> None:
    from tiny import save, tiny_sd
    from tiny_lora import make_lora

    with tempfile.TemporaryDirectory() as tmp:
        pipe = tiny_sd()
        folder = save(pipe, Path(tmp) / "tiny-sd")
        file = make_lora(pipe, Path(tmp) / "style.safetensors")
        req = GenerationRequest(model=str(folder), device="cpu", loras=[(str(file), 1.0)])
        den = load_denoiser(req, torch.device("cpu"), torch.float32)
        resolved = lora.resolve_all(req.loras)
        x, emb = torch.randn(2, 4, 64, 64), torch.randn(2, 77, 32)
        with torch.no_grad():
            den.unet(x, 10, emb)
            for _ in range(3):
                t0 = time.perf_counter()
                den.unet(x, 10, emb)
                t1 = time.perf_counter()
                with lora.applied(den, resolved):
                    t2 = time.perf_counter()
                t3 = time.perf_counter()
                print(f"UNet call, 2 views of 512²: {1e3 * (t1 - t0):.0f} ms; LoRA applied in "
                      f"{1e3 * (t2 - t1):.0f} ms, removed in {1e3 * (t3 - t2):.0f} ms")


if __name__ == "__main__":
    main()
