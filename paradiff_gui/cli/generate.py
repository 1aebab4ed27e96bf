"""``paradiff generate``: flags → one ``GenerationRequest`` → the same ``engine.generate`` the app
runs → a picture with its recipe embedded (alone, under torchrun, or as a ``--devices`` group)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..engine.core import request as rq
from .args import control_args, devices_arg, float_arg, generation_flags, given, int_arg, pair_arg
from .console import invalid, say
from .launch import launch_local_group
from .specs import load_regions_file, lora_args, parse_control_specs, parse_region_spec
from .write import generate_and_write

# The request fields a flag of the same name overrides (on a replayed --request too).
_OVERRIDES = ("model", "prompt", "negative_prompt", "overlap", "steps", "guidance", "sampler", "seed",
              "fusion", "jitter", "global_context", "bridges", "bridge_width", "bridge_step", "tile_batch", "device",
              "dtype", "host_memory", "compile", "init_image", "strength", "anchor", "wrap", "positions", "transformer",
              "weights", "preview")


def add_parser(sub: Any) -> None:
    g = sub.add_parser("generate", help="make an image",
                       description="Make an image. Sizes, tile and overlap are image pixels.")
    generation_flags(g, "model", "prompt", "negative_prompt", helps={
        "model": "builtin:NAME, a diffusers folder, a .safetensors file or a hub id "
                 f"(default $PARADIFF_MODEL, else {rq.DEFAULT_MODEL})"})
    g.add_argument("--size", type=pair_arg(rq.parse_size), metavar="WxH")
    tiling = g.add_mutually_exclusive_group()
    tiling.add_argument("--grid", type=pair_arg(rq.parse_grid), metavar="RxC", help="rows x cols of tiles")
    tiling.add_argument("--tile", type=int_arg(rq.MIN_TILE, rq.MAX_TILE), metavar="PX", help="tile side")
    g.add_argument("--overlap", type=int_arg(0, rq.MAX_OVERLAP), metavar="PX", help="minimum overlap (default tile/4)")
    generation_flags(g, "steps", "guidance", "sampler", "seed", helps={"seed": "default: random (printed)"})
    g.add_argument("--fusion", choices=rq.FUSIONS)
    g.add_argument("--jitter", action=argparse.BooleanOptionalAction, default=None,
                   help="shift the tile grid by a seeded offset every step")
    g.add_argument("--global-context", dest="global_context", type=float_arg(0.0, 1.0), metavar="0..1",
                   help="first denoise a small whole-canvas version and let it guide the layout (0 = off)")
    g.add_argument("--bridges", choices=rq.BRIDGES,
                   help="tiles that compute as one model while they denoise: convolution halos, shared GroupNorm "
                        "statistics, attention to the other tiles (see --bridge-step); one alone, or full")
    g.add_argument("--bridge-width", dest="bridge_width", type=int_arg(0, rq.MAX_TILE // 2), metavar="PX",
                   help="attention bridges see a strip this wide along each tile border (0, the default: the "
                        "whole neighbour tiles); at most half a tile")
    g.add_argument("--bridge-step", dest="bridge_step", choices=rq.BRIDGE_STEPS,
                   help="where bridges take the neighbours' values from: the previous step (the default; tiles "
                        "batched freely) or the same step (every tile of a step in one call; each process its own "
                        "tiles, exchanged at every bridged layer)")
    g.add_argument("--region", dest="region_specs", action="append", default=[], metavar="X0,Y0,X1,Y1:PROMPT",
                   help="a regional prompt over a rectangle (image px; repeatable); the main prompt is the "
                        "background. Options after |, e.g. \"0,0,512,1024:a castle|weight=2|feather=32|negative=fog\"; "
                        "for models without text the options alone, e.g. \"256,0,512,512:terrain_difficulty=90\"")
    g.add_argument("--regions", dest="regions_file", metavar="FILE.json",
                   help="regions as a JSON list of objects (rect [x0,y0,x1,y1] or mask FILE.png, prompt, "
                        "negative_prompt, weight, feather, extra); mask paths are relative to the file")
    generation_flags(g, "lora_specs")
    g.add_argument("--init-image", dest="init_image", metavar="IMAGE",
                   help="image-to-image: start from this picture (at its own size, each side rounded to a multiple "
                        "of 8, unless --size or --request says otherwise; a 16-bit heightmap for builtin:terrain)")
    g.add_argument("--strength", type=float_arg(0.0, 1.0), metavar="0..1",
                   help=f"how much of the init image is re-drawn, above 0 and at most 1 (default "
                        f"{rq.DEFAULT_STRENGTH}); 1 is text-to-image")
    g.add_argument("--anchor", type=int, choices=rq.ANCHORS, metavar="N",
                   help="faithful image-to-image: the result shrunk N times equals the init image shrunk N times "
                        "(2 keeps all but the finest detail, 8 or more only the composition); 0: off (the default)")
    control_args(g)
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
    generation_flags(g, "tile_batch", "device")
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model (faster steps after a slow first one; CUDA: channels-last)")
    g.add_argument("--devices", type=devices_arg, metavar="D1,D2,...",
                   help="spread the tiles over these devices, one process each (e.g. cuda:0,cuda:1; cpu,cpu "
                        "for CPU processes); under torchrun every process already is one rank")
    generation_flags(g, "dtype", "host_memory", "settings", helps={
        "host_memory": "the most host memory (RAM) the run may take, e.g. 8: the plan, the tile batch on a CPU "
                       "and the exact decode's spilling keep within it (default: $PARADIFF_HOST_MEMORY, else what "
                       "the machine has)"})
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
    generation_flags(g, "quiet")
    g.add_argument("--allow-pickle", action="store_true",
                   help="accept .ckpt/.pt/.bin checkpoints, loading only their tensors (torch.load weights_only)")
    g.add_argument("--allow-download", action="store_true",
                   help="let a hub model id download when it is not in the local cache")


def request_from_args(args: argparse.Namespace) -> rq.GenerationRequest:
    """The request these arguments describe: a replayed request, with explicit flags on top."""
    from ..engine.api.requests import build_request, parse_settings
    from ..engine.io.metadata import load_request

    changes: dict[str, Any] = given(args, _OVERRIDES)
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
    if args.init_image and args.size is None:  # image to image at the picture's own size (a restyle)
        from ..engine.io.init_image import image_size

        size = image_size(args.init_image)  # None: unreadable, which the engine says by name
        if size is not None:
            changes["width"], changes["height"] = rq.canvas_size(*size)
    return build_request(changes, controls, model=os.environ.get("PARADIFF_MODEL") or rq.DEFAULT_MODEL)


def _default_output(request: rq.GenerationRequest) -> Path:
    return Path.cwd() / f"paradiff-{request.seed}.png"


def cmd_generate(args: argparse.Namespace) -> int:
    from ..engine.io import partials
    from ..engine.io.metadata import save_request

    partials.sweep()  # temporary files that a killed earlier run left behind

    try:
        request = request_from_args(args)
    except rq.RequestError as exc:
        return invalid(exc)
    out = Path(args.output) if args.output else _default_output(request)
    from ..engine.io.export import FORMATS, format_for

    try:
        spec = FORMATS[format_for(out)]
    except rq.RequestError:
        allowed = ", ".join(e for f in FORMATS.values() for e in f.extensions)
        return invalid(f"output: must end in one of {allowed}; got {out.name!r}")
    if max(request.size) > spec.max_side:  # refused now, not after minutes of denoising
        return invalid(f"output: {spec.label} holds at most {spec.max_side} px a side and the image is "
                        f"{request.width}x{request.height}; use .png or .tif")
    if args.save_request:
        save_request(args.save_request, request)
    if args.seed is None and not args.request_file:
        say(f"seed {request.seed}")

    if args.allow_download:
        os.environ["PARADIFF_ALLOW_DOWNLOAD"] = "1"
    if args.allow_pickle:
        os.environ["PARADIFF_ALLOW_PICKLE"] = "1"
    if args.devices:
        return launch_local_group(args, request, out)
    from ..engine.runtime import distributed

    shard = None
    if distributed.launched_by_torchrun():
        shard, device = distributed.init_from_env(request.device)
        request = request.replace(device=device)
        args.quiet = args.quiet or not shard.leader
    try:
        return generate_and_write(args, request, out, shard)
    finally:
        if shard is not None:
            distributed.leave()
