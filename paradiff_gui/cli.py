"""``paradiff``: the command line over the same engine the GUI uses.

Exit codes: 0 done; 2 invalid input (the message names the field and the allowed values);
3 model unavailable; 130 interrupted (Ctrl-C; nothing half-written at ``-o``); 1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .engine.core import request as rq  # plain data: no torch, so --help and --version stay fast
from .engine.core.lora import MAX_LORA_WEIGHT, MIN_LORA_WEIGHT, parse_lora_arg

if TYPE_CHECKING:
    from .engine.runtime import distributed

EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
LORA_HELP = (f"apply a LoRA (.safetensors, Kohya/A1111 or diffusers format) with this weight (default 1, from "
             f"{MIN_LORA_WEIGHT:g} to {MAX_LORA_WEIGHT:g}); repeatable; replaces a replayed request's LoRAs")
SEAM_ROWS = 8  # worst seams shown by `inspect` without --json


class _Parser(argparse.ArgumentParser):
    """argparse that exits with our 'invalid input' code and a one-line message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_INVALID, f"{self.prog}: error: {message}\n")


def _number_arg(cast: type, lo: float, hi: float):
    """argparse type: a number, with the allowed range in the message when it is not one."""
    what = "a whole number" if cast is int else "a number"

    def parse(text: str):
        try:
            return cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what} from {lo} to {hi}, got {text!r}") from None

    return parse


def _int_arg(lo: int, hi: int):
    return _number_arg(int, lo, hi)


def _float_arg(lo: float, hi: float):
    return _number_arg(float, lo, hi)


def _tile_batch_arg(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be auto or a whole number from 1 to {rq.MAX_TILE_BATCH}, got {text!r}") from None


def _pair_arg(parse_fn):
    def parse(text: str):
        try:
            return parse_fn(text)
        except rq.RequestError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    return parse


def _devices_arg(text: str) -> list[str]:
    devices = [d.strip() for d in text.split(",") if d.strip()]
    for d in devices:
        if not re.fullmatch(r"cpu|cuda:\d{1,2}", d):
            raise argparse.ArgumentTypeError(f"devices: each must be cpu or cuda:N, got {d!r}")
    if len(devices) < 2:
        raise argparse.ArgumentTypeError("devices: give two or more, comma-separated (e.g. cuda:0,cuda:1)")
    return devices


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="paradiff", description="Ultra-high-resolution images by synchronized tiled diffusion.")
    p.add_argument("--version", action="version", version=f"paradiff {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="make an image",
                       description="Make an image. Sizes, tile and overlap are image pixels.")
    g.add_argument("--model", help="builtin:NAME, a diffusers folder, a .safetensors file or a hub id "
                                   f"(default $PARADIFF_MODEL, else {rq.DEFAULT_MODEL})")
    g.add_argument("--prompt")
    g.add_argument("--negative", dest="negative_prompt", metavar="TEXT")
    g.add_argument("--size", type=_pair_arg(rq.parse_size), metavar="WxH")
    tiling = g.add_mutually_exclusive_group()
    tiling.add_argument("--grid", type=_pair_arg(rq.parse_grid), metavar="RxC", help="rows x cols of tiles")
    tiling.add_argument("--tile", type=_int_arg(rq.MIN_TILE, rq.MAX_TILE), metavar="PX", help="tile side")
    g.add_argument("--overlap", type=_int_arg(0, rq.MAX_OVERLAP), metavar="PX", help="minimum overlap (default tile/4)")
    g.add_argument("--steps", type=_int_arg(1, rq.MAX_STEPS), metavar="N")
    g.add_argument("--guidance", type=_float_arg(rq.MIN_GUIDANCE, rq.MAX_GUIDANCE), metavar="F")
    g.add_argument("--sampler", choices=rq.SAMPLERS)
    g.add_argument("--seed", type=_int_arg(0, rq.MAX_SEED), metavar="N", help="default: random (printed)")
    g.add_argument("--fusion", choices=rq.FUSIONS)
    g.add_argument("--jitter", action=argparse.BooleanOptionalAction, default=None,
                   help="shift the tile grid by a seeded offset every step")
    g.add_argument("--global-context", dest="global_context", type=_float_arg(0.0, 1.0), metavar="0..1",
                   help="first denoise a small whole-canvas version and let it guide the layout (0 = off)")
    g.add_argument("--bridges", choices=rq.BRIDGES,
                   help="tiles that compute as one model while they denoise: convolution halos, shared GroupNorm "
                        "statistics, attention to the other tiles (from the previous step); one alone, or full")
    g.add_argument("--bridge-width", dest="bridge_width", type=_int_arg(0, rq.MAX_TILE // 2), metavar="PX",
                   help="attention bridges see a strip this wide along each tile border (0, the default: the "
                        "whole neighbour tiles); at most half a tile")
    g.add_argument("--region", dest="region_specs", action="append", default=[], metavar="X0,Y0,X1,Y1:PROMPT",
                   help="a regional prompt over a rectangle (image px; repeatable); the main prompt is the "
                        "background. Options after |, e.g. \"0,0,512,1024:a castle|weight=2|feather=32|negative=fog\"; "
                        "for models without text the options alone, e.g. \"256,0,512,512:terrain_difficulty=90\"")
    g.add_argument("--regions", dest="regions_file", metavar="FILE.json",
                   help="regions as a JSON list of objects (rect [x0,y0,x1,y1] or mask FILE.png, prompt, "
                        "negative_prompt, weight, feather, extra); mask paths are relative to the file")
    g.add_argument("--lora", dest="lora_specs", action="append", default=[], metavar="FILE[:WEIGHT]",
                   help=LORA_HELP)
    g.add_argument("--init-image", dest="init_image", metavar="IMAGE",
                   help="image-to-image: start from this picture (resized to --size; a 16-bit heightmap for "
                        "builtin:terrain)")
    g.add_argument("--strength", type=_float_arg(0.0, 1.0), metavar="0..1",
                   help=f"how much of the init image is re-drawn, above 0 and at most 1 (default "
                        f"{rq.DEFAULT_STRENGTH}); 1 is text-to-image")
    g.add_argument("--anchor", type=int, choices=rq.ANCHORS, metavar="N",
                   help="faithful image-to-image: the result shrunk N times equals the init image shrunk N times "
                        "(2 keeps all but the finest detail, 8 or more only the composition); 0: off (the default)")
    _control_args(g)
    g.add_argument("--wrap", choices=rq.WRAPS,
                   help="seamless: the tile plan wraps across these canvas edges, so the picture tiles")
    g.add_argument("--positions", choices=rq.POSITIONS,
                   help="diffusion transformers (FLUX, SD3): each tile's token positions start at 0, as for a "
                        "picture of its size (local, the default), or sit at its place on the canvas (canvas)")
    g.add_argument("--transformer", metavar="FILE.safetensors",
                   help="FLUX/SD3: a single-file transformer checkpoint used in place of the --model folder's own "
                        "(the folder gives the text encoders, the VAE and the transformer's config.json)")
    g.add_argument("--weights", choices=rq.WEIGHTS,
                   help="FLUX/SD3: the transformer's weights on the device: full (the default, in --dtype) or fp8 "
                        "(one byte a weight for two thirds of them, each layer cast up as it runs: FLUX.1-dev's "
                        "transformer in 15 GB instead of 24; a slightly different picture)")
    g.add_argument("--preview", choices=rq.PREVIEWS,
                   help="live tile previews: auto (the default: a tiny autoencoder, TAESD/TAESDXL/TAEF1/TAESD3, "
                        "when one is in a model folder or the hub cache, else linear), linear (a latent-to-RGB "
                        "map fitted to the model's VAE) or taesd (refused when none is found)")
    g.add_argument("--tile-batch", dest="tile_batch", type=_tile_batch_arg, metavar="auto|N",
                   help="tiles per model call; auto (the default) picks the most that fit in memory")
    g.add_argument("--device", metavar="auto|cpu|cuda|cuda:N|mps")
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model (faster steps after a slow first one; CUDA: channels-last)")
    g.add_argument("--devices", type=_devices_arg, metavar="D1,D2,...",
                   help="spread the tiles over these devices, one process each (e.g. cuda:0,cuda:1; cpu,cpu "
                        "for CPU processes); under torchrun every process already is one rank")
    g.add_argument("--dtype", choices=rq.DTYPES)
    g.add_argument("--host-memory", dest="host_memory", type=_float_arg(rq.MIN_HOST_MEMORY, rq.MAX_HOST_MEMORY),
                   metavar="GiB", help="the most host memory (RAM) the run may take, e.g. 8: the plan, the tile batch "
                                       "on a CPU and the exact decode's spilling keep within it (default: "
                                       "$PARADIFF_HOST_MEMORY, else what the machine has)")
    g.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option (repeatable), e.g. --set terrain_difficulty=60 for builtin:terrain; "
                        "`paradiff models` lists each model's options")
    g.add_argument("--terrain-difficulty", metavar="1..100",
                   help="the same as --set terrain_difficulty=N (builtin:terrain: how rugged the landscape is)")
    g.add_argument("--request", dest="request_file", metavar="FILE.json|IMAGE.png",
                   help="replay a saved request or a Paradiff image's recipe (other flags override it)")
    g.add_argument("--save-request", metavar="FILE.json", help="also save the request as JSON")
    g.add_argument("-o", "--output", metavar="OUT.png|.tif|.webp|.jpg",
                   help="default: paradiff-SEED.png in the current folder; the extension picks the format, "
                        "each with the recipe embedded (16-bit heightmaps need PNG or TIFF)")
    g.add_argument("--relief", metavar="RELIEF.png",
                   help="single-channel models (heightmaps): also write a shaded-relief RGB picture")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--allow-pickle", action="store_true",
                   help="accept .ckpt/.pt/.bin checkpoints, loading only their tensors (torch.load weights_only)")
    g.add_argument("--allow-download", action="store_true",
                   help="let a hub model id download when it is not in the local cache")

    u = sub.add_parser("upscale", help="upscale a picture with new detail (x2 passes of image-to-image)",
                       description="Upscale IMAGE by 2, 4 or 8 in x2 passes: resize, noise to --strength, "
                                   "synchronized tiled denoise. Each pass's picture is kept (NAME-x2.png, NAME-x4.png, "
                                   "...). The generation settings come from IMAGE's recipe when it has one; flags "
                                   "override them.")
    u.add_argument("image")
    u.add_argument("--scale", type=int, choices=(2, 4, 8), required=True)
    u.add_argument("--strength", type=_float_arg(0.0, 1.0), metavar="0..1",
                   help="how much each pass re-draws, above 0 and at most 1 (default 0.5)")
    u.add_argument("--anchor", type=int, choices=(0, 2), metavar="2|0",
                   help="2 (the default): each pass shrunk 2x equals its source, so the result shrunk SCALE times "
                        "is IMAGE; 0: the model may move the large shapes too")
    u.add_argument("-o", "--output", metavar="OUT.png", help="the last pass's file (default IMAGE-xSCALE.png)")
    u.add_argument("--model")
    u.add_argument("--prompt")
    u.add_argument("--negative", dest="negative_prompt", metavar="TEXT")
    u.add_argument("--steps", type=_int_arg(1, rq.MAX_STEPS), metavar="N")
    u.add_argument("--seed", type=_int_arg(0, rq.MAX_SEED), metavar="N")
    u.add_argument("--sampler", choices=rq.SAMPLERS)
    u.add_argument("--tile-batch", dest="tile_batch", type=_tile_batch_arg, metavar="auto|N")
    u.add_argument("--device", metavar="auto|cpu|cuda|cuda:N|mps")
    u.add_argument("--dtype", choices=rq.DTYPES)
    u.add_argument("--host-memory", dest="host_memory", type=_float_arg(rq.MIN_HOST_MEMORY, rq.MAX_HOST_MEMORY),
                   metavar="GiB", help="the most host memory each pass may take (default: $PARADIFF_HOST_MEMORY)")
    u.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    _control_args(u)
    u.add_argument("--lora", dest="lora_specs", action="append", default=[], metavar="FILE[:WEIGHT]",
                   help=LORA_HELP)
    u.add_argument("--quiet", action="store_true", help="no progress bar")

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
    f.add_argument("--model")
    f.add_argument("--prompt")
    f.add_argument("--negative", dest="negative_prompt", metavar="TEXT")
    f.add_argument("--steps", type=_int_arg(1, rq.MAX_STEPS), metavar="N")
    f.add_argument("--seed", type=_int_arg(0, rq.MAX_SEED), metavar="N")
    f.add_argument("--guidance", type=_float_arg(rq.MIN_GUIDANCE, rq.MAX_GUIDANCE), metavar="CFG")
    f.add_argument("--sampler", choices=rq.SAMPLERS)
    f.add_argument("--tile-batch", dest="tile_batch", type=_tile_batch_arg, metavar="auto|N")
    f.add_argument("--device", metavar="auto|cpu|cuda|cuda:N|mps")
    f.add_argument("--dtype", choices=rq.DTYPES)
    f.add_argument("--host-memory", dest="host_memory", type=_float_arg(rq.MIN_HOST_MEMORY, rq.MAX_HOST_MEMORY),
                   metavar="GiB", help="the most host memory the run may take (default: $PARADIFF_HOST_MEMORY)")
    f.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    f.add_argument("--lora", dest="lora_specs", action="append", default=[], metavar="FILE[:WEIGHT]",
                   help=LORA_HELP)
    f.add_argument("--quiet", action="store_true", help="no progress bar")

    m = sub.add_parser("models", help="list the models Paradiff can use")
    m.add_argument("--json", action="store_true")

    i = sub.add_parser("inspect", help="score the seams of an image",
                       description="Seam scores of an image: its tile plan comes from Paradiff metadata, or "
                                   "from --grid/--tile and --overlap for other images (image px).")
    i.add_argument("image")
    i.add_argument("--json", action="store_true", help="one JSON object on stdout")
    plan = i.add_mutually_exclusive_group()
    plan.add_argument("--grid", type=_pair_arg(rq.parse_grid), metavar="RxC")
    plan.add_argument("--tile", type=_int_arg(8, rq.MAX_TILE), metavar="PX")
    i.add_argument("--overlap", type=_int_arg(0, rq.MAX_OVERLAP), metavar="PX", default=None)
    return p


def _control_args(parser: argparse.ArgumentParser) -> None:
    from .engine.core.control import MAX_WEIGHT, PREPROCESSORS, UNION_MODES

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


def parse_control_specs(specs: list[str], pres: list[str], modes: list[str] | None = None) -> list[dict[str, Any]]:
    """``--control MODEL:IMAGE[:WEIGHT[:START:END]]``, ``--control-pre`` and ``--control-mode`` →
    control objects."""
    modes = modes or []
    for name, given in (("control_pre", pres), ("control_mode", modes)):
        if given and len(given) not in (1, len(specs)):
            raise rq.RequestError(name, f"give it once (for every --control) or once per --control "
                                        f"({len(specs)}); got {len(given)}")
    out = []
    for i, spec in enumerate(specs):
        parts = spec.split(":")
        numbers: list[float] = []
        for count in (3, 1):  # WEIGHT:START:END, or WEIGHT alone
            if len(parts) >= 2 + count:
                try:
                    numbers = [float(v) for v in parts[-count:]]
                except ValueError:
                    continue
                parts = parts[:-count]
                break
        control: dict[str, Any] = {"model": parts[0], "image": ":".join(parts[1:]) or None}
        if not parts[0]:
            raise rq.RequestError(f"controls[{i}].model", f"must name a ControlNet: MODEL:IMAGE[:WEIGHT[:START:END]]; "
                                                          f"got {spec!r}")
        if numbers:
            control["weight"] = numbers[0]
        if len(numbers) == 3:
            control["start"], control["end"] = numbers[1], numbers[2]
        if pres:
            control["preprocessor"] = pres[0] if len(pres) == 1 else pres[i]
        if modes:
            control["mode"] = modes[0] if len(modes) == 1 else modes[i]
        out.append(control)
    return out


_OVERRIDES = ("model", "prompt", "negative_prompt", "overlap", "steps", "guidance", "sampler", "seed",
              "fusion", "jitter", "global_context", "bridges", "bridge_width", "tile_batch", "device", "dtype",
              "host_memory", "compile", "init_image", "strength", "anchor", "wrap", "positions", "transformer",
              "weights", "preview")
_REGION_SPEC = re.compile(r"\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*:(.*)", re.S)
_OPTION = re.compile(r"\s*([a-z][a-z0-9_]*)\s*=(.*)", re.S)


def parse_region_spec(spec: str, index: int) -> dict[str, Any]:
    """``X0,Y0,X1,Y1:PROMPT|key=value|...`` → a region object (keys: weight, feather, negative; any
    other key is a model option, e.g. terrain_difficulty)."""
    name = f"regions[{index}]"
    m = _REGION_SPEC.fullmatch(spec)
    if not m:
        raise rq.RequestError(name, f"must look like X0,Y0,X1,Y1:PROMPT (image px), e.g. 0,0,512,512:a castle; "
                                    f"got {spec!r}")
    region: dict[str, Any] = {"rect": [int(m.group(k)) for k in range(1, 5)], "extra": {}}
    parts = m.group(5).split("|")
    if _OPTION.fullmatch(parts[0]) is None:
        region["prompt"] = parts.pop(0).strip()
    for part in parts:
        opt = _OPTION.fullmatch(part)
        if opt is None:
            raise rq.RequestError(name, f"options after the prompt must be key=value, got {part!r}")
        key, value = opt.group(1), opt.group(2).strip()
        try:
            if key == "weight":
                region["weight"] = float(value)
            elif key == "feather":
                region["feather"] = int(value)
            elif key == "negative":
                region["negative_prompt"] = value
            else:
                region["extra"][key] = int(value)
        except ValueError:
            raise rq.RequestError(f"{name}.{key}", f"must be a number, got {value!r}") from None
    return region


def load_regions_file(path: str) -> list[dict[str, Any]]:
    """A ``--regions`` JSON file: a list of region objects (or {"regions": [...]}); a mask given as a
    file name is read (relative to the JSON file) and embedded, so the recipe replays anywhere."""
    from .engine.core.regions import RegionError, mask_from_file

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise rq.RequestError("regions", f"cannot read {p}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise rq.RequestError("regions", f"{p} is not valid JSON ({exc})") from None
    if isinstance(data, dict) and "regions" in data:
        data = data["regions"]
    if not isinstance(data, list):
        raise rq.RequestError("regions", f"{p} must hold a list of region objects")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, dict) and isinstance(item.get("mask"), str) and not item["mask"].startswith("data:"):
            try:
                item = {**item, "mask": mask_from_file(str(p.parent / item["mask"]), f"regions[{i}].mask")}
            except RegionError as exc:
                raise rq.RequestError(exc.field, exc.message) from None
        out.append(item)
    return out


def lora_args(specs: list[str]) -> list[dict[str, Any]]:
    """``--lora FILE[:WEIGHT]`` flags → the request's LoRAs (checked, by field, when it is built)."""
    return [dict(zip(("path", "weight"), parse_lora_arg(spec), strict=True)) for spec in specs]


def request_from_args(args: argparse.Namespace) -> rq.GenerationRequest:
    """The request these arguments describe: a replayed request, with explicit flags on top."""
    from .engine.api.requests import build_request, parse_settings
    from .engine.io.metadata import load_request

    changes: dict[str, Any] = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    if args.size is not None:
        changes["width"], changes["height"] = args.size
    if args.grid is not None:
        changes.update(grid=args.grid, tile=None)
    if args.tile is not None:
        changes.update(tile=args.tile, grid=None)
    if args.regions_file or args.region_specs:
        regions = load_regions_file(args.regions_file) if args.regions_file else []
        changes["regions"] = regions + [parse_region_spec(spec, len(regions) + i)
                                        for i, spec in enumerate(args.region_specs)]
    if args.control_specs:
        changes["controls"] = parse_control_specs(args.control_specs, args.control_pre, args.control_mode)
    elif args.control_pre:
        raise rq.RequestError("control_pre", "prepares the image of a --control: give --control too")
    elif args.control_mode:
        raise rq.RequestError("control_mode", "says what the image of a --control is: give --control too")
    if args.lora_specs:
        changes["loras"] = lora_args(args.lora_specs)
    controls = parse_settings(args.settings)
    if args.terrain_difficulty is not None:  # the flag of 0.1, kept as an alias
        controls["terrain_difficulty"] = args.terrain_difficulty
    if args.request_file:
        return build_request(changes, controls, base=load_request(args.request_file))
    return build_request(changes, controls, model=os.environ.get("PARADIFF_MODEL") or rq.DEFAULT_MODEL)


class _Progress:
    """Engine events → a rich progress bar with ETA on stderr."""

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("eta"),
            TimeRemainingColumn(), TimeElapsedColumn(), console=self.console, disable=quiet,
        )
        self.steps = self.decode = None

    def __call__(self, event: Any) -> None:
        from .engine.core import events as ev

        if isinstance(event, ev.Planned):
            if not self.quiet:
                self.console.print(f"[bold]{event.plan.describe()}[/] on {event.device} ({event.dtype})")
            self.progress.start()
            self.steps = self.progress.add_task("denoising", total=event.total_steps)
        elif isinstance(event, ev.Notice):
            self.console.print(f"note: {event.message}")
        elif isinstance(event, ev.StepFinished) and self.steps is not None:
            self.progress.update(self.steps, completed=event.step + 1, total=event.total)
        elif isinstance(event, ev.Decoding):
            if self.decode is None:
                self.decode = self.progress.add_task("decoding", total=event.total)
            self.progress.update(self.decode, completed=event.done, total=event.total)
        elif isinstance(event, ev.TERMINAL):
            self.progress.stop()


def _default_output(request: rq.GenerationRequest) -> Path:
    return Path.cwd() / f"paradiff-{request.seed}.png"


def cmd_generate(args: argparse.Namespace) -> int:
    from .engine.io import partials
    from .engine.io.metadata import save_request

    partials.sweep()  # temporary files that a killed earlier run left behind

    try:
        request = request_from_args(args)
    except rq.RequestError as exc:
        print(f"paradiff: invalid input: {exc}", file=sys.stderr)
        return EXIT_INVALID
    out = Path(args.output) if args.output else _default_output(request)
    from .engine.io.export import FORMATS, format_for

    try:
        spec = FORMATS[format_for(out)]
    except rq.RequestError:
        allowed = ", ".join(e for f in FORMATS.values() for e in f.extensions)
        print(f"paradiff: invalid input: output: must end in one of {allowed}; got {out.name!r}", file=sys.stderr)
        return EXIT_INVALID
    if max(request.size) > spec.max_side:  # refused now, not after minutes of denoising
        print(f"paradiff: invalid input: output: {spec.label} holds at most {spec.max_side} px a side and the image "
              f"is {request.width}x{request.height}; use .png or .tif", file=sys.stderr)
        return EXIT_INVALID
    if args.save_request:
        save_request(args.save_request, request)
    if args.seed is None and not args.request_file:
        print(f"seed {request.seed}", file=sys.stderr)

    if args.allow_download:
        os.environ["PARADIFF_ALLOW_DOWNLOAD"] = "1"
    if args.allow_pickle:
        os.environ["PARADIFF_ALLOW_PICKLE"] = "1"
    if args.devices:
        return _launch_local_group(args, request, out)
    from .engine.runtime import distributed

    shard = None
    if distributed.launched_by_torchrun():
        shard, device = distributed.init_from_env(request.device)
        request = request.replace(device=device)
        args.quiet = args.quiet or not shard.leader
    try:
        return _generate_and_write(args, request, out, shard)
    finally:
        if shard is not None:
            distributed.leave()


GROUP_GRACE_S = 3.0  # after one rank fails, the others get this long to stop on their own


def _launch_local_group(args: argparse.Namespace, request: rq.GenerationRequest, out: Path) -> int:
    """``--devices``: one process per device, joined in a local process group; rank 0 writes.

    The launcher watches its ranks: when one fails or dies, the others are stopped (after
    ``GROUP_GRACE_S``, then killed), and one line says what happened — the failing rank's own
    message, or which rank died — instead of every rank's traceback or a collective's timeout."""
    import multiprocessing

    from .engine.runtime import distributed

    port = distributed.free_port()
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    reports = ctx.SimpleQueue()  # (rank, exit code, message) of members that stop on an error
    procs = [ctx.Process(target=_group_member, args=(os.getpid(), rank, args.devices, port, request.to_json(),
                                                     str(out), args.relief, args.quiet or rank > 0, reports))
             for rank in range(len(args.devices))]
    for proc in procs:
        proc.start()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the members handle Ctrl-C themselves
    try:
        codes, first = _supervise(procs)
    finally:
        signal.signal(signal.SIGINT, previous)
    messages = []
    while not reports.empty():
        messages.append(reports.get())
    if not any(codes):
        return EXIT_OK
    if messages:  # the first rank that said why (the others stopped because of it)
        rank, code, message = messages[0]
        print(f"paradiff: {message}", file=sys.stderr)
        return code
    rank, code = first, codes[first]
    how = f"was killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exited with code {code}"
    print(f"paradiff: rank {rank} ({args.devices[rank]}) {how}; the run stopped and nothing was written",
          file=sys.stderr)
    return EXIT_ERROR


def _supervise(procs: list[Any]) -> tuple[list[int], int]:
    """Wait for every member; once one has failed, stop the rest (terminate, then kill). Returns
    the exit codes and the index of the first member that failed (0 when none did)."""
    from multiprocessing.connection import wait

    failed_at: float | None = None
    first = 0
    terminated = False
    while any(p.exitcode is None for p in procs):
        wait([p.sentinel for p in procs if p.exitcode is None], timeout=0.2)
        if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
            failed_at = time.monotonic()
            first = next(i for i, p in enumerate(procs) if p.exitcode not in (None, 0))
        if failed_at is not None:
            late = time.monotonic() - failed_at
            for p in procs:
                if p.exitcode is None and late > 2 * GROUP_GRACE_S:
                    p.kill()
                elif p.exitcode is None and late > GROUP_GRACE_S and not terminated:
                    p.terminate()
            terminated = terminated or late > GROUP_GRACE_S
    for p in procs:
        p.join()
    return [p.exitcode for p in procs], first


def _peer_failure(exc: BaseException) -> bool:
    """A collective that failed because another rank went away (its own error is reported by it,
    or by the launcher when it died)."""
    text = str(exc).lower()
    return any(k in text for k in ("connection closed by peer", "connection reset by peer", "broken pipe",
                                   "gloo", "nccl", "timed out", "socket"))


def _leave_with_the_launcher(launcher: int, poll_s: float = 0.5) -> None:
    """A member whose launcher is gone (killed, even with SIGKILL) stops too, instead of denoising on
    for nobody.

    The launcher hands its pid to each member, so a member that starts watching only after the
    launcher died (start-up and imports take seconds on a busy machine) sees at once that its parent
    is someone else, instead of recording the new parent as the one to watch. On Linux the kernel
    also signals the member the moment its parent dies (PR_SET_PDEATHSIG), set before the check so
    that no death falls between the two; elsewhere a daemon thread polls the parent pid."""
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != launcher:
        os._exit(EXIT_INTERRUPTED)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != launcher:
                os._exit(EXIT_INTERRUPTED)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def _group_member(launcher: int, rank: int, devices: list[str], port: int, request_json: str, out: str,
                  relief: str | None, quiet: bool, reports: Any) -> None:
    _leave_with_the_launcher(launcher)  # first: before torch's import, which takes seconds
    from .engine.runtime import distributed

    request = rq.GenerationRequest.from_json(request_json).replace(device=devices[rank])
    args = argparse.Namespace(relief=relief, quiet=quiet)
    code = EXIT_ERROR
    try:
        shard = distributed.join(rank, len(devices), port, devices[rank])
        try:
            code = _generate_and_write(args, request, Path(out), shard,
                                       report=lambda c, m: reports.put((rank, c, m)))
        finally:
            distributed.leave()
    except Exception as exc:  # every failure ends as one line from the launcher
        if not _peer_failure(exc):
            reports.put((rank, EXIT_ERROR, f"error on rank {rank} ({devices[rank]}): {type(exc).__name__}: {exc}; "
                                           "the run stopped and nothing was written"))
    # The work is done and the picture written (atomically, fsynced): leave without the
    # interpreter's teardown, where a background thread of the collective library aborted the
    # process once in a fresh-clone test run ("terminate called without an active exception",
    # exit -6 after "wrote ..."), turning a finished run into a failure.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _generate_and_write(args: argparse.Namespace, request: rq.GenerationRequest, out: Path,
                        shard: distributed.Shard | None, report: Any = None) -> int:
    """Generate and write ``out``. ``report(code, message)``: a member of a ``--devices`` group hands
    its failure to the launcher, which prints one line for the group."""
    from .engine import Cancelled, CancelToken, ModelUnavailable, generate
    from .engine.io.export import save_image
    from .engine.io.metadata import save_png

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
    sink = _Progress(args.quiet)
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

        from .engine.analysis.relief import shaded_relief
        from .engine.io.metadata import atomic_write

        relief = Image.fromarray(shaded_relief(result.image))
        atomic_write(args.relief, lambda f: relief.save(f, format="PNG"))
    try:
        save_image(out, result.image, result.request, result.plan, result.info)
    except (OSError, rq.RequestError) as exc:
        # Minutes of work are not lost to a full disk or a read-only folder: keep it elsewhere.
        from .engine.io.autosave import autosave_path

        rescue = autosave_path(request.seed)
        save_png(rescue, result.image, result.request, result.plan, result.info)
        return fail(EXIT_ERROR, f"could not write {out} ({getattr(exc, 'strerror', None) or exc}); the picture is "
                                f"saved as {rescue}")
    print(f"wrote {out} ({result.image.shape[1]}x{result.image.shape[0]}, {result.seconds:.1f} s)", file=sys.stderr)
    return EXIT_OK


def cmd_upscale(args: argparse.Namespace) -> int:
    """``paradiff upscale``: the passes of engine.api.upscale, each generated and written in turn."""
    from .engine import Cancelled, CancelToken, ModelUnavailable, generate
    from .engine.api.requests import build_request, parse_settings
    from .engine.api.upscale import upscale_passes
    from .engine.io import partials
    from .engine.io.export import save_image
    from .engine.io.metadata import load_request

    partials.sweep()
    fields = {k: getattr(args, k) for k in ("model", "prompt", "negative_prompt", "steps", "seed", "sampler",
                                             "tile_batch", "device", "dtype", "host_memory")
              if getattr(args, k) is not None}
    if args.lora_specs:
        fields["loras"] = lora_args(args.lora_specs)
    try:
        try:
            base = load_request(args.image)
        except rq.RequestError:
            base = None  # not a Paradiff picture: the model's defaults
        base = build_request(fields, parse_settings(args.settings), base=base,
                             model=args.model or os.environ.get("PARADIFF_MODEL") or rq.DEFAULT_MODEL)
        passes = upscale_passes(args.image, args.scale, strength=args.strength, anchor=args.anchor, base=base,
                                output=args.output)
        if args.control_specs:  # each pass's init image is the previous pass: a tile ControlNet follows it
            controls = parse_control_specs(args.control_specs, args.control_pre, args.control_mode)
            passes = [dataclasses.replace(p, request=p.request.replace(controls=controls)) for p in passes]
    except rq.RequestError as exc:
        print(f"paradiff: invalid input: {exc}", file=sys.stderr)
        return EXIT_INVALID
    cancel = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.cancel())
    try:
        for k, step in enumerate(passes, 1):
            print(f"pass {k} of {len(passes)}: x{step.factor}, {step.request.width}x{step.request.height}",
                  file=sys.stderr)
            sink = _Progress(args.quiet)
            try:
                result = generate(step.request, sink, cancel)
            except Cancelled:
                sink.progress.stop()
                print(f"paradiff: interrupted; the passes before pass {k} are written", file=sys.stderr)
                return EXIT_INTERRUPTED
            except rq.RequestError as exc:
                print(f"paradiff: invalid input: {exc}", file=sys.stderr)
                return EXIT_INVALID
            except ModelUnavailable as exc:
                print(f"paradiff: model unavailable: {exc}", file=sys.stderr)
                return EXIT_MODEL
            save_image(step.output, result.image, result.request, result.plan, result.info)
            print(f"wrote {step.output} ({result.image.shape[1]}x{result.image.shape[0]}, {result.seconds:.1f} s)",
                  file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, previous)
    return EXIT_OK


def cmd_refine(args: argparse.Namespace) -> int:
    """``paradiff refine``: engine.api.refine's sub-canvas, generated, laid over the picture and written."""
    from .engine import Cancelled, CancelToken, ModelUnavailable
    from .engine.api.refine import refine_from_recipe, refine_request, run_refinement
    from .engine.api.requests import build_request, parse_settings
    from .engine.io import partials
    from .engine.io.metadata import load_request

    partials.sweep()
    fields = {k: getattr(args, k) for k in ("model", "prompt", "negative_prompt", "steps", "seed", "guidance",
                                             "sampler", "tile_batch", "device", "dtype", "host_memory")
              if getattr(args, k) is not None}
    if args.lora_specs:
        fields["loras"] = lora_args(args.lora_specs)
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
            try:
                base = load_request(args.image)
            except rq.RequestError:
                base = None  # not a Paradiff picture: the model's defaults
            base = build_request(fields, parse_settings(args.settings), base=base,
                                 model=args.model or os.environ.get("PARADIFF_MODEL") or rq.DEFAULT_MODEL)
            job = refine_request(args.image, rect=args.rect, mask=args.mask, feather=args.feather,
                                 strength=args.strength, base=base, output=args.output)
    except rq.RequestError as exc:
        print(f"paradiff: invalid input: {exc}", file=sys.stderr)
        return EXIT_INVALID
    (x0, y0, x1, y1), (w, h) = job.box, job.record["source_size"]
    print(f"refine: sub-canvas {x1 - x0}x{y1 - y0} at {x0},{y0} of the {w}x{h} picture", file=sys.stderr)
    cancel = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.cancel())
    sink = _Progress(args.quiet)  # (it says the notices, quiet or not)
    try:
        result = run_refinement(job, sink, cancel)
    except Cancelled:
        sink.progress.stop()
        print("paradiff: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except rq.RequestError as exc:
        print(f"paradiff: invalid input: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except ModelUnavailable as exc:
        print(f"paradiff: model unavailable: {exc}", file=sys.stderr)
        return EXIT_MODEL
    finally:
        signal.signal(signal.SIGINT, previous)
    print(f"wrote {job.output} ({result.image.shape[1]}x{result.image.shape[0]}, {result.seconds:.1f} s)",
          file=sys.stderr)
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from .engine.models.catalogue import list_models, model_dirs
    from .engine.models.info import describe_model

    entries = list_models()
    # A model's options (--set KEY=VALUE) come from the same table the app draws its controls from.
    infos = {e.id: describe_model(e.id) for e in entries}  # configs only: nothing loads
    options = {e.id: [{"key": c[0], "label": c[1], "min": c[2], "max": c[3], "default": c[4]}
                      for c in infos[e.id].controls] if e.kind == "builtin" else [] for e in entries}
    if args.json:
        print(json.dumps([{**e.__dict__, "label": infos[e.id].label, "options": options[e.id]} for e in entries],
                         indent=2))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "kind", "what", "where", "options (--set KEY=VALUE)", title="Models Paradiff can use")
    for e in entries:
        opts = ", ".join(f"{o['key']}={o['min']}..{o['max']} (default {o['default']})" for o in options[e.id])
        table.add_row(e.id, e.kind, infos[e.id].label, e.where, opts)
    console = Console()
    console.print(table)
    if not entries:
        console.print("No models found.")
    console.print("Searched: " + ", ".join(str(d) for d in model_dirs()) + ", and the Hugging Face hub cache.")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from .engine.api.inspect import open_picture, score

    try:
        # Our own pixel limit (1 gigapixel), not Pillow's 89 MP: Paradiff's 16K outputs are 268 MP.
        picture = open_picture(args.image, grid=args.grid, tile=args.tile, overlap=args.overlap)
        if picture.plan is None:
            raise rq.RequestError("plan", "the image has no Paradiff metadata")
    except rq.RequestError as exc:
        hint = "; give the plan with --grid RxC or --tile PX (and --overlap PX)" if exc.field == "plan" else ""
        print(f"paradiff: invalid input: {exc}{hint}", file=sys.stderr)
        return EXIT_INVALID
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "inspect":
            return cmd_inspect(args)
        if args.command == "upscale":
            return cmd_upscale(args)
        if args.command == "refine":
            return cmd_refine(args)
        return cmd_models(args)
    except KeyboardInterrupt:
        print("paradiff: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("PARADIFF_DEBUG"):
            raise
        print(f"paradiff: error: {type(exc).__name__}: {exc} (set PARADIFF_DEBUG=1 for details; "
              f"after {time.perf_counter() - started:.1f} s)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
