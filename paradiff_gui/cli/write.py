"""One request generated and its picture written: the part of ``generate`` that a lone run, a
torchrun rank and a member of a ``--devices`` group share (Ctrl-C, the relief, the rescue copy)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine.core import request as rq
from .console import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_MODEL, EXIT_OK, Progress, wrote

if TYPE_CHECKING:
    from ..engine.runtime import distributed


def generate_and_write(args: argparse.Namespace, request: rq.GenerationRequest, out: Path,
                       shard: distributed.Shard | None, report: Any = None) -> int:
    """Generate and write ``out``. ``report(code, message)``: a member of a ``--devices`` group hands
    its failure to the launcher, which prints one line for the group."""
    from ..engine import Cancelled, CancelToken, ModelUnavailable, generate
    from ..engine.io.export import save_image
    from ..engine.io.metadata import save_png

    cancel = CancelToken()
    leader = shard is None or shard.leader

    def say(message: str) -> None:  # one voice for the whole group
        if leader:
            print(message, file=sys.stderr)

    def fail(code: int, message: str) -> int:  # in a --devices group the launcher says it, once
        if report is not None:
            report(code, message)
        else:
            say(f"paradiff: {message}")
        return code

    def on_sigint(_sig: int, _frame: Any) -> None:
        # First Ctrl-C: stop cooperatively within one tile batch. Second: stop now.
        if cancel.cancelled:
            raise KeyboardInterrupt
        cancel.cancel()
        say("\ncancelling… (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    sink = Progress(args.quiet)
    try:
        result = generate(request, sink, cancel)
    except (Cancelled, KeyboardInterrupt):
        sink.progress.stop()
        return fail(EXIT_INTERRUPTED, "interrupted; nothing was written")
    except rq.RequestError as exc:
        return fail(EXIT_INVALID, f"invalid input: {exc}")
    except ModelUnavailable as exc:
        return fail(EXIT_MODEL, f"model unavailable: {exc}")
    finally:
        signal.signal(signal.SIGINT, previous)
    if shard is not None and not shard.leader:
        return EXIT_OK  # rank 0 writes the picture
    if args.relief and result.image.ndim != 2:
        print("paradiff: note: --relief is for heightmaps (single-channel models); not written", file=sys.stderr)
    elif args.relief:
        from PIL import Image

        from ..engine.analysis.relief import shaded_relief
        from ..engine.io.metadata import atomic_write

        relief = Image.fromarray(shaded_relief(result.image))
        atomic_write(args.relief, lambda f: relief.save(f, format="PNG"))
    try:
        save_image(out, result.image, result.request, result.plan, result.info)
    except (OSError, rq.RequestError) as exc:
        # Minutes of work are not lost to a full disk or a read-only folder: keep it elsewhere.
        from ..engine.io.autosave import autosave_path

        rescue = autosave_path(request.seed)
        save_png(rescue, result.image, result.request, result.plan, result.info)
        return fail(EXIT_ERROR, f"could not write {out} ({getattr(exc, 'strerror', None) or exc}); the picture is "
                                f"saved as {rescue}")
    wrote(out, result)
    return EXIT_OK

