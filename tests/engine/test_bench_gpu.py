"""benchmarks/bench_gpu.py runs end to end (tiny models, small sizes, CPU), so the GPU benchmark is
ready to run in one command on a card. It proves the script works, not any GPU figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_gpu_smoke_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert {"unet_vs_paradiff", "panorama_vs_paradiff", "end_to_end_4096", "vram_8192", "end_to_end_16384",
            "bridges_2048"} <= set(r)
    br = r["bridges_2048"]
    assert set(br["ms_per_view"]) == {"off", "full", "attention"} and all(v > 0 for v in br["ms_per_view"].values())
    a, b = br["ms_per_view"]["full"], br["ms_per_view"]["off"]
    assert abs(br["full_to_off"] - a / b) <= (a / b) * (5e-4 / a + 5e-4 / b) * 1.01 + 5e-4
    assert r["end_to_end_16384"]["size"] == [2048, 2048] and r["end_to_end_16384"]["decode"]
    # The ratios are the recorded times divided (bookkeeping, not speed: tiny models on a CPU).
    u, p = r["unet_vs_paradiff"], r["panorama_vs_paradiff"]
    assert u["bare_ms_per_view"] > 0 and u["paradiff_ms_per_view"] > 0
    # Within what rounding the recorded figures (3 decimals; times of 2) can explain.
    a, b = u["paradiff_ms_per_view"], u["bare_ms_per_view"]
    assert abs(u["ratio"] - a / b) <= (a / b) * (5e-4 / a + 5e-4 / b) * 1.01 + 5e-4
    best = p["diffusers_s"][str(p["diffusers_best_view_batch"])]
    assert best == min(p["diffusers_s"].values()) and p["paradiff_denoise_s"] > 0
    a, b = best, p["paradiff_denoise_s"]
    assert abs(p["speedup"] - a / b) <= (a / b) * (5e-3 / a + 5e-3 / b) * 1.01 + 5e-4
    assert set(r["vram_8192"]) == {"sd15", "sdxl"}
    assert {"card", "torch", "diffusers", "date"} <= set(r)
