"""The flags' shapes and types, shared by the commands: numbers refused with their range, sizes and
grids, ControlNet/region/LoRA specs, and the one group of generation flags (model, prompt, steps,
seed, …) that ``generate``, ``upscale`` and ``refine`` take alike.

Building a parser imports no torch: only the request's plain data (``engine.core``)."""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

from ..engine.core import request as rq  # plain data: no torch, so --help and --version stay fast
from ..engine.core.lora import MAX_LORA_WEIGHT, MIN_LORA_WEIGHT
from .specs import lora_args

LORA_HELP = (f"apply a LoRA (.safetensors, Kohya/A1111 or diffusers format) with this weight (default 1, from "
             f"{MIN_LORA_WEIGHT:g} to {MAX_LORA_WEIGHT:g}); repeatable; replaces a replayed request's LoRAs")


def number_arg(cast: type, lo: float, hi: float):
    """argparse type: a number, with the allowed range in the message when it is not one."""
    what = "a whole number" if cast is int else "a number"

    def parse(text: str):
        try:
            return cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what} from {lo} to {hi}, got {text!r}") from None

    return parse


def int_arg(lo: int, hi: int):
    return number_arg(int, lo, hi)


def float_arg(lo: float, hi: float):
    return number_arg(float, lo, hi)


def tile_batch_arg(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be auto or a whole number from 1 to {rq.MAX_TILE_BATCH}, got {text!r}") from None


def pair_arg(parse_fn):
    def parse(text: str):
        try:
            return parse_fn(text)
        except rq.RequestError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    return parse


def devices_arg(text: str) -> list[str]:
    devices = [d.strip() for d in text.split(",") if d.strip()]
    for d in devices:
        if not re.fullmatch(r"cpu|cuda:\d{1,2}", d):
            raise argparse.ArgumentTypeError(f"devices: each must be cpu or cuda:N, got {d!r}")
    if len(devices) < 2:
        raise argparse.ArgumentTypeError("devices: give two or more, comma-separated (e.g. cuda:0,cuda:1)")
    return devices


# The generation flags every generating command takes, by the request field each sets: one
# definition, so a flag's name, type, range and metavar cannot drift between the commands. The
# help here is the one that is true for every command; a command adds its own where it says more
# (generate's defaults, upscale's "each pass").
_GENERATION_FLAGS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "model": (("--model",), {}),
    "prompt": (("--prompt",), {}),
    "negative_prompt": (("--negative",), {"metavar": "TEXT"}),
    "steps": (("--steps",), {"type": int_arg(1, rq.MAX_STEPS), "metavar": "N"}),
    "guidance": (("--guidance",), {"type": float_arg(rq.MIN_GUIDANCE, rq.MAX_GUIDANCE), "metavar": "CFG"}),
    "sampler": (("--sampler",), {"choices": rq.SAMPLERS}),
    "seed": (("--seed",), {"type": int_arg(0, rq.MAX_SEED), "metavar": "N"}),
    "lora_specs": (("--lora",), {"action": "append", "default": [], "metavar": "FILE[:WEIGHT]", "help": LORA_HELP}),
    "tile_batch": (("--tile-batch",), {
        "type": tile_batch_arg, "metavar": "auto|N",
        "help": "tiles per model call; auto (the default) picks the most that fit in memory"}),
    "device": (("--device",), {"metavar": "auto|cpu|cuda|cuda:N|mps"}),
    "dtype": (("--dtype",), {"choices": rq.DTYPES}),
    "host_memory": (("--host-memory",), {"type": float_arg(rq.MIN_HOST_MEMORY, rq.MAX_HOST_MEMORY),
                                         "metavar": "GiB"}),
    "settings": (("--set",), {
        "action": "append", "default": [], "metavar": "KEY=VALUE",
        "help": "a model option (repeatable), e.g. --set terrain_difficulty=60 for builtin:terrain; "
                "`paradiff models` lists each model's options"}),
    "quiet": (("--quiet",), {"action": "store_true", "help": "no progress bar"}),
}
# What a picture's recipe is re-run with (upscale, refine): these flags, in this order.
RECIPE_FLAGS = ("model", "prompt", "negative_prompt", "steps", "seed", "guidance", "sampler", "tile_batch",
                "device", "dtype", "host_memory", "settings")


def generation_flags(parser: argparse.ArgumentParser, *fields: str, helps: dict[str, str] | None = None) -> None:
    """Add the generation flags that set these request fields, in this order; ``helps``: a command's
    own help for some of them."""
    for field in fields:
        names, spec = _GENERATION_FLAGS[field]
        if helps and field in helps:
            spec = {**spec, "help": helps[field]}
        parser.add_argument(*names, dest=field, **spec)


def given(args: argparse.Namespace, fields: tuple[str, ...]) -> dict[str, Any]:
    """The fields among these that a flag set (a flag not given is None: the request's own value)."""
    return {k: v for k in fields if (v := getattr(args, k, None)) is not None}


def recipe_fields(args: argparse.Namespace) -> dict[str, Any]:
    """upscale's and refine's generation flags → request fields (on top of the picture's recipe)."""
    fields = given(args, tuple(f for f in RECIPE_FLAGS if f != "settings"))
    if args.lora_specs:
        fields["loras"] = lora_args(args.lora_specs)
    return fields


def request_over_picture(args: argparse.Namespace, fields: dict[str, Any]) -> rq.GenerationRequest:
    """The request to re-run ``args.image`` with: its recipe when it has one (else the model's
    defaults), with the flags on top. Raises ``RequestError``."""
    from ..engine.api.requests import build_request, parse_settings
    from ..engine.io.metadata import load_request

    try:
        base = load_request(args.image)
    except rq.RequestError:
        base = None  # not a Paradiff picture: the model's defaults
    return build_request(fields, parse_settings(args.settings), base=base,
                         model=args.model or os.environ.get("PARADIFF_MODEL") or rq.DEFAULT_MODEL)


def control_args(parser: argparse.ArgumentParser) -> None:
    from ..engine.core.control import MAX_WEIGHT, PREPROCESSORS, UNION_MODES

    parser.add_argument("--control", dest="control_specs", action="append", default=[],
                        metavar="MODEL:IMAGE[:WEIGHT[:START:END]]",
                        help="a ControlNet (a diffusers folder or .safetensors) steered by IMAGE, each tile by its own "
                             f"crop (repeatable); WEIGHT 0..{MAX_WEIGHT:g} (default 1), START:END the fraction of the "
                             "steps it steers (default 0:1). Without IMAGE (MODEL alone) it reads the init image "
                             "(the tile preprocessor)")
    parser.add_argument("--control-pre", dest="control_pre", action="append", default=[], choices=PREPROCESSORS,
                        help="how the control image is prepared: tile (the picture itself; the default without an "
                             "image of its own), canny (edges), none (a ready-made map; the default with an image). "
                             "Once for every --control, or once per --control in order")
    parser.add_argument("--control-mode", dest="control_mode", action="append", default=[], choices=UNION_MODES,
                        help="for a union ControlNet (SDXL): the kind of map its image is (hed: soft edges, also "
                             "pidi/scribble/ted; canny: also lineart/mlsd; tile and repaint: ProMax). Without it "
                             "tile and canny preprocessors imply their own. Once for every --control, or once per "
                             "--control in order")

