"""Seam ratio and time of the built-in terrain model for one size and overlap, seeds 0-4.

    python benchmarks/bench_overlap.py 512 64           # the defaults row of docs/QUALITY.md
    python benchmarks/bench_overlap.py 320 32 '{"jitter": true}'

Prints one line: size, overlap, extra request fields, tiles, seam ratio mean ± sd, per seed, mean time.
"""

from __future__ import annotations

import json
import statistics as st
import sys
import time

from paradiff_gui.engine import generate
from paradiff_gui.engine.analysis.seams import analyse
from paradiff_gui.engine.api.requests import request_for


def main() -> None:
    size, overlap = int(sys.argv[1]), int(sys.argv[2])
    extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    ratios, times = [], []
    for seed in range(5):
        started = time.perf_counter()
        req = request_for("builtin:terrain", width=size, height=size, seed=seed, overlap=overlap,
                                          device="cpu", **extra)
        res = generate(req, previews=False)
        times.append(time.perf_counter() - started)
        ratios.append(analyse(res.image, [res.plan.image_rect(t) for t in res.plan.tiles]).seam_ratio)
    print(size, overlap, extra, len(res.plan), f"{st.mean(ratios):.3f} ± {st.stdev(ratios):.3f}",
          [round(r, 2) for r in ratios], f"{st.mean(times):.1f} s", flush=True)


if __name__ == "__main__":
    main()
