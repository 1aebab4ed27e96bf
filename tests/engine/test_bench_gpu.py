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
    assert {"unet_vs_paradiff", "panorama_vs_paradiff", "end_to_end_4096", "vram_8192", "end_to_end_16384"} <= set(r)
    assert r["end_to_end_16384"]["size"] == [2048, 2048] and r["end_to_end_16384"]["decode"]
    assert r["unet_vs_paradiff"]["ratio"] > 0 and r["panorama_vs_paradiff"]["speedup"] > 0
    assert set(r["vram_8192"]) == {"sd15", "sdxl"}
    assert {"card", "torch", "diffusers", "date"} <= set(r)
