"""``paradiff upscale``: the x2 passes of ``engine.api.upscale``, each generated and written in turn."""

from __future__ import annotations

import argparse
import dataclasses
import signal
from typing import Any

from ..engine.core import request as rq
from .args import RECIPE_FLAGS, control_args, float_arg, generation_flags, recipe_fields, request_over_picture
from .console import EXIT_INTERRUPTED, EXIT_OK, Progress, fail, invalid, say, unavailable, wrote
from .specs import parse_control_specs


def add_parser(sub: Any) -> None:
    u = sub.add_parser("upscale", help="upscale a picture with new detail (x2 passes of image-to-image)",
                       description="Upscale IMAGE by 2, 4 or 8 in x2 passes: resize, noise to --strength, "
                                   "synchronized tiled denoise. Each pass's picture is kept (NAME-x2.png, NAME-x4.png, "
                                   "...). The generation settings come from IMAGE's recipe when it has one; flags "
                                   "override them.")
    u.add_argument("image")
    u.add_argument("--scale", type=int, choices=(2, 4, 8), required=True)
    u.add_argument("--strength", type=float_arg(0.0, 1.0), metavar="0..1",
                   help="how much each pass re-draws, above 0 and at most 1 (default 0.5)")
    u.add_argument("--anchor", type=int, choices=(0, 2), metavar="2|0",
                   help="2 (the default): each pass shrunk 2x equals its source, so the result shrunk SCALE times "
                        "is IMAGE; 0: the model may move the large shapes too")
    u.add_argument("-o", "--output", metavar="OUT.png", help="the last pass's file (default IMAGE-xSCALE.png)")
    generation_flags(u, *RECIPE_FLAGS, helps={
        "host_memory": "the most host memory each pass may take (default: $PARADIFF_HOST_MEMORY)"})
    control_args(u)
    generation_flags(u, "lora_specs", "quiet")


def cmd_upscale(args: argparse.Namespace) -> int:
    from ..engine import Cancelled, CancelToken, ModelUnavailable, generate
    from ..engine.api.upscale import upscale_passes
    from ..engine.io import partials
    from ..engine.io.export import save_image

    partials.sweep()
    fields = recipe_fields(args)
    try:
        base = request_over_picture(args, fields)
        passes = upscale_passes(args.image, args.scale, strength=args.strength, anchor=args.anchor, base=base,
                                output=args.output)
        if args.control_specs:  # each pass's init image is the previous pass: a tile ControlNet follows it
            controls = parse_control_specs(args.control_specs, args.control_pre, args.control_mode)
            passes = [dataclasses.replace(p, request=p.request.replace(controls=controls)) for p in passes]
    except rq.RequestError as exc:
        return invalid(exc)
    cancel = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.cancel())
    try:
        for k, step in enumerate(passes, 1):
            say(f"pass {k} of {len(passes)}: x{step.factor}, {step.request.width}x{step.request.height}")
            sink = Progress(args.quiet)
            try:
                result = generate(step.request, sink, cancel)
            except Cancelled:
                sink.progress.stop()
                return fail(EXIT_INTERRUPTED, f"interrupted; the passes before pass {k} are written")
            except rq.RequestError as exc:
                return invalid(exc)
            except ModelUnavailable as exc:
                return unavailable(exc)
            save_image(step.output, result.image, result.request, result.plan, result.info)
            wrote(step.output, result)
    finally:
        signal.signal(signal.SIGINT, previous)
    return EXIT_OK
