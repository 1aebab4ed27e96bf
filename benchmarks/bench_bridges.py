"""Bridges on the built-in terrain model's real weights: seams, the output's statistics, time.

    python benchmarks/bench_bridges.py                                   # 384², overlap 32, seeds 1-3
    python benchmarks/bench_bridges.py --size 512 --overlaps 0 16 32 64 --seeds 1 2 3 4 5

For every overlap × bridges setting and seed: the seam ratio (1.0 = no trace of the grid), the
heights' standard deviation and mean |∇| inside the tiles (bridges must not win by flattening or
blurring: compare with bridges off at the same overlap and with today's default, overlap 64), and
the wall time of the whole generation (model load excluded: one warm-up run first). Writes
``benchmarks/results/bridges-<size>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics as st
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paradiff_gui import __version__  # noqa: E402
from paradiff_gui.engine import generate  # noqa: E402
from paradiff_gui.engine.analysis.seams import analyse  # noqa: E402
from paradiff_gui.engine.api.requests import request_for  # noqa: E402
from paradiff_gui.engine.core.request import BRIDGES  # noqa: E402


def interior_gradient(image: np.ndarray, rects: list[tuple[int, int, int, int]], margin: int = 8) -> float:
    """Mean |∇| of the heights inside the tiles (``margin`` px away from every tile edge)."""
    z = image.astype(np.float64)
    gy, gx = np.gradient(z)
    mag = np.hypot(gx, gy)
    inside = np.zeros(z.shape, bool)
    for x0, y0, x1, y1 in rects:
        inside[y0 + margin:y1 - margin, x0 + margin:x1 - margin] = True
    return float(mag[inside].mean())


def run(size: int, overlap: int, bridges: str, seed: int) -> dict:
    req = request_for("builtin:terrain", width=size, height=size, seed=seed, overlap=overlap, device="cpu",
                      bridges=bridges)
    started = time.perf_counter()
    res = generate(req, previews=False)
    seconds = time.perf_counter() - started
    rects = [res.plan.image_rect(t) for t in res.plan.tiles]
    return {"overlap": overlap, "bridges": bridges, "seed": seed, "tiles": len(rects),
            "seam_ratio": round(analyse(res.image, rects).seam_ratio, 4),
            "height_std": round(float(res.image.std()), 1),
            "interior_gradient": round(interior_gradient(res.image, rects), 2),
            "seconds": round(seconds, 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--overlaps", type=int, nargs="+", default=[32])
    ap.add_argument("--bridges", nargs="+", default=list(BRIDGES), choices=BRIDGES)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--baseline", type=int, default=64, help="today's default overlap, bridges off")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    generate(request_for("builtin:terrain", width=128, height=128, steps=1, device="cpu"), previews=False)  # load
    rows = []
    settings = [(o, b) for o in args.overlaps for b in args.bridges]
    if args.baseline not in args.overlaps:
        settings.append((args.baseline, "off"))
    for overlap, bridges in settings:
        for seed in args.seeds:
            rows.append(run(args.size, overlap, bridges, seed))
            print(json.dumps(rows[-1]), flush=True)
    table = []
    for overlap, bridges in settings:
        mine = [r for r in rows if r["overlap"] == overlap and r["bridges"] == bridges]
        table.append({"overlap": overlap, "bridges": bridges, "tiles": mine[0]["tiles"],
                      **{k: round(st.mean(r[k] for r in mine), 3) for k in
                         ("seam_ratio", "height_std", "interior_gradient", "seconds")}})
    print(f"{'overlap':>7} {'bridges':>9} {'tiles':>5} {'seam':>6} {'std':>7} {'|grad|':>7} {'s':>6}")
    for t in table:
        print(f"{t['overlap']:>7} {t['bridges']:>9} {t['tiles']:>5} {t['seam_ratio']:>6.3f} {t['height_std']:>7.1f} "
              f"{t['interior_gradient']:>7.2f} {t['seconds']:>6.1f}")
    out = args.out or ROOT / "benchmarks" / "results" / f"bridges-{args.size}.json"
    out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "paradiff": __version__, "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
        "timed": "generate() from request to image, model already loaded, previews off",
        "size": args.size, "seeds": args.seeds, "table": table, "runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
