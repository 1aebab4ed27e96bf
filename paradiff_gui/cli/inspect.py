"""``paradiff inspect``: the seam scores of a picture, its tile plan from its recipe or the flags."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..engine.core import request as rq
from .args import int_arg, pair_arg
from .console import EXIT_OK, invalid

SEAM_ROWS = 8  # worst seams shown without --json


def add_parser(sub: Any) -> None:
    i = sub.add_parser("inspect", help="score the seams of an image",
                       description="Seam scores of an image: its tile plan comes from Paradiff metadata, or "
                                   "from --grid/--tile and --overlap for other images (image px).")
    i.add_argument("image")
    i.add_argument("--json", action="store_true", help="one JSON object on stdout")
    plan = i.add_mutually_exclusive_group()
    plan.add_argument("--grid", type=pair_arg(rq.parse_grid), metavar="RxC")
    plan.add_argument("--tile", type=int_arg(8, rq.MAX_TILE), metavar="PX")
    i.add_argument("--overlap", type=int_arg(0, rq.MAX_OVERLAP), metavar="PX", default=None)


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..engine.api.inspect import open_picture, score

    try:
        # Our own pixel limit (1 gigapixel), not Pillow's 89 MP: Paradiff's 16K outputs are 268 MP.
        picture = open_picture(args.image, grid=args.grid, tile=args.tile, overlap=args.overlap)
        if picture.plan is None:
            raise rq.RequestError("plan", "the image has no Paradiff metadata")
    except rq.RequestError as exc:
        hint = "; give the plan with --grid RxC or --tile PX (and --overlap PX)" if exc.field == "plan" else ""
        return invalid(f"{exc}{hint}")
    (w, h), tiles = picture.size, picture.tiles
    source = {"metadata": "Paradiff metadata", "given": "command line"}[picture.source]
    report = score(picture)
    if args.json:
        print(json.dumps({"image": str(args.image), "size": [w, h], "plan_from": source, **report.to_dict()}))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{args.image}[/] {w}x{h}, {len(tiles)} tiles (plan from {source})")
    console.print(f"seam ratio {report.seam_ratio:.3f} (1.0 = no trace of the grid), spectral peak "
                  f"{report.spectral_peak:.2f}, mean drift {report.drift:.4g}")
    worst = sorted(report.seams, key=lambda s: -s.ratio)
    table = Table("seam", "kind", "at px", "ratio", "drift ÷ std", title="Seams, worst first")
    for s in worst[:SEAM_ROWS]:
        table.add_row(s.orientation, s.kind, str(s.position), f"{s.ratio:.3f}", f"{s.drift_rel:.3f}")
    console.print(table)
    if len(worst) > SEAM_ROWS:
        console.print(f"({len(worst) - SEAM_ROWS} more seams; --json lists them all)")
    return EXIT_OK
