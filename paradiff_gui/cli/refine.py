"""``paradiff refine``: ``engine.api.refine``'s sub-canvas, generated, laid over the picture and
written to a new file."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

from ..engine.core import request as rq
from .args import RECIPE_FLAGS, generation_flags, recipe_fields, request_over_picture
from .console import EXIT_INTERRUPTED, EXIT_OK, Progress, fail, invalid, say, unavailable, wrote


def add_parser(sub: Any) -> None:
    f = sub.add_parser("refine", help="re-draw a selection of a picture, keeping the rest bit for bit",
                       description="Refine a rectangle (--rect) or a masked part (--mask, white = refine) of IMAGE: "
                                   "only the selection's sub-canvas runs (image-to-image at --strength, the picture "
                                   "around it kept at every step), then it is laid over IMAGE with a --feather px "
                                   "soft border; outside that the pixels are IMAGE's own. Writes a new file "
                                   "(default IMAGE-refined.png), never IMAGE. The generation settings come from "
                                   "IMAGE's recipe when it has one; flags override them. --replay REFINED.png runs "
                                   "a refine again from its recipe.")
    f.add_argument("image", nargs="?", help="the picture to refine (not with --replay)")
    sel = f.add_mutually_exclusive_group()
    sel.add_argument("--rect", metavar="X0,Y0,X1,Y1", help="the selection, image px (X1, Y1 exclusive)")
    sel.add_argument("--mask", metavar="M.png", help="the selection: a grayscale image, white = refine (resized to "
                                                     "the picture when its size differs)")
    sel.add_argument("--replay", metavar="REFINED.png", help="run the refine that made REFINED.png again")
    f.add_argument("--feather", type=int, metavar="PX",
                   help=f"the soft border's width, px (default {rq.DEFAULT_REFINE_FEATHER})")
    f.add_argument("--strength", type=float, metavar="0..1",
                   help=f"how much of the selection is re-drawn, above 0 and at most 1 (default "
                        f"{rq.DEFAULT_REFINE_STRENGTH})")
    f.add_argument("-o", "--output", metavar="OUT.png",
                   help="default IMAGE-refined.png (with --replay: REFINED-replay.png)")
    generation_flags(f, *RECIPE_FLAGS, "lora_specs", "quiet", helps={
        "host_memory": "the most host memory the run may take (default: $PARADIFF_HOST_MEMORY)"})


def cmd_refine(args: argparse.Namespace) -> int:
    from ..engine import Cancelled, CancelToken, ModelUnavailable
    from ..engine.api.refine import refine_from_recipe, refine_request, run_refinement
    from ..engine.io import partials

    partials.sweep()
    fields = recipe_fields(args)
    try:
        if args.replay:
            if args.image is not None:
                raise rq.RequestError("image", "--replay takes the picture from REFINED.png's recipe: give no IMAGE")
            replay = Path(args.replay)
            out = args.output or replay.with_name(f"{replay.stem}-replay{replay.suffix}")
            job = refine_from_recipe(replay, output=out, **fields)
        else:
            if args.image is None:
                raise rq.RequestError("image", "give the picture to refine (or --replay REFINED.png)")
            if args.rect is None and args.mask is None:
                raise rq.RequestError("rect", "give the selection: --rect X0,Y0,X1,Y1 (image px) or --mask M.png")
            job = refine_request(args.image, rect=args.rect, mask=args.mask, feather=args.feather,
                                 strength=args.strength, base=request_over_picture(args, fields), output=args.output)
    except rq.RequestError as exc:
        return invalid(exc)
    (x0, y0, x1, y1), (w, h) = job.box, job.record["source_size"]
    say(f"refine: sub-canvas {x1 - x0}x{y1 - y0} at {x0},{y0} of the {w}x{h} picture")
    cancel = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.cancel())
    sink = Progress(args.quiet)  # (it says the notices, quiet or not)
    try:
        result = run_refinement(job, sink, cancel)
    except Cancelled:
        sink.progress.stop()
        return fail(EXIT_INTERRUPTED, "interrupted; nothing was written")
    except rq.RequestError as exc:
        return invalid(exc)
    except ModelUnavailable as exc:
        return unavailable(exc)
    finally:
        signal.signal(signal.SIGINT, previous)
    wrote(job.output, result)
    return EXIT_OK
