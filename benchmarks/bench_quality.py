"""Seam quality of every fusion mode, with and without jitter and global context, on the built-in
terrain model (real pretrained weights, CPU, offline).

    python benchmarks/bench_quality.py                       # the table of docs/QUALITY.md (~50 min on 2 cores)
    python benchmarks/bench_quality.py --sizes 256 --seeds 2 # a quick look

Writes benchmarks/results/quality.json (every run), benchmarks/results/quality.md (the table) and
docs/images/quality-sheet.jpg (seed 0 of each mode at the largest size, as shaded relief).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from paradiff_gui.engine import generate
from paradiff_gui.engine.analysis.relief import shaded_relief
from paradiff_gui.engine.analysis.seams import analyse
from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core import events

ROOT = Path(__file__).resolve().parents[1]
FUSIONS = ("independent", "none", "uniform", "gaussian", "cosine")
VARIANTS = {"plain": {}, "jitter": {"jitter": True}, "context": {"global_context": 0.5},
            "jitter+context": {"jitter": True, "global_context": 0.5}}


def one(size: int, seed: int, fusion: str, variant: str, steps: int, overlap: int) -> dict:
    req = request_for("builtin:terrain", width=size, height=size, seed=seed, fusion=fusion,
                                      steps=steps, overlap=overlap, device="cpu", **VARIANTS[variant])
    consensus: list[float] = []

    def on_event(e):
        if isinstance(e, events.StepFinished) and e.consensus is not None:
            consensus.append(e.consensus)

    started = time.perf_counter()
    res = generate(req, on_event, previews=False)
    seconds = time.perf_counter() - started
    tiles = [res.plan.image_rect(t) for t in res.plan.tiles]
    report = analyse(res.image, tiles)
    return {"size": size, "seed": seed, "fusion": fusion, "variant": variant, "steps": steps,
            "seam_ratio": report.seam_ratio, "spectral_peak": report.spectral_peak, "drift_rel":
            float(np.mean([s.drift_rel for s in report.seams])) if report.seams else 0.0,
            "consensus": float(np.mean(consensus)) if consensus else None, "seconds": seconds,
            "image": res.image, "tiles": tiles}


def fmt(values: list[float | None], digits: int = 2) -> str:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 320])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--overlap", type=int, default=32, help="requested overlap, px (the table used 32)")
    ap.add_argument("--fusions", nargs="+", default=list(FUSIONS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality"))
    ap.add_argument("--keep", metavar="DIR", help="also save every heightmap as .npy here (to recompute metrics)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows, pictures = [], {}
    for size in args.sizes:
        for fusion in args.fusions:
            for variant in args.variants:
                if fusion == "independent" and variant != "plain":
                    continue  # no shared canvas: jitter and global context do not apply
                for seed in range(args.seeds):
                    r = one(size, seed, fusion, variant, args.steps, args.overlap)
                    if args.keep:
                        Path(args.keep).mkdir(parents=True, exist_ok=True)
                        np.save(Path(args.keep) / f"{size}-{fusion}-{variant}-{seed}.npy", r["image"])
                    if seed == 0 and size == max(args.sizes):
                        pictures[(fusion, variant)] = r["image"]
                    r.pop("image")
                    rows.append(r)
                    print(json.dumps({k: v for k, v in r.items() if k != "tiles"}), flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": "builtin:terrain (adaptive-terrain-diffusion 0.4.2)", "cpu_threads": 2,
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "date": date.today().isoformat(), "steps": args.steps, "overlap_px": args.overlap, "tile_px": 128}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=1) + "\n")

    lines = ["| size | fusion | jitter | global context | seam ratio | spectral peak | drift (÷ std) |"
             " consensus error | wall time |", "|---|---|---|---|---|---|---|---|---|"]
    for size in args.sizes:
        for fusion in args.fusions:
            for variant in args.variants:
                sel = [r for r in rows if (r["size"], r["fusion"], r["variant"]) == (size, fusion, variant)]
                if not sel:
                    continue
                lines.append(
                    f"| {size}² | {fusion} | {'yes' if 'jitter' in variant else 'no'} | "
                    f"{'0.5' if 'context' in variant else 'off'} | {fmt([r['seam_ratio'] for r in sel])} | "
                    f"{fmt([r['spectral_peak'] for r in sel])} | {fmt([r['drift_rel'] for r in sel], 3)} | "
                    f"{fmt([r['consensus'] for r in sel], 4)} | {fmt([r['seconds'] for r in sel], 1)} s |")
    table = "\n".join(lines)
    out.with_suffix(".md").write_text(f"<!-- {json.dumps(meta)} -->\n{table}\n")
    print(table)

    images = ROOT / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    contact_sheet({k: Image.fromarray(shaded_relief(v)) for k, v in pictures.items()}).save(
        images / "quality-sheet.jpg", quality=85, optimize=True)


def contact_sheet(pictures: dict[tuple[str, str], Image.Image]) -> Image.Image:
    """One labelled grid: a row per fusion mode, a column per variant."""
    from PIL import ImageDraw

    fusions = [f for f in FUSIONS if any(k[0] == f for k in pictures)]
    variants = [v for v in VARIANTS if any(k[1] == v for k in pictures)]
    size = next(iter(pictures.values())).size[0]
    pad, label_w, label_h = 6, 90, 18
    sheet = Image.new("RGB", (label_w + len(variants) * (size + pad), label_h + len(fusions) * (size + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, v in enumerate(variants):
        draw.text((label_w + c * (size + pad) + 4, 3), v, fill="black")
    for r, f in enumerate(fusions):
        draw.text((4, label_h + r * (size + pad) + size // 2), f, fill="black")
        for c, v in enumerate(variants):
            if (f, v) in pictures:
                sheet.paste(pictures[(f, v)], (label_w + c * (size + pad), label_h + r * (size + pad)))
    return sheet


if __name__ == "__main__":
    main()
