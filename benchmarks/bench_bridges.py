"""Bridges on the built-in terrain model's real weights: seams, the output's statistics, time.

    python benchmarks/bench_bridges.py                                   # 384², overlap 32, seeds 1-3
    python benchmarks/bench_bridges.py --size 512 --overlaps 0 16 32 64 --seeds 1 2 3 4 5
    python benchmarks/bench_bridges.py --variants off attention-tile norms-window   # chosen variants

A *variant* is a request's ``bridges`` value with the bridge configured as named (norms over the
canvas or a window, attention's reach, logit rescaling): the request values run as the app runs
them, the others set the sampler's configuration (``sampler.config_for``) for the run.

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
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paradiff_gui import __version__  # noqa: E402
from paradiff_gui.engine import generate  # noqa: E402
from paradiff_gui.engine.analysis.seams import analyse  # noqa: E402
from paradiff_gui.engine.api.requests import request_for  # noqa: E402
from paradiff_gui.engine.sampling import sampler  # noqa: E402
from paradiff_gui.engine.sampling.bridges import BridgeConfig, config_for  # noqa: E402

PREV = dict(fresh=False)
# name: (the request's bridges value, the bridge configuration; None = the request's own)
VARIANTS: dict[str, tuple[str, BridgeConfig | None]] = {
    "off": ("off", None),
    "halos": ("halos", None),
    "norms-canvas": ("norms", BridgeConfig(halos=False, norms="canvas", attention=False, **PREV)),
    "norms-window": ("norms", None),  # the request's: a tent one tile wide on each side
    "norms-window2": ("norms", BridgeConfig(halos=False, norms="window", window=2.0, attention=False, **PREV)),
    "attention-canvas": ("attention", BridgeConfig(halos=False, norms="off", reach=None, **PREV)),
    "attention-tile": ("attention", None),  # the request's: whole neighbour tiles
    "attention-tile-rescale": ("attention", BridgeConfig(halos=False, norms="off", reach=128, rescale=True,
                                                         **PREV)),
    "attention-strip32": ("attention", BridgeConfig(halos=False, norms="off", reach=32, **PREV)),
    "attention+norms": ("full", BridgeConfig(halos=False, norms="window", reach=128, **PREV)),
    "attention-strip32+norms": ("full", BridgeConfig(halos=False, norms="window", reach=32, **PREV)),
    "attention+halos": ("full", BridgeConfig(norms="off", reach=128, **PREV)),
    "full": ("full", None),
    # Same-step values (bridge_step same: every tile of a step in one call). "-total" pools raw
    # second moments (the first one-off measurement's statistics); the rest pool within-tile
    # variances, as generation does since issue 24.
    "norms-window-fresh": ("norms", BridgeConfig(halos=False, norms="window", attention=False, pool="total")),
    "norms-canvas-fresh": ("norms", BridgeConfig(halos=False, norms="canvas", attention=False, pool="total")),
    "same-norms": ("norms", None),  # the request's: bridge_step same, window one tile, within-tile variances
    **{f"same-norms-mean{m}": ("norms", BridgeConfig(halos=False, norms="window", attention=False, pool="within",
                                                     mean_share=m)) for m in (0.25, 0.5, 0.75)},
    "same-norms-var0": ("norms", BridgeConfig(halos=False, norms="window", attention=False, pool="within",
                                              var_share=0.0)),
    "same-norms-window0.5": ("norms", BridgeConfig(halos=False, norms="window", window=0.5, attention=False,
                                                   pool="within")),
    **{f"same-norms-deep{f}": ("norms", BridgeConfig(halos=False, norms="window", attention=False, pool="within",
                                                     min_factor=f)) for f in (2, 4, 8)},
    "same-norms-deep4-mean0.5": ("norms", BridgeConfig(halos=False, norms="window", attention=False, pool="within",
                                                       min_factor=4, mean_share=0.5)),
    "same-norms-deep4-var0": ("norms", BridgeConfig(halos=False, norms="window", attention=False, pool="within",
                                                    min_factor=4, var_share=0.0)),
    **{f"same-norms-from{k}": ("norms", BridgeConfig(halos=False, norms="window", attention=False, pool="within",
                                                     first_step=k)) for k in (1, 2, 4)},
    # Previous-step values with within-tile variances (the request's "norms" since issue 24).
    "prev-norms-total": ("norms", BridgeConfig(halos=False, norms="window", attention=False, fresh=False)),
    **{f"prev-norms-mean{m}": ("norms", BridgeConfig(halos=False, norms="window", attention=False, pool="within",
                                                     fresh=False, mean_share=m)) for m in (0.5,)},
}
SAME = {"same-norms"}  # request-run variants with bridge_step same


def spectrum_high_share(image: np.ndarray, cutoff: float = 1 / 16) -> float:
    """The share of the heights' power (mean removed) above ``cutoff`` cycles per px."""
    z = image.astype(np.float64)
    p = np.abs(np.fft.fft2(z - z.mean())) ** 2
    fy, fx = np.fft.fftfreq(z.shape[0])[:, None], np.fft.fftfreq(z.shape[1])[None]
    return float(p[np.hypot(fy, fx) > cutoff].sum() / p.sum())


def interior_gradient(image: np.ndarray, rects: list[tuple[int, int, int, int]], margin: int = 8) -> float:
    """Mean |∇| of the heights inside the tiles (``margin`` px away from every tile edge)."""
    z = image.astype(np.float64)
    gy, gx = np.gradient(z)
    mag = np.hypot(gx, gy)
    inside = np.zeros(z.shape, bool)
    for x0, y0, x1, y1 in rects:
        inside[y0 + margin:y1 - margin, x0 + margin:x1 - margin] = True
    return float(mag[inside].mean())


def sheet(pictures: list[tuple[str, np.ndarray]], width: int = 256) -> Image.Image:
    """The pictures as shaded relief, side by side (two rows when there are many), labelled."""
    from paradiff_gui.engine.analysis.relief import shaded_relief

    cols = -(-len(pictures) // (2 if len(pictures) > 4 else 1))
    rows = -(-len(pictures) // cols)
    pad, label = 6, 16
    out = Image.new("RGB", (cols * (width + pad), rows * (width + label + pad)), "white")
    draw = ImageDraw.Draw(out)
    for i, (name, image) in enumerate(pictures):
        x, y = (i % cols) * (width + pad), (i // cols) * (width + label + pad)
        draw.text((x + 2, y + 2), name, fill="black")
        out.paste(Image.fromarray(shaded_relief(image)).resize((width, width), Image.LANCZOS), (x, y + label))
    return out


def run(size: int, overlap: int, variant: str, seed: int, keep: list | None = None) -> dict:
    bridges, config = VARIANTS[variant]
    fresh = variant in SAME or (config is not None and config.fresh)
    # Same-step values: the generation mode (every tile of a step in one call).
    req = request_for("builtin:terrain", width=size, height=size, seed=seed, overlap=overlap, device="cpu",
                      bridges=bridges, bridge_step="same" if fresh and bridges != "off" else "previous")
    sampler.config_for = (lambda *_: config) if config is not None else config_for
    try:
        started = time.perf_counter()
        res = generate(req, previews=False)
        seconds = time.perf_counter() - started
    finally:
        sampler.config_for = config_for
    rects = [res.plan.image_rect(t) for t in res.plan.tiles]
    if keep is not None:
        keep.append((f"overlap {overlap}, {variant}", res.image))
    return {"overlap": overlap, "variant": variant, "seed": seed, "tiles": len(rects),
            "seam_ratio": round(analyse(res.image, rects).seam_ratio, 4) if len(rects) > 1 else None,
            "height_std": round(float(res.image.std()), 1),
            "interior_gradient": round(interior_gradient(res.image, rects), 2),
            "high_share": round(spectrum_high_share(res.image), 5),
            "seconds": round(seconds, 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--overlaps", type=int, nargs="+", default=[32])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--baseline", type=int, default=64, help="today's default overlap, bridges off")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sheet", type=Path, help="also write the first seed's pictures here, as shaded relief")
    args = ap.parse_args()
    generate(request_for("builtin:terrain", width=128, height=128, steps=1, device="cpu"), previews=False)  # load
    rows = []
    # The model's own outputs: one 128² tile per seed (what it makes without tiling).
    own = [run(128, 0, "off", seed) for seed in args.seeds]
    settings = [(o, b) for o in args.overlaps for b in args.variants]
    pictures: list[tuple[str, np.ndarray]] = []
    if args.baseline not in args.overlaps:
        settings.append((args.baseline, "off"))
    for overlap, bridges in settings:
        for seed in args.seeds:
            rows.append(run(args.size, overlap, bridges, seed, pictures if seed == args.seeds[0] else None))
            print(json.dumps(rows[-1]), flush=True)
    table = []
    for overlap, bridges in settings:
        mine = [r for r in rows if r["overlap"] == overlap and r["variant"] == bridges]
        seams = [r["seam_ratio"] for r in mine]
        table.append({"overlap": overlap, "variant": bridges, "tiles": mine[0]["tiles"],
                      "seam_ratio_sd": round(st.stdev(seams), 3) if len(seams) > 1 else 0.0,
                      **{k: round(st.mean(r[k] for r in mine), 5 if k == "high_share" else 3) for k in
                         ("seam_ratio", "height_std", "interior_gradient", "high_share", "seconds")}})
    reference = {k: round(st.mean(r[k] for r in own), 5) for k in ("height_std", "interior_gradient", "high_share")}
    print(f"the model's own 128² outputs: {reference}")
    print(f"{'overlap':>7} {'variant':>22} {'tiles':>5} {'seam':>6} {'±':>5} {'std':>7} {'|grad|':>7} "
          f"{'hf':>7} {'s':>6}")
    for t in table:
        print(f"{t['overlap']:>7} {t['variant']:>22} {t['tiles']:>5} {t['seam_ratio']:>6.3f} "
              f"{t['seam_ratio_sd']:>5.2f} {t['height_std']:>7.1f} {t['interior_gradient']:>7.2f} "
              f"{t['high_share']:>7.4f} {t['seconds']:>6.1f}")
    if args.sheet:
        sheet(pictures).save(args.sheet, quality=85, optimize=True)
    out = args.out or ROOT / "benchmarks" / "results" / f"bridges-{args.size}.json"
    out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "paradiff": __version__, "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
        "timed": "generate() from request to image, model already loaded, previews off",
        "size": args.size, "seeds": args.seeds, "model_own_128": reference, "table": table, "runs": rows,
        "variants": {k: {"bridges": b, "config": None if c is None else c.__dict__}
                     for k, (b, c) in VARIANTS.items()}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
