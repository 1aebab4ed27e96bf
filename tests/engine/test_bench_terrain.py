"""benchmarks/bench_terrain.py and bench_speckle.py run end to end in smoke mode: they prove the
scripts work and keep their books straight (each ratio is its two timings' quotient, every side
is timed at every batch), not any speed or quality figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A bound on a hung benchmark, not on its speed: the smoke run takes minutes alone and, on a machine
# whose cores are busy with other work, three to four times as long (9 min seen for bench_gpu).
HANG_S = 3600


def _run(script: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", *args],
                          capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_bench_terrain_times_both_sides_at_every_batch(tmp_path):
    out = tmp_path / "terrain.json"
    _run("bench_terrain.py", "--out", str(out))
    r = json.loads(out.read_text())
    assert {"what", "date", "torch", "onnxruntime", "threads"} <= set(r) and r["smoke"] is True
    assert set(r["cpu"]) == {"1", "2"}
    for rows in r["cpu"].values():
        assert set(rows) == {"onnxruntime", "torch", "torch_contiguous"}
        ort = rows["onnxruntime"]["ms_per_tile"]
        for row in rows.values():
            assert row["ratio_to_onnxruntime"] == pytest.approx(row["ms_per_tile"] / ort)
            assert row["paired_ratio_median"] == pytest.approx(row["rounds_ms_per_tile"][0]
                                                               / rows["onnxruntime"]["rounds_ms_per_tile"][0], rel=1e-3)
            assert len(row["rounds_ms_per_tile"]) == 1 and row["ms_per_tile"] > 1  # a real model call was timed
    gpu = r["cuda_path_on_cpu"]  # the GPU section's code, run on the CPU
    assert gpu["batch"] == 2 and gpu["fp32"]["ms_per_tile"] > 1 and gpu["bf16"]["ms_per_tile"] > 1


def test_bench_speckle_writes_its_table(tmp_path):
    _run("bench_speckle.py", "--out", str(tmp_path))
    r = json.loads((tmp_path / "speckle-smoke.json").read_text())
    assert len(r["rows"]) == 2 and set(r["reference_mean_abs_laplacian_m"]) == {"0"}
    for row in r["rows"]:
        assert row["speckle_ratio"] == pytest.approx(row["runs"][0]["speckle_ratio"])
        assert 0.9 < row["seam_ratio"] < 3 and row["seconds"] > 0
    table = (tmp_path / "speckle-smoke.md").read_text().splitlines()
    assert len(table) == 2 + len(r["rows"])
