"""Compositions on the built-in terrain model: regional prompts, upscaling, seamless canvases.

    python benchmarks/bench_compositions.py regions   # -> benchmarks/results/compositions-regions.json
    python benchmarks/bench_compositions.py upscale --scale 4   # -> benchmarks/results/compositions-upscale-x4.json
    python benchmarks/bench_compositions.py wrap      # -> benchmarks/results/compositions-wrap.json
    python benchmarks/bench_compositions.py refine    # -> benchmarks/results/compositions-refine.json
    python benchmarks/bench_compositions.py restyle --strength 0.8 --anchor 8   # -> ...-restyle-s0.8-a8.json
    python benchmarks/bench_compositions.py ... --seeds 1 2 3 --pictures docs/images

- **regions**: 512², background difficulty 10, a region over the right half with difficulty 90
  (feather 64 px). Each half's roughness (mean |∇| of the heights, outside a band of 64 px on either
  side of the border) against a single-difficulty run of that value with the same seed; the seam
  across the region border (the seam metric on the line x = 256, as if two tiles met there).
- **upscale** (``--scale 2|4``, ``--anchor 2|0``): a 256² terrain (seed s) upscaled in ×2 passes at
  the given strength. Shapes kept: the result box-downsampled (and, as a check the anchor does not
  act on, Lanczos-downsampled) to 256² against the source, PSNR over the source's own height range
  (peak = its max − min) and on the 16-bit heights (peak 65535), and the correlation. Detail
  added: the share of spectral energy above a quarter of the Nyquist frequency, against the same
  source upscaled bicubically. The seam ratio of the last pass over its tiles.
- **wrap**: 512² with ``--wrap xy`` and without; the output tiled 2×2 and the seam metric on the
  centre cross (the lines where copies meet).
- **refine** (``--feather``, ``--strength``): a 256² terrain (seed s, 8 steps) refined in the rectangle
  [64, 64, 192, 192] (seed s + 100, same prompt and steps). Outside the feathered mask the output must
  equal the source (counted: pixels that differ there); the seam across the selection's border (the
  seam metric on the rectangle's four edge lines, the picture cut 3×3 by them), next to the same metric
  on the source itself (what the lines show with no refine at all). Cost: the tile evaluations the refine
  ran (counted from its events) against the whole picture's plan at the same settings; and the same
  refine on a 1024² picture (the source upscaled bicubically), where the whole picture is not run,
  only planned; and the plans of a 512² selection in an 8192² picture.

- **restyle** (``--strength``, ``--anchor``): a 256² terrain at difficulty 10 (smooth, seed s) re-drawn
  at difficulty 90 (rugged, seed s + 100), kept at its size. The style: roughness (mean |∇|) of the
  result against the source's and a fresh difficulty-90 terrain's of the same seed (1 = as rugged as
  the model makes it); the composition: the correlation with the source after both are shrunk 8×
  (box) and 16× (Lanczos, which the anchor does not use); the seam ratio over the tiles.

Times are wall seconds of ``generate`` with the model loaded once (CPU; the machine's cores are
shared with whatever else runs).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paradiff_gui import __version__  # noqa: E402
from paradiff_gui.engine.analysis.relief import shaded_relief  # noqa: E402
from paradiff_gui.engine.analysis.seams import analyse, tiled_score  # noqa: E402
from paradiff_gui.engine.api.requests import request_for  # noqa: E402
from paradiff_gui.engine.api.upscale import upscale_passes  # noqa: E402
from paradiff_gui.engine.io.metadata import save_png  # noqa: E402
from paradiff_gui.engine.models.registry import load_denoiser  # noqa: E402
from paradiff_gui.engine.sampling.sampler import generate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def roughness(h: np.ndarray) -> float:
    a = h.astype(np.float64)
    return float((np.abs(np.diff(a, axis=0))[:, :-1] + np.abs(np.diff(a, axis=1))[:-1]).mean())


def hf_share(h: np.ndarray) -> float:
    """Share of the (mean-removed) spectral energy above a quarter of Nyquist."""
    a = h.astype(np.float64) - h.mean()
    f = np.abs(np.fft.fft2(a)) ** 2
    fy = np.abs(np.fft.fftfreq(a.shape[0]))[:, None]
    fx = np.abs(np.fft.fftfreq(a.shape[1]))[None, :]
    high = np.maximum(fy, fx) > 0.125
    return float(f[high].sum() / f.sum())


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 65535.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


def box_down(h: np.ndarray, k: int) -> np.ndarray:
    H, W = h.shape
    return h.astype(np.float64).reshape(H // k, k, W // k, k).mean(axis=(1, 3))


def save_relief(path: Path, heights: np.ndarray, outline=None) -> None:
    """``heights`` as shaded relief; ``outline`` (x0, y0, x1, y1): a selection drawn as a dashed box."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(shaded_relief(heights))
    if outline is not None:
        from PIL import ImageDraw

        draw, (x0, y0, x1, y1) = ImageDraw.Draw(im), outline
        for a, b in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
            n = max(abs(b[0] - a[0]), abs(b[1] - a[1])) // 8
            for k in range(0, n, 2):  # dashes of 8 px
                p = [(a[0] + (b[0] - a[0]) * j / n, a[1] + (b[1] - a[1]) * j / n) for j in (k, k + 1)]
                draw.line(p, fill=(255, 255, 255), width=2)
    im.save(path)


def run(den, **fields):
    req = request_for("builtin:terrain", device="cpu", **fields)
    started = time.perf_counter()
    res = generate(req, denoiser=den, previews=False)
    return res, time.perf_counter() - started


def bench_regions(den, seeds, pictures, feather=64):
    rows = []
    band = 64
    for seed in seeds:
        res, secs = run(den, width=512, height=512, seed=seed, extra={"terrain_difficulty": 10},
                        regions=[{"rect": [256, 0, 512, 512], "extra": {"terrain_difficulty": 90},
                                  "feather": feather}])
        low, low_secs = run(den, width=512, height=512, seed=seed, extra={"terrain_difficulty": 10})
        high, _ = run(den, width=512, height=512, seed=seed, extra={"terrain_difficulty": 90})
        img = res.image
        left, right = img[:, : 256 - band], img[:, 256 + band :]
        r = {
            "seed": seed, "seconds": round(secs, 1), "single_seconds": round(low_secs, 1),
            "left_roughness": roughness(left), "left_single_10": roughness(low.image[:, : 256 - band]),
            "right_roughness": roughness(right), "right_single_90": roughness(high.image[:, 256 + band :]),
            "border_seam_ratio": analyse(img, [(0, 0, 256, 512), (256, 0, 512, 512)]).seam_ratio,
            "tiles_seam_ratio": analyse(img, [res.plan.image_rect(t) for t in res.plan.tiles]).seam_ratio,
        }
        r["left_vs_single"] = r["left_roughness"] / r["left_single_10"] - 1
        r["right_vs_single"] = r["right_roughness"] / r["right_single_90"] - 1
        rows.append(r)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
        if pictures and seed == seeds[0]:
            save_relief(pictures / "compose-regions.png", img)
    return {"setup": "512², 8 steps, lcm, overlap 64; background difficulty 10, region [256,0,512,512] difficulty 90, "
                     f"feather {feather}; roughness outside a 64-px band either side of x=256", "feather": feather,
            "rows": rows, "summary": _summary(rows, ["left_vs_single", "right_vs_single", "border_seam_ratio",
                                                     "tiles_seam_ratio", "seconds", "single_seconds"])}


def bench_upscale(den, seeds, pictures, strength, scale=4, anchor=None):
    rows = []
    side = 256 * scale
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            src, _ = run(den, width=256, height=256, seed=seed)
            path = Path(tmp) / f"src-{seed}.png"
            save_png(path, src.image, src.request, src.plan, src.info)
            started = time.perf_counter()
            out = None
            for step in upscale_passes(path, scale, strength=strength, anchor=anchor,
                                       base=src.request.replace(device="cpu")):
                out = generate(step.request, denoiser=den, previews=False)
                save_png(step.output, out.image, out.request, out.plan, out.info)
            secs = time.perf_counter() - started
            big = out.image
            source = src.image.astype(np.float64)
            spread = float(source.max() - source.min())
            bicubic = np.asarray(Image.fromarray(src.image.astype(np.float32), mode="F").resize(
                (side, side), Image.Resampling.BICUBIC))
            down = box_down(big, scale)
            # An operator the anchor does not use: Lanczos (the anchor makes the box mean exact).
            lanczos = np.asarray(Image.fromarray(big.astype(np.float32), mode="F").resize(
                (256, 256), Image.Resampling.LANCZOS), dtype=np.float64)
            r = {
                "seed": seed, "seconds": round(secs, 1), "anchor": out.request.anchor,
                # PSNR over the source's own height range (peak = its max - min), not the 16-bit range.
                "psnr_range_db": psnr(down, source, spread),
                "psnr_range_lanczos_db": psnr(lanczos, source, spread),
                "psnr_bicubic_range_db": psnr(box_down(bicubic, scale), source, spread),
                "psnr_down_db": psnr(down, source),
                # What PSNR on 16-bit heights gives for free: these terrains span ~1 % of the range,
                # so a flat picture at the source's mean height already scores about 40 dB.
                "psnr_flat_mean_db": psnr(np.full_like(down, source.mean()), source),
                "corr_down": float(np.corrcoef(down.ravel(), source.ravel())[0, 1]),
                "corr_lanczos": float(np.corrcoef(lanczos.ravel(), source.ravel())[0, 1]),
                "rms_down_over_std": float(np.sqrt(np.mean((down - source) ** 2)) / source.std()),
                "hf_share": hf_share(big), "hf_share_bicubic": hf_share(bicubic),
                "seam_ratio": analyse(big, [out.plan.image_rect(t) for t in out.plan.tiles]).seam_ratio,
            }
            r["hf_vs_bicubic"] = r["hf_share"] / r["hf_share_bicubic"]
            rows.append(r)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
            if pictures and seed == seeds[0]:
                save_relief(pictures / "compose-upscale-source.png", np.asarray(
                    Image.fromarray(src.image).resize((side, side), Image.Resampling.NEAREST)))
                save_relief(pictures / f"compose-upscale-x{scale}.png", big)
    return {"setup": f"256² source (8 steps), x{scale} in x2 passes at strength {strength}, anchor "
                     f"{rows[0]['anchor']}; PSNR of the {scale}x box-downsampled (and Lanczos-downsampled) result vs "
                     "the source over the source's own height range; high-frequency share above Nyquist/4",
            "strength": strength, "scale": scale, "rows": rows,
            "summary": _summary(rows, ["psnr_range_db", "psnr_range_lanczos_db", "psnr_bicubic_range_db",
                                       "psnr_down_db", "psnr_flat_mean_db", "corr_down", "corr_lanczos",
                                       "rms_down_over_std", "hf_share", "hf_share_bicubic", "hf_vs_bicubic",
                                       "seam_ratio", "seconds"])}


def bench_wrap(den, seeds, pictures):
    rows = []
    for seed in seeds:
        for wrap in ("xy", "none"):
            res, secs = run(den, width=512, height=512, seed=seed, wrap=wrap)
            r = {"seed": seed, "wrap": wrap, "seconds": round(secs, 1),
                 "cross_seam_ratio": tiled_score(res.image).seam_ratio,
                 "tiles_seam_ratio": analyse(res.image, [res.plan.image_rect(t) for t in res.plan.tiles]).seam_ratio}
            rows.append(r)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
            if pictures and seed == seeds[0] and wrap == "xy":
                save_relief(pictures / "compose-wrap-2x2.png", np.tile(res.image, (2, 2)))
    out = {"setup": "512², 8 steps, overlap 64; the output tiled 2x2, seam metric on the centre cross", "rows": rows}
    for wrap in ("xy", "none"):
        out[f"summary_{wrap}"] = _summary([r for r in rows if r["wrap"] == wrap],
                                          ["cross_seam_ratio", "tiles_seam_ratio", "seconds"])
    return out


def _border_rects(rect, w, h):
    """The picture cut 3×3 by the rectangle's edge lines: analyse() then measures exactly those lines."""
    x0, y0, x1, y1 = rect
    return [(a, b, c, d) for b, d in ((0, y0), (y0, y1), (y1, h)) for a, c in ((0, x0), (x0, x1), (x1, w))]


def bench_refine(den, seeds, pictures, feather, strength):
    from paradiff_gui.engine.api.refine import plan_tiles, refine_request, run_refinement, whole_request
    from paradiff_gui.engine.core.events import BatchStarted
    from paradiff_gui.engine.io.export import open_image

    rect = (64, 64, 192, 192)
    rows = []

    def counting(evals):  # tile evaluations, from the run's own events
        return lambda e: evals.append(len(e.tiles)) if isinstance(e, BatchStarted) else None

    tmp = Path(tempfile.mkdtemp(prefix="paradiff-refine-"))
    for seed in seeds:
        # The sources are kept between runs (a 256² source takes minutes on a shared CPU).
        path = Path(tempfile.gettempdir()) / f"paradiff-refine-source-{seed}.png"
        if path.is_file():
            src, src_secs = argparse.Namespace(image=open_image(path)), None
        else:
            src, src_secs = run(den, width=256, height=256, seed=seed, steps=8)
            save_png(path, src.image, src.request, src.plan, src.info)
        job = refine_request(path, rect=rect, feather=feather, strength=strength, seed=seed + 100,
                             output=tmp / f"refined-{seed}.png")
        evals = []
        started = time.perf_counter()
        res = run_refinement(job, counting(evals), denoiser=den)
        secs = time.perf_counter() - started
        out = open_image(job.output)
        x0, y0, x1, y1 = job.box
        outside = np.ones(out.shape, bool)
        outside[y0:y1, x0:x1] = job.mask <= 0
        whole = plan_tiles(whole_request(job), den.scale, den.native_tile)
        r = {"seed": seed, "seconds": round(secs, 1), "source_seconds": src_secs and round(src_secs, 1),
             "box": list(job.box), "outside_changed_px": int((out != src.image)[outside].sum()),
             "inside_mean_abs_change": float(np.abs(out.astype(float) - src.image)[~outside].mean()),
             "border_seam_ratio": analyse(out, _border_rects(rect, 256, 256)).seam_ratio,
             "source_border_seam_ratio": analyse(src.image, _border_rects(rect, 256, 256)).seam_ratio,
             "tile_evaluations": sum(evals), "steps": sum(evals) // res.info["tiles"],
             "tiles": res.info["tiles"], "whole_tiles": whole}
        rows.append(r)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
        if pictures and seed == seeds[0]:
            save_relief(pictures / "refine-source.png", src.image, outline=rect)
            save_relief(pictures / "refine-result.png", out, outline=rect)
    # The same selection in a 1024² picture: only the sub-canvas runs.
    big = tmp / "big.png"
    Image.fromarray(np.asarray(Image.fromarray(src.image.astype(np.float32), mode="F").resize(
        (1024, 1024), Image.Resampling.BICUBIC)).clip(0, 65535).astype(np.uint16)).save(big)
    job = refine_request(big, rect=(448, 448, 576, 576), feather=feather, strength=strength, seed=7, steps=8)
    evals = []
    started = time.perf_counter()
    run_refinement(job, counting(evals), denoiser=den)
    large = {"picture": [1024, 1024], "rect": [448, 448, 576, 576], "box": list(job.box),
             "seconds": round(time.perf_counter() - started, 1), "tile_evaluations": sum(evals),
             "tiles": plan_tiles(job.request, den.scale, den.native_tile),
             "whole_tiles": plan_tiles(whole_request(job), den.scale, den.native_tile)}
    large["cost_share"] = large["tiles"] / large["whole_tiles"]
    print(json.dumps(large), flush=True)
    # 8192² with a 512² selection: the plans only (the whole picture would take hours on a CPU).
    plans = {}
    huge = tmp / "huge.png"
    Image.fromarray(np.zeros((8192, 8192), np.uint16)).save(huge)
    for name, tile, scale in (("builtin:terrain (128-px tiles)", None, 1), ("SD-like (512-px tiles, VAE x8)", 512, 8)):
        base = request_for("builtin:terrain", device="cpu", tile=tile)
        job = refine_request(huge, rect=(4096, 4096, 4608, 4608), feather=feather, base=base)
        n_sub = plan_tiles(job.request, scale, tile or den.native_tile)
        n_full = plan_tiles(whole_request(job), scale, tile or den.native_tile)
        plans[name] = {"box": list(job.box), "tiles": n_sub, "whole_tiles": n_full, "cost_share": n_sub / n_full}
    print(json.dumps(plans), flush=True)
    return {"setup": f"256² source (8 steps, lcm), rect {list(rect)}, feather {feather}, strength {strength}, "
                     "refine seed = source seed + 100", "feather": feather, "strength": strength, "rows": rows,
            "large": large, "plans_8192": plans,
            "summary": _summary(rows, ["border_seam_ratio", "source_border_seam_ratio", "outside_changed_px",
                                       "inside_mean_abs_change", "seconds"])}


def bench_restyle(den, seeds, pictures, strength, anchor):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            src, _ = run(den, width=256, height=256, seed=seed, extra={"terrain_difficulty": 10})
            path = Path(tmp) / f"smooth-{seed}.png"
            save_png(path, src.image, src.request, src.plan, src.info)
            out, secs = run(den, width=256, height=256, seed=seed + 100, extra={"terrain_difficulty": 90},
                            init_image=str(path), strength=strength, anchor=anchor)
            fresh, _ = run(den, width=256, height=256, seed=seed + 100, extra={"terrain_difficulty": 90})
            source, big = src.image.astype(np.float64), out.image.astype(np.float64)

            def lanczos(a, k=16):
                return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(
                    (a.shape[1] // k, a.shape[0] // k), Image.Resampling.LANCZOS), dtype=np.float64)

            r = {"seed": seed, "seconds": round(secs, 1),
                 "roughness_source": roughness(source), "roughness_result": roughness(big),
                 "roughness_fresh_90": roughness(fresh.image),
                 "corr_box8": float(np.corrcoef(box_down(big, 8).ravel(), box_down(source, 8).ravel())[0, 1]),
                 "corr_lanczos16": float(np.corrcoef(lanczos(big).ravel(), lanczos(source).ravel())[0, 1]),
                 "corr_fresh_box8": float(np.corrcoef(box_down(fresh.image, 8).ravel(),
                                                      box_down(source, 8).ravel())[0, 1]),
                 "seam_ratio": analyse(out.image, [out.plan.image_rect(t) for t in out.plan.tiles]).seam_ratio}
            r["style_share"] = (r["roughness_result"] - r["roughness_source"]) / (
                r["roughness_fresh_90"] - r["roughness_source"])
            rows.append(r)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
            if pictures and seed == seeds[0]:
                save_relief(pictures / "restyle-source.png", src.image)
                save_relief(pictures / "restyle-result.png", out.image)
    return {"setup": f"256² terrain at difficulty 10 (8 steps) re-drawn at difficulty 90, strength {strength}, "
                     f"anchor {anchor}; style share = (roughness - source's) / (fresh difficulty 90's - source's); "
                     "composition = correlation with the source shrunk 8x (box) / 16x (Lanczos)",
            "strength": strength, "anchor": anchor, "rows": rows,
            "summary": _summary(rows, ["style_share", "roughness_source", "roughness_result", "roughness_fresh_90",
                                       "corr_box8", "corr_lanczos16", "corr_fresh_box8", "seam_ratio", "seconds"])}


def _summary(rows, keys):
    out = {}
    for k in keys:
        vals = [r[k] for r in rows]
        out[k] = {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("regions", "upscale", "wrap", "refine", "restyle"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--strength", type=float, default=None)
    ap.add_argument("--scale", type=int, choices=(2, 4, 8), default=4, help="upscale: the factor")
    ap.add_argument("--anchor", type=int, choices=(0, 2, 4, 8, 16, 32, 64), default=None,
                    help="upscale: 2 (faithful, the default) or 0; restyle: N (default 0)")
    ap.add_argument("--feather", type=int, default=None,
                    help="regions: the region's feather (px, default 64); refine: the selection's (default 64)")
    ap.add_argument("--pictures", type=Path, default=None, help="write shaded-relief pictures here")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    den = load_denoiser(request_for("builtin:terrain", device="cpu"), torch.device("cpu"), torch.float32)
    if args.what == "regions":
        data = bench_regions(den, args.seeds, args.pictures, args.feather or 64)
    elif args.what == "refine":
        data = bench_refine(den, args.seeds, args.pictures, 64 if args.feather is None else args.feather,
                            args.strength or 0.6)
    elif args.what == "restyle":
        data = bench_restyle(den, args.seeds, args.pictures, args.strength or 0.8, args.anchor or 0)
    elif args.what == "upscale":
        from paradiff_gui.engine.api.upscale import DEFAULT_UPSCALE_STRENGTH

        data = bench_upscale(den, args.seeds, args.pictures, args.strength or DEFAULT_UPSCALE_STRENGTH, args.scale,
                             args.anchor)
    else:
        data = bench_wrap(den, args.seeds, args.pictures)
    data.update(command=" ".join(["python benchmarks/bench_compositions.py", *sys.argv[1:]]),
                version=__version__, torch=torch.__version__, machine=platform.processor() or platform.machine(),
                cpu_threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%d"))
    name = args.what
    if args.what == "refine":
        name = f"refine-f{data['feather']}-s{data['strength']}"
    if args.what == "restyle":
        name = f"restyle-s{data['strength']}-a{data['anchor']}"
    if args.what == "upscale":
        name = f"upscale-x{args.scale}" + ("-anchor0" if args.anchor == 0 else "") \
            + (f"-{args.strength}" if args.strength else "")
    out = args.out or RESULTS / f"compositions-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
