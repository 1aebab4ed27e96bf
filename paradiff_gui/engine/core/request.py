"""GenerationRequest: every input of one generation, validated on construction.

The GUI builds it, the CLI parses it, tests construct it, PNG metadata stores it and
``--request`` replays it: one object, one JSON form, one set of rules.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .control import Control, ControlError, parse_controls
from .lora import LoraError, LoraSpec, parse_loras
from .regions import MAX_REGIONS, Region, RegionError, parse_region

SCHEMA_VERSION = 1

SAMPLERS = ("euler", "euler_a", "heun", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "lcm")
# How people name the samplers (A1111-style metadata writes these; the app shows them).
SAMPLER_LABELS = {
    "euler": "Euler",
    "euler_a": "Euler a",
    "heun": "Heun",
    "ddim": "DDIM",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "unipc": "UniPC",
    "lcm": "LCM",
}
FUSIONS = ("independent", "none", "uniform", "gaussian", "cosine")
# Tiles that compute as one model while they denoise (sampling/bridges.py): convolution halos,
# shared GroupNorm statistics, attention to the other tiles — one channel alone, or all three.
BRIDGES = ("off", "halos", "norms", "attention", "full")
# Where bridges take the neighbours' values from: the previous step (tiles batched freely), or the
# same step (every tile of a process in one call, so each layer sees every tile's values of now).
BRIDGE_STEPS = ("previous", "same")
DTYPES = ("auto", "fp32", "fp16", "bf16")
# Seamless canvases: the tile plan wraps across these canvas edges (a torus), so the picture tiles.
WRAPS = ("none", "x", "y", "xy")
# Diffusion transformers (FLUX, SD3): where each tile's image tokens sit in the model's positional
# encoding. ``local``: at the origin, as for a picture of the tile's size — what the models were
# trained on, and the default (canvas positions put tiles where no training picture reached: FLUX's
# text sits at rotary position 0, SD3's table ends at pos_embed_max_size). ``canvas``: at the
# tile's place on the canvas. UNet models (SD, terrain) have no such positions and ignore it.
POSITIONS = ("local", "canvas")
# Live tile previews: ``linear`` (a latent→RGB map fitted to the model's VAE), ``taesd`` (a tiny
# autoencoder the person has: models/sd/taesd.py; refused when there is none) or ``auto`` (the tiny
# autoencoder when one is found, else linear). Previews only: the picture never depends on it.
PREVIEWS = ("auto", "linear", "taesd")
# How a diffusion transformer's weights (FLUX, SD3) are stored on the device: ``full`` in the run's
# dtype; ``fp8`` one byte a weight (float8 e4m3), each layer cast up to the run's dtype as it runs
# (diffusers' layerwise casting, which keeps the modulation and norm layers, a third of the weights,
# in the run's dtype): FLUX.1-dev's transformer in 15.2 GB instead of 23.8, for a small loss of
# precision and some speed. Other models refuse fp8.
WEIGHTS = ("full", "fp8")
DEFAULT_REFINE_STRENGTH = 0.6  # refine (engine.api.refine): how much of the selection is re-drawn by default
DEFAULT_REFINE_FEATHER = 64  # image px: a refine's soft border, centred on the selection's edge (docs/QUALITY.md)
DEFAULT_STRENGTH = 0.6  # image-to-image: how much of the init image is re-drawn when no strength is given

# Limits in image pixels. Sizes and tiles are multiples of 8 so that they map to whole latent
# pixels for the SD VAE (factor 8) and trivially for pixel-space models (factor 1).
SIZE_MULTIPLE = 8
ANCHORS = (0, 2, 4, 8, 16, 32, 64)  # image-to-image: keep the init image shrunk N× (0: off)
MIN_SIZE, MAX_SIZE = 64, 65536
MIN_TILE, MAX_TILE = 64, 4096
MAX_OVERLAP = 2048
MAX_GRID = 64
MAX_STEPS = 1000
MIN_GUIDANCE, MAX_GUIDANCE = 1.0, 30.0
MAX_SEED = 2**32 - 1
MAX_TILE_BATCH = 1024
MAX_PROMPT_CHARS = 4000
MIN_HOST_MEMORY, MAX_HOST_MEMORY = 0.5, 65536.0  # GiB: a host-memory budget (the process alone takes ~0.5)

DEFAULT_MODEL = "builtin:terrain"

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,2})?)$")


class RequestError(ValueError):
    """A request field (or file) holds a value outside what is allowed.

    ``field`` names the offending field, the message says what is allowed. User-facing
    front ends print ``str(error)`` and nothing else.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _check_int(name: str, value: Any, lo: int, hi: int, multiple: int = 1) -> int:
    # bool is an int subclass; a JSON `true` for a size is a user error, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(name, f"must be a whole number from {lo} to {hi}, got {value!r}")
    if not lo <= value <= hi:
        raise RequestError(name, f"must be from {lo} to {hi}, got {value}")
    if value % multiple:
        raise RequestError(name, f"must be a multiple of {multiple}, got {value}")
    return value


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise RequestError(name, f"must be one of {', '.join(choices)}; got {value!r}")
    return value


def _check_str(name: str, value: Any, max_chars: int) -> str:
    if not isinstance(value, str):
        raise RequestError(name, f"must be text, got {type(value).__name__}")
    if len(value) > max_chars:
        raise RequestError(name, f"must be at most {max_chars} characters, got {len(value)}")
    return value


def canvas_size(width: int, height: int, scale: int = 1) -> tuple[int, int]:
    """The canvas for a ``width`` × ``height`` picture made ``scale``× larger: each side rounded to
    the nearest multiple of SIZE_MULTIPLE (image to image at the picture's size, restyles, upscale
    passes; the engine resizes the picture to it and says so when that changes its aspect ratio)."""
    return (max(SIZE_MULTIPLE, round(width * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE),
            max(SIZE_MULTIPLE, round(height * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE))


def parse_grid(text: str) -> tuple[int, int]:
    """Parse ``RxC`` (e.g. ``3x5``) into (rows, cols)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not m:
        raise RequestError("grid", f"must look like ROWSxCOLS, e.g. 3x5; got {text!r}")
    return int(m.group(1)), int(m.group(2))


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WxH`` (e.g. ``4096x2048``) into (width, height)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not m:
        raise RequestError("size", f"must look like WIDTHxHEIGHT, e.g. 4096x4096; got {text!r}")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class GenerationRequest:
    """Everything a generation needs. Sizes, tile and overlap are in image pixels.

    Either ``grid`` (rows, cols) or ``tile`` (square tile side) may be given, not both; with
    neither the model's native tile size is used. ``overlap=None`` means a quarter of the tile.
    """

    model: str = DEFAULT_MODEL
    prompt: str = ""
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    grid: tuple[int, int] | None = None
    tile: int | None = None
    overlap: int | None = None
    steps: int = 30
    guidance: float = 7.5
    sampler: str = "dpmpp_2m_karras"
    seed: int = 0
    fusion: str = "cosine"
    jitter: bool = False
    global_context: float = 0.0
    bridges: str = "off"
    bridge_width: int = 0  # attention bridges: a strip this wide (px) along each border; 0 = whole neighbour tiles
    bridge_step: str = "previous"  # bridges: the neighbours' values of the previous or the same step (BRIDGE_STEPS)
    regions: tuple[Region, ...] = ()  # regional prompts over the main prompt (core/regions.py)
    # LoRAs applied to the model for this run (core/lora.py; models/lora.py applies them)
    loras: tuple[LoraSpec, ...] = ()
    init_image: str | None = None  # image-to-image: the picture to start from (a file path)
    strength: float | None = None  # 0 < S <= 1: how much of init_image is re-drawn (None: DEFAULT_STRENGTH)
    anchor: int = 0  # N: the result shrunk N× equals init_image shrunk N× (0: off; sampling/anchor.py)
    controls: tuple[Control, ...] = ()  # ControlNets, each cropped per tile (core/control.py)
    wrap: str = "none"  # seamless: none, x, y or xy
    positions: str = "local"  # diffusion transformers: tiles' token positions, local or canvas (POSITIONS)
    transformer: str | None = None  # FLUX/SD3: a single-file transformer (.safetensors) used in place of model's
    weights: str = "full"  # FLUX/SD3: the transformer's weights on the device, full or fp8 (WEIGHTS)
    preview: str = "auto"  # live tile previews: auto, linear or taesd (PREVIEWS)
    tile_batch: int | str = "auto"  # tiles per model call, or "auto": the most that fit (engine.memory)
    device: str = "auto"
    host_memory: float | None = None  # GiB the run may keep in host memory (None: $PARADIFF_HOST_MEMORY or all)
    compile: bool = False  # torch.compile the UNet (CUDA: channels-last too); speed only, same picture
    dtype: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise RequestError("model", "must name a model: builtin:NAME, a folder, a .safetensors file or a hub id")
        _check_str("model", self.model, 4096)
        _check_str("prompt", self.prompt, MAX_PROMPT_CHARS)
        _check_str("negative_prompt", self.negative_prompt, MAX_PROMPT_CHARS)
        _check_int("width", self.width, MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE)
        _check_int("height", self.height, MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE)
        if self.grid is not None and self.tile is not None:
            raise RequestError("grid", "give either grid (rows x cols) or tile (pixels), not both")
        if self.grid is not None:
            if isinstance(self.grid, str):
                object.__setattr__(self, "grid", parse_grid(self.grid))
            if not isinstance(self.grid, (tuple, list)) or len(self.grid) != 2:
                raise RequestError("grid", f"must be [rows, cols], got {self.grid!r}")
            rows = _check_int("grid", self.grid[0], 1, MAX_GRID)
            cols = _check_int("grid", self.grid[1], 1, MAX_GRID)
            object.__setattr__(self, "grid", (rows, cols))
        if self.tile is not None:
            _check_int("tile", self.tile, MIN_TILE, MAX_TILE, SIZE_MULTIPLE)
        if self.overlap is not None:
            _check_int("overlap", self.overlap, 0, MAX_OVERLAP, SIZE_MULTIPLE)
            if self.tile is not None and self.overlap >= self.tile:
                raise RequestError(
                    "overlap", f"must be less than the tile ({self.tile} px); got {self.overlap}"
                )
        _check_int("steps", self.steps, 1, MAX_STEPS)
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)):
            raise RequestError("guidance", f"must be a number from {MIN_GUIDANCE} to {MAX_GUIDANCE}")
        if not MIN_GUIDANCE <= float(self.guidance) <= MAX_GUIDANCE:  # also rejects NaN
            raise RequestError(
                "guidance", f"must be from {MIN_GUIDANCE} to {MAX_GUIDANCE}, got {self.guidance}"
            )
        object.__setattr__(self, "guidance", float(self.guidance))
        _check_choice("sampler", self.sampler, SAMPLERS)
        _check_int("seed", self.seed, 0, MAX_SEED)
        _check_choice("fusion", self.fusion, FUSIONS)
        _check_choice("bridges", self.bridges, BRIDGES)
        if self.bridges != "off" and self.fusion == "independent":
            raise RequestError("bridges", "connect tiles denoised together at every step; fusion independent denoises "
                                          "them one by one: use another fusion or bridges off")
        if self.bridges != "off" and self.jitter is True:
            raise RequestError("bridges", "pass values between tiles that keep their place from step to step; "
                                          "jitter moves the grid every step: use bridges off or no jitter")
        if self.bridges != "off" and self.compile is True:
            raise RequestError("bridges", "reach into the model's layers, which a compiled model hides: use bridges "
                                          "off or no compile")
        _check_int("bridge_width", self.bridge_width, 0, MAX_TILE // 2, SIZE_MULTIPLE)
        _check_choice("bridge_step", self.bridge_step, BRIDGE_STEPS)
        if self.bridge_step == "same" and self.bridges == "off":
            raise RequestError("bridge_step", "says where bridges take their neighbours' values from: use bridges "
                                              "halos, norms, attention or full with it, or bridge_step previous")
        if self.bridge_width and self.bridges not in ("attention", "full"):
            raise RequestError("bridge_width", "sets the strip that attention bridges reach into: use bridges "
                                               f"attention or full, or bridge_width 0 (bridges is {self.bridges})")
        if not isinstance(self.jitter, bool):
            raise RequestError("jitter", f"must be true or false, got {self.jitter!r}")
        if isinstance(self.global_context, bool) or not isinstance(self.global_context, (int, float)) \
                or not 0.0 <= float(self.global_context) <= 1.0:
            raise RequestError("global_context", f"must be a number from 0 (off) to 1, got {self.global_context!r}")
        object.__setattr__(self, "global_context", float(self.global_context))
        self._check_compositions()
        tb = self.tile_batch
        if tb != "auto" and (isinstance(tb, bool) or not isinstance(tb, int) or not 1 <= tb <= MAX_TILE_BATCH):
            raise RequestError("tile_batch", f"must be auto or a whole number from 1 to {MAX_TILE_BATCH}, got {tb!r}")
        if self.bridge_step == "same" and self.tile_batch != "auto":
            raise RequestError("tile_batch", "same-step bridges run every tile of a step in one call (each process "
                                             f"its own tiles): use tile_batch auto (got {self.tile_batch!r}), or "
                                             "bridge_step previous")
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device):
            raise RequestError("device", f"must be auto, cpu, cuda, cuda:N or mps; got {self.device!r}")
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("weights", self.weights, WEIGHTS)
        if self.host_memory is not None:
            if isinstance(self.host_memory, bool) or not isinstance(self.host_memory, (int, float)) \
                    or not MIN_HOST_MEMORY <= float(self.host_memory) <= MAX_HOST_MEMORY:  # also NaN
                raise RequestError("host_memory", f"must be a number of GiB from {MIN_HOST_MEMORY} to "
                                                  f"{MAX_HOST_MEMORY}, or none (all the machine has); got "
                                                  f"{self.host_memory!r}")
            object.__setattr__(self, "host_memory", float(self.host_memory))
        if not isinstance(self.compile, bool):
            raise RequestError("compile", f"must be true or false, got {self.compile!r}")
        if not isinstance(self.extra, dict):
            raise RequestError("extra", "must be an object of backend options")

    def _check_compositions(self) -> None:
        if not isinstance(self.regions, (list, tuple)):
            raise RequestError("regions", "must be a list of regions")
        if len(self.regions) > MAX_REGIONS:
            raise RequestError("regions", f"at most {MAX_REGIONS} regions; got {len(self.regions)}")
        try:
            regions = tuple(parse_region(r, i, self.width, self.height, MAX_PROMPT_CHARS)
                            for i, r in enumerate(self.regions))
        except RegionError as exc:
            raise RequestError(exc.field, exc.message) from None
        object.__setattr__(self, "regions", regions)
        if regions and self.bridges != "off":
            raise RequestError("regions", "run each tile once per region's prompt, which bridges cannot follow: use "
                                          "bridges off with regions")
        if self.init_image is not None and (not isinstance(self.init_image, str) or not self.init_image.strip()
                                            or len(self.init_image) > 4096):
            raise RequestError("init_image", f"must be the path of an image file, got {self.init_image!r}")
        if self.strength is not None:
            if self.init_image is None:
                raise RequestError("strength", "sets how much of an init image is re-drawn: give init_image too, or "
                                               "no strength")
            if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) \
                    or not 0.0 < float(self.strength) <= 1.0:
                raise RequestError("strength", f"must be a number above 0 and at most 1, got {self.strength!r}")
            object.__setattr__(self, "strength", float(self.strength))
        if isinstance(self.anchor, bool) or self.anchor not in ANCHORS:
            raise RequestError("anchor", "the result shrunk N× keeps the init image shrunk N×: must be 0 (off) or "
                                         f"{', '.join(map(str, ANCHORS[1:-1]))} or {ANCHORS[-1]}, got {self.anchor!r}")
        if self.anchor:
            if self.init_image is None:
                raise RequestError("anchor", "keeps an init image's large shapes: give init_image too, or anchor 0")
            if self.width % self.anchor or self.height % self.anchor:
                fits = [n for n in ANCHORS[1:] if not self.width % n and not self.height % n]
                raise RequestError("anchor", f"{self.anchor} must divide the width and height ({self.width}x"
                                             f"{self.height}): use {' or '.join(map(str, fits))}")
            if self.wrap != "none":
                raise RequestError("anchor", "keeps the init image's large shapes, which are not seamless: use anchor "
                                             "0 with wrap")
        if self.init_image is not None and self.global_context > 0:
            raise RequestError("global_context", "lays out the canvas from noise, and an init image already gives the "
                                                 "layout: use global_context 0 with init_image")
        if self.init_image is not None and self.fusion == "independent":
            raise RequestError("init_image", "starts the shared canvas from a picture, and fusion independent has no "
                                             "shared canvas: use another fusion with init_image")
        try:
            object.__setattr__(self, "controls", parse_controls(self.controls, self.init_image is not None))
        except ControlError as exc:
            raise RequestError(exc.field, exc.message) from None
        try:
            loras = parse_loras(self.loras)
        except LoraError as exc:
            raise RequestError(exc.field, exc.message) from None
        object.__setattr__(self, "loras", loras)
        if loras and self.compile is True:
            raise RequestError("loras", "change the model's layers for the run, which a compiled model hides: use no "
                                        "compile with LoRAs")
        if loras and self.weights == "fp8":
            raise RequestError("loras", f"are fused into the model's weights, which {self.weights} storage would "
                                        "round: use weights full with LoRAs")
        _check_choice("wrap", self.wrap, WRAPS)
        _check_choice("positions", self.positions, POSITIONS)
        _check_choice("preview", self.preview, PREVIEWS)
        if self.transformer is not None and (not isinstance(self.transformer, str) or not self.transformer.strip()
                                             or len(self.transformer) > 4096):
            raise RequestError("transformer", f"must be the path of a .safetensors file, got {self.transformer!r}")
        if self.wrap != "none" and self.global_context > 0:
            raise RequestError("wrap", "the global-context pass is one tile across and cannot wrap: use "
                                       "global_context 0 with wrap")
        if self.wrap != "none" and self.fusion == "independent":
            raise RequestError("wrap", "needs one shared canvas, and fusion independent denoises each tile on its "
                                       "own: use another fusion, or wrap none")
        if self.wrap != "none" and self.bridges != "off":
            raise RequestError("wrap", "bridges do not reach across the wrapped edges yet: use bridges off with wrap")

    @property
    def image_strength(self) -> float:
        """The strength an init image is re-drawn with (1.0 without one: text-to-image)."""
        if self.init_image is None:
            return 1.0
        return DEFAULT_STRENGTH if self.strength is None else self.strength

    # -- derived -----------------------------------------------------------------------------

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def replace(self, **changes: Any) -> GenerationRequest:
        """A copy with some fields changed (validated like a new request)."""
        return dataclasses.replace(self, **changes)

    # -- JSON ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["grid"] = list(self.grid) if self.grid is not None else None
        d["regions"] = [r.to_dict() for r in self.regions]
        d["controls"] = [c.to_dict() for c in self.controls]
        d["loras"] = [lo.to_dict() for lo in self.loras]
        return {"schema": SCHEMA_VERSION, **d}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Any) -> GenerationRequest:
        if not isinstance(data, dict):
            raise RequestError("request", "must be a JSON object")
        data = dict(data)
        schema = data.pop("schema", SCHEMA_VERSION)
        if schema != SCHEMA_VERSION:
            raise RequestError("schema", f"this Paradiff reads request schema {SCHEMA_VERSION}, got {schema!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RequestError(unknown[0], f"is not a request field (known: {', '.join(sorted(known))})")
        if isinstance(data.get("grid"), list):
            data["grid"] = tuple(data["grid"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> GenerationRequest:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError("request", f"is not valid JSON ({exc})") from None
        return cls.from_dict(data)
