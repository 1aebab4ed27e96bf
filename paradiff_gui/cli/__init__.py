"""``paradiff``: the command line over the same engine the GUI uses.

One module per command (``generate``, ``upscale``, ``refine``, ``inspect``, ``models``: its parser
and its ``cmd_*``), over ``engine.api``; ``args`` and ``specs`` hold the flags' shared shapes and
languages, ``console`` what is said on the terminal, ``launch`` the ``--devices`` process group.

Exit codes: 0 done; 2 invalid input (the message names the field and the allowed values);
3 model unavailable; 130 interrupted (Ctrl-C; nothing half-written at ``-o``); 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from .. import __version__
from . import generate, inspect, models, refine, upscale
from .console import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_MODEL, EXIT_OK, Parser
from .generate import cmd_generate, request_from_args
from .inspect import cmd_inspect
from .models import cmd_models
from .refine import cmd_refine
from .specs import lora_args, parse_control_specs, parse_region_spec
from .upscale import cmd_upscale

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_INVALID", "EXIT_MODEL", "EXIT_OK", "build_parser",
           "lora_args", "main", "parse_control_specs", "parse_region_spec", "request_from_args"]

# In the order `paradiff --help` lists them.
_COMMANDS = {"generate": (generate.add_parser, cmd_generate), "upscale": (upscale.add_parser, cmd_upscale),
             "refine": (refine.add_parser, cmd_refine), "models": (models.add_parser, cmd_models),
             "inspect": (inspect.add_parser, cmd_inspect)}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="paradiff", description="Ultra-high-resolution images by synchronized tiled diffusion.")
    p.add_argument("--version", action="version", version=f"paradiff {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add_parser, _ in _COMMANDS.values():
        add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        return _COMMANDS[args.command][1](args)
    except KeyboardInterrupt:
        print("paradiff: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("PARADIFF_DEBUG"):
            raise
        print(f"paradiff: error: {type(exc).__name__}: {exc} (set PARADIFF_DEBUG=1 for details; "
              f"after {time.perf_counter() - started:.1f} s)", file=sys.stderr)
        return EXIT_ERROR
