"""builtin:terrain's schedules: speckle (fine high-frequency noise) and seams, against the package's one step.

    python benchmarks/bench_speckle.py              # the 384² table of docs/QUALITY.md (~15 min on 2 cores)
    python benchmarks/bench_speckle.py --size 512 --candidates 0,1   # old and new default at 512²
    python benchmarks/bench_speckle.py --smoke      # seconds: the bookkeeping only (run by the tests)

The bundled model is distilled for ONE step from σ = 80. Asked again at lower σ it leaves a fine
speckle in the heights. For each candidate schedule/sampler this measures, at the same size and
seeds:
- speckle: mean |Laplacian| of the heights in metres (scipy.ndimage.laplace), ÷ the same for the
  package's own one-step tiled generation (TerrainGenerator.generate(size_mode="tile"), same
  difficulty, same 64 px tile overlap as ours) — 1.0 = as smooth as the model's own output;
- seam ratio (paradiff_gui.engine.analysis.seams, 1.0 = no trace of the grid);
- wall time of generate() with the model loaded.

Writes benchmarks/results/speckle-<size>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paradiff_gui.engine import generate  # noqa: E402
from paradiff_gui.engine.analysis.seams import analyse  # noqa: E402
from paradiff_gui.engine.api.requests import request_for  # noqa: E402
from paradiff_gui.engine.models import terrain  # noqa: E402

DIFFICULTY = 35
# (name, sampler, steps, final σ)
CANDIDATES = [
    ("lcm 8 steps, 80→10 (default)", "lcm", 8, 10.0),
    ("lcm 8 steps, 80→20", "lcm", 8, 20.0),
    ("lcm 8 steps, 80→40", "lcm", 8, 40.0),
    ("lcm 4 steps, 80→20", "lcm", 4, 20.0),
    ("lcm 6 steps, 80→30", "lcm", 6, 30.0),
    ("euler (probability flow) 8 steps, 80→10", "euler", 8, 10.0),
    ("euler (probability flow) 8 steps, 80→20", "euler", 8, 20.0),
    ("euler (probability flow) 4 steps, 80→20", "euler", 4, 20.0),
]


def speckle(metres: np.ndarray) -> float:
    return float(np.abs(ndimage.laplace(metres.astype(np.float64))).mean())


def package_one_step(size: int, seed: int) -> np.ndarray:
    from terrain_diffusion import TerrainGenerator

    gen = TerrainGenerator(device="cpu")
    return gen.generate(shape=(size, size), difficulty=DIFFICULTY, seed=seed, size_mode="tile", tile_overlap=64,
                        zero_floor=False)[0]


def ours(size: int, seed: int, sampler: str, steps: int, sigma_end: float) -> tuple[np.ndarray, float, float]:
    old = terrain.SIGMA_END
    terrain.SIGMA_END = sigma_end
    try:
        req = request_for("builtin:terrain", width=size, height=size, seed=seed, steps=steps,
                                          sampler=sampler, device="cpu", extra={"terrain_difficulty": DIFFICULTY})
        start = time.perf_counter()
        res = generate(req, previews=False)
        seconds = time.perf_counter() - start
    finally:
        terrain.SIGMA_END = old
    metres = res.image.astype(np.float64) / 65535 * terrain.HEIGHT_RANGE
    seam = analyse(res.image, [res.plan.image_rect(t) for t in res.plan.tiles]).seam_ratio
    return metres, seam, seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--candidates", default=None, help="comma-separated indexes into CANDIDATES (default: all)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    candidates = CANDIDATES if args.candidates is None else [CANDIDATES[int(i)] for i in args.candidates.split(",")]
    if args.smoke:
        args.size, args.seeds, candidates = 256, "0", [(n, s, 1, e) for n, s, _, e in CANDIDATES[:2]]
    seeds = [int(s) for s in args.seeds.split(",")]
    generate(request_for("builtin:terrain", width=128, height=128, steps=1, device="cpu"))  # load
    reference = {s: speckle(package_one_step(args.size, s)) for s in seeds}
    rows = []
    for name, sampler, steps, sigma_end in candidates:
        runs = []
        for s in seeds:
            metres, seam, seconds = ours(args.size, s, sampler, steps, sigma_end)
            runs.append({"seed": s, "speckle_ratio": speckle(metres) / reference[s], "seam_ratio": seam,
                         "seconds": seconds, "height_std_m": float(metres.std())})
        row = {"name": name, "sampler": sampler, "steps": steps, "sigma_end": sigma_end, "runs": runs}
        for key in ("speckle_ratio", "seam_ratio", "seconds", "height_std_m"):
            values = [r[key] for r in runs]
            row[key] = statistics.mean(values)
            row[key + "_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
        print(f"{name}: speckle {row['speckle_ratio']:.2f} ± {row['speckle_ratio_sd']:.2f}, seam "
              f"{row['seam_ratio']:.3f} ± {row['seam_ratio_sd']:.3f}, {row['seconds']:.1f} s", flush=True)
    result = {"what": f"{args.size}² terrain, difficulty {DIFFICULTY}, seeds {seeds}, cosine fusion, 128 px tiles, "
                      "64 px overlap; speckle = mean |Laplacian| of heights ÷ the package's one-step tiled output",
              "date": date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version(),
              "reference_mean_abs_laplacian_m": reference, "rows": rows, "smoke": args.smoke}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "speckle-smoke" if args.smoke else f"speckle-{args.size}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| schedule | speckle ÷ one-step | seam ratio | height sd (m) | wall time |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['speckle_ratio']:.2f} ± {r['speckle_ratio_sd']:.2f} | "
              f"{r['seam_ratio']:.3f} ± {r['seam_ratio_sd']:.3f} | {r['height_std_m']:.2f} | {r['seconds']:.1f} s |"
              for r in rows]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
