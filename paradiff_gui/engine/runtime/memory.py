"""Memory planning: what a request needs on the device, the tile batch that fits, and a clear
refusal, before any work, of what cannot fit.

The peak of a run is the largest of two phases:

- **denoising**: weights + the canvas tensors (latents, the scaled input, three accumulators of
  the fusion, the fused prediction, noise: ~8 canvases of C·h·w float32) + the activations of one
  tile batch (views × bytes per view);
- **decoding**: weights + the latent canvas + one decode tile's activations (the picture itself
  is assembled on the host).

Bytes per view and per decoded pixel are rules of thumb for SD-style UNets and VAEs, scaled by
the model's width, tile area and precision:

- UNet: ``80 × base channels × latent tile px × dtype bytes`` (SD1.5 at 512², fp16: 0.21 GB a
  view, from public fp16 batch-size figures; ``benchmarks/bench_gpu.py`` prints estimate and
  measurement side by side for SD1.5 and SDXL);
- diffusion transformers (FLUX, SD3): ``20 × tokens × hidden × dtype bytes``, tokens = the tile's
  image tokens (one per 2×2 latent px) + the prompt's (FLUX.1-dev 512, schnell 256, SD3 77 + 256):
  about 20 (tokens × hidden) tensors alive at the peak of one block — the residual stream, its
  normalised copy, Q, K, V and their rotated/normalised copies, the attention output, the MLP's
  4·hidden and the single blocks' concatenation — with attention through PyTorch's SDPA, whose
  flash / memory-efficient kernels (CUDA, fp16/bf16/fp32; the CPU's flash kernel) never hold the
  tokens² scores. Without them (``fused_attention=False``) each view adds ``2 × heads × tokens² ×
  dtype bytes`` (the scores and their softmax). FLUX.1-dev at 1024² in bf16: 0.53 GiB a view
  fused, 2.4 GiB not. Only the transformer and the VAE count as weights on the device: the text
  encoders visit it for the prompt's encode alone (models/flow.py); ``weights fp8`` stores the
  transformer at one byte a weight but for the layers diffusers keeps in the run's dtype (a third);
- VAE decode: 2.7 kB per output pixel at fp16 (41.6 GiB measured for an untiled 4096² decode
  on an H200; FLUX's and SD3's 16-channel VAE has SD's widths, so the same rule).

LoRAs (models/lora.py) count from their files' headers (``core.lora.lora_size``): their own
weights on the device (PEFT keeps them while they are fused), and on the host the snapshot of the
layers they change (the exact base weights put back after the run). ControlNets count their
weights from their files' headers too; an SD ControlNet grows a view by a share
(CONTROL_VIEW_SHARE), a FLUX.1 one by its block samples (CONTROL_DIT_SAMPLE_SETS), and FLUX.1's
control latents (one canvas each, in the run's dtype) stay on the device.

They are estimates: ``--tile-batch auto`` keeps a 15 % margin below the free memory.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import math
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from ..core.controlnet_files import describe_controlnet
from ..core.lora import lora_size
from ..core.modelinfo import ModelInfo
from ..core.request import MAX_HOST_MEMORY, MAX_TILE_BATCH, MIN_HOST_MEMORY, GenerationRequest, RequestError

UNET_BYTES_PER_CHANNEL_PX = 80  # x base channels x latent px x dtype bytes = activations of one view
VAE_DECODE_BYTES_PER_PX = 1350  # x dtype bytes (2.7 kB at fp16) per decoded image pixel
CANVASES = 8  # float32 canvas-sized tensors alive while denoising
DIT_LIVE_TENSORS = 20  # (tokens × hidden) tensors alive at a transformer block's peak (a rule of thumb)
DIT_PATCH = 2  # latent px a side of one FLUX/SD3 image token
MARGIN = 0.85  # use at most this share of the free memory
CPU_AUTO_BATCH = 8  # on a CPU, batching stops paying beyond a few tiles; memory is rarely the limit
DECODE_TILE_PX = 1024 * 1024  # image px of one decode tile (vae.DECODE_TILE latent px, x8 a side)

GiB = 1 << 30


def _dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "fp32" else 2


@dataclass(frozen=True)
class Footprint:
    """Bytes a request needs on its device, by part."""

    weights: int
    canvas: int  # denoising canvases (float32)
    per_view: int  # activations of one model evaluation of one tile
    views_per_tile: int  # 2 with classifier-free guidance
    decode: int  # one decode tile's activations
    tiles: int
    bridges: int = 0  # what bridges keep between calls (two steps of neighbour values), measured

    def denoise_peak(self, tile_batch: int) -> int:
        return self.weights + self.canvas + self.bridges + tile_batch * self.views_per_tile * self.per_view

    def decode_peak(self) -> int:
        return self.weights + self.canvas // CANVASES + self.decode

    def peak(self, tile_batch: int) -> int:
        return max(self.denoise_peak(tile_batch), self.decode_peak())

    def describe(self, tile_batch: int) -> str:
        bridges = f", bridges {self.bridges / GiB:.2f}" if self.bridges else ""
        return (f"≈ {self.peak(tile_batch) / GiB:.1f} GiB (weights {self.weights / GiB:.1f}, canvas "
                f"{self.canvas / GiB:.2f}{bridges}, {tile_batch} tile(s) x {self.views_per_tile} view(s) "
                f"{tile_batch * self.views_per_tile * self.per_view / GiB:.1f}, decode tile {self.decode / GiB:.1f})")


def dit_view_bytes(hidden: int, heads: int, image_tokens: int, text_tokens: int, dtype_bytes: int, *,
                   fused_attention: bool = True) -> int:
    """Activations of one view of a diffusion transformer (FLUX, SD3) over ``image_tokens`` +
    ``text_tokens``: DIT_LIVE_TENSORS (tokens × hidden) tensors, plus — only where attention is not
    computed by a fused kernel — the tokens² scores and their softmax for every head."""
    tokens = image_tokens + text_tokens
    scores = 0 if fused_attention else 2 * heads * tokens * tokens * dtype_bytes
    return DIT_LIVE_TENSORS * tokens * hidden * dtype_bytes + scores


def device_weights(info: ModelInfo, dtype_bytes: int, weights: str = "full") -> int:
    """Bytes of ``info``'s weights on its device in a run of ``dtype_bytes`` a value: what is stored
    on disk rescaled to the run's dtype; with ``weights`` fp8 the transformer at 1 byte a weight,
    but for the layers fp8 storage keeps in the run's dtype (``info.fp8_full_params``)."""
    stored = info.weight_dtype_bytes
    total = (info.weight_bytes or 0) * dtype_bytes // stored
    if weights == "fp8" and info.transformer_bytes:
        params = info.transformer_bytes // stored
        full = min(info.fp8_full_params, params)
        total -= (params - full) * (dtype_bytes - 1)  # those go from dtype_bytes to 1 byte each
    return total


# ControlNets (models/sd/control.py) run before the UNet on the same views: one at a time, each
# the UNet's encoder half and middle block; their summed residuals (the skip tensors) stay until
# the UNet has run. Measured on the real geometry (benchmarks/control_memory.py, live operator
# outputs, fused attention): a ControlNet adds 0.30 of an SD 1.5 view, 0.40 of an SDXL one. The
# view grows by this share while any ControlNet steers (the UNet's own figure keeps its headroom).
CONTROL_VIEW_SHARE = 0.4
# The control maps stay on the host (uint8, 3 bytes an image px); each view gets its crop of each
# map on the device: the uint8 upload, diffusers' float32 ÷ 255, then the run's dtype.
CONTROL_CROP_BYTES = 1 + 4  # per sample, plus the run's dtype


def control_crop_bytes(request: GenerationRequest, tile_image_px: int, dtype_bytes: int) -> int:
    """Device bytes of one view's crops of the request's control maps (image px of a tile)."""
    return len(request.controls) * 3 * tile_image_px * (CONTROL_CROP_BYTES + dtype_bytes)


def control_map_bytes(request: GenerationRequest) -> int:
    """Host bytes of the request's control maps: uint8 at canvas size, and two working copies
    of one map while it is read and resized or preprocessed."""
    n = len(request.controls)
    return (n + 2) * request.width * request.height * 3 if n else 0
# A FLUX.1 ControlNet (models/flux/control.py) runs before the transformer on the same tokens: its
# blocks' activations are the transformer's (same width and tokens) and not alive with the
# transformer's; what stays is its block samples, one (tokens × hidden) tensor per block, and with
# several ControlNets their running sum. A view grows by CONTROL_DIT_SAMPLE_SETS (+1 for several) ×
# blocks × tokens × hidden. Measured on the real geometry (benchmarks/flux_control_memory.py:
# FLUX.1-dev, an InstantX-shaped ControlNet of 5 + 10 blocks, a 1024² tile, bf16, live operator
# outputs): one ControlNet adds 1.37 such sets (0.54 GiB), two add 2.26.
CONTROL_DIT_SAMPLE_SETS = 1.5


def _safetensors_params(path: Path) -> int:
    """Number of values in a .safetensors file, from its JSON header alone."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def control_weights(request: GenerationRequest, dtype_bytes: int) -> int:
    """Bytes of the request's ControlNets on the device in the run's dtype (from the weight files'
    headers; a file that cannot be read counts 0 here and is refused by name when it loads)."""
    total = 0
    for model in {c.model for c in request.controls}:
        p = Path(model).expanduser()
        files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
        for f in files[:1]:
            with contextlib.suppress(OSError, ValueError, KeyError, struct.error):
                total += _safetensors_params(f) * dtype_bytes
    return total


def flux_control_blocks(request: GenerationRequest) -> int:
    """The most blocks (double + single) among the request's FLUX.1 ControlNets, from their configs
    or headers (core/controlnet_files.py); 0 when none is one or none can be read."""
    found = [describe_controlnet(c.model) for c in request.controls]
    return max((f.flux_blocks for f in found if f is not None and f.family == "FLUX.1"), default=0)


def lora_params(request: GenerationRequest) -> tuple[int, int]:
    """(the LoRAs' own parameters, the base model's parameters in the layers they change), from
    the files' headers; a file that cannot be read counts nothing (the run refuses it by name)."""
    own = base = 0
    for spec in request.loras:
        try:
            size = lora_size(Path(spec.path).expanduser())
        except (OSError, ValueError):
            continue
        own += size.lora_params
        base += size.base_params
    return own, base


def footprint(request: GenerationRequest, info: ModelInfo, dtype: str = "fp16") -> Footprint:
    """What ``request`` needs with ``info``'s model in ``dtype`` (fp32, fp16 or bf16)."""
    plan = info.plan(request)
    b = _dtype_bytes(dtype)
    weights = device_weights(info, b, request.weights) + lora_params(request)[0] * b
    tile_px = plan.tile_h * plan.tile_w  # latent px
    if info.hidden:
        image_tokens = (plan.tile_h // DIT_PATCH) * (plan.tile_w // DIT_PATCH)
        per_view = dit_view_bytes(info.hidden, info.heads or 1, image_tokens, info.text_tokens, b)
    elif info.view_bytes_per_px:
        per_view = info.view_bytes_per_px * tile_px * b
    elif info.unet_channels:
        per_view = UNET_BYTES_PER_CHANNEL_PX * info.unet_channels * tile_px * b
    else:
        per_view = 64 * info.channels * tile_px * 4  # a small pixel-space model: its input many times over
    if request.controls:
        weights += control_weights(request, b)
        blocks = flux_control_blocks(request) if info.hidden else 0
        if blocks:
            image_tokens = (plan.tile_h // DIT_PATCH) * (plan.tile_w // DIT_PATCH)
            sets = CONTROL_DIT_SAMPLE_SETS + (len(request.controls) > 1)
            per_view += int(sets * blocks * (image_tokens + info.text_tokens) * info.hidden * b)
        else:
            per_view = int(per_view * (1 + CONTROL_VIEW_SHARE)) + control_crop_bytes(request, tile_px * info.scale ** 2,
                                                                                    b)
    views = info.views_per_tile if request.guidance > 1.0 else 1
    canvas = CANVASES * info.channels * plan.height * plan.width * 4
    if request.controls and info.hidden:  # FLUX.1: each control's latents stay on the device at canvas size
        canvas += len(request.controls) * info.channels * plan.height * plan.width * b
    decode_px = min(request.width * request.height, DECODE_TILE_PX)
    decode = VAE_DECODE_BYTES_PER_PX * decode_px * b if info.scale > 1 else 0
    return Footprint(weights, canvas, per_view, views, decode, len(plan))


def choose_tile_batch(fp: Footprint, free_bytes: int | None, device_type: str) -> int:
    """The largest tile batch that fits in ``free_bytes`` with a margin (never more than the
    tiles); on a CPU a small fixed batch. Raises RequestError when not even one tile fits."""
    if device_type != "cuda" or free_bytes is None:
        return max(1, min(fp.tiles, CPU_AUTO_BATCH))
    check_fits(fp, 1, free_bytes, device_type)
    budget = free_bytes * MARGIN - fp.weights - fp.canvas - fp.bridges
    per_batch = fp.views_per_tile * fp.per_view
    return max(1, min(fp.tiles, MAX_TILE_BATCH, int(budget // per_batch)))


def check_fits(fp: Footprint, tile_batch: int, free_bytes: int | None, device_type: str,
               where: str = "the GPU") -> None:
    """Refuse, with the estimate, a request whose peak exceeds the free memory."""
    if device_type != "cuda" or free_bytes is None:
        return
    if fp.peak(tile_batch) <= free_bytes * MARGIN:
        return
    field = "tile_batch" if fp.peak(1) <= free_bytes * MARGIN else "size"
    hint = ("use a smaller --tile-batch, or --tile-batch auto" if field == "tile_batch" else
            "use smaller tiles or a smaller size, fp16, or more GPUs (--devices)")
    raise RequestError(field, f"needs {fp.describe(tile_batch)} but {where} has {free_bytes / GiB:.1f} GiB free; "
                              f"{hint}")


# -- Text encoders: on the device for the encode only -------------------------------------------------
#
# FLUX's and SD3's text encoders stay on the CPU between runs (models/flow.py: ``encoders_on``) and
# visit the device for the prompt's encode, when it holds them: their weights and the encode's
# activations (a few (tokens × 4096) tensors of a 512-token prompt: tens of MB; 256 MiB allowed).

ENCODE_ACTIVATION_BYTES = 256 * 2**20


def encoders_fit(encoder_bytes: int, free_bytes: int | None) -> bool:
    """Whether text encoders of ``encoder_bytes`` may visit a device with ``free_bytes`` free (None:
    not known, e.g. MPS — they go) for one encode, with the planner's margin."""
    return free_bytes is None or encoder_bytes + ENCODE_ACTIVATION_BYTES <= free_bytes * MARGIN


# -- Host memory: planned like device memory ---------------------------------------------------------
#
# What a run keeps in the machine's RAM at its peak: the noise and the finished latent canvas
# (float32), the picture, the decoder's working copies (SD's fallback decode assembles a float32
# picture and its weight sum: 16 bytes a pixel; the terrain decode's float64 heights: 24), an init
# image as float32, the regions' mixing weights — and on a CPU the device's own footprint (weights,
# the denoising canvases, one tile batch), since there the device *is* the host. The exact tiled
# decode's stage canvases are not counted: they stay in memory only when half the free memory
# holds them, and otherwise spill to the scratch disk (host memory then holds bands of them) or
# give way to the per-tile decoder, which is said up front (see models/sd/vae.py).

HOST_DECODE_BYTES_PER_PX = {"rgb": 16, "height": 24}  # working copies of the decode, per image px
# The process itself: Python, torch, diffusers and their libraries (a 1024² terrain run, 1 step,
# peaked at 790 MB resident; the parts above come to 322 MB of it).
HOST_PROCESS_BYTES = 512 * 2**20
HOST_MARGIN = 0.9  # use at most this share of the available memory


@dataclass(frozen=True)
class HostFootprint:
    """Bytes a request needs in host memory at its peak, by part."""

    canvases: int  # noise and the finished latents (float32)
    picture: int  # the decoded picture and the decoder's working copies
    inputs: int  # an init image (float32), the regions' mixing weights, the control maps (uint8)
    device: int  # on a CPU: the device footprint (weights, denoising canvases, a tile batch)
    process: int = HOST_PROCESS_BYTES
    output: int = 0  # of ``picture``: the finished picture alone (8 or 16 bits a sample)
    weights: int = 0  # of ``device``: the model's weights (they stay while the picture decodes)
    encoders: int = 0  # text encoders kept on the host on any device (FLUX/SD3: models/flow.py)
    loras: int = 0  # the base weights of the layers LoRAs change, kept to be put back (models/lora.py)

    @property
    def total(self) -> int:
        return self.canvases + self.picture + self.inputs + self.device + self.process + self.encoders + self.loras

    @property
    def held_while_decoding(self) -> int:
        """What the rest of the run holds while the exact decode works: the process, the latents,
        the inputs, the finished picture and (on a CPU) the weights — not the denoising canvases,
        the tile batch or the per-tile decoder's working copies, which are gone or not used then."""
        return self.canvases + self.inputs + self.output + self.weights + self.process + self.encoders + self.loras

    def describe(self) -> str:
        device = f", model and denoising {self.device / GiB:.1f}" if self.device else ""
        inputs = f", init image and regions {self.inputs / GiB:.1f}" if self.inputs else ""
        encoders = f", text encoders {self.encoders / GiB:.1f}" if self.encoders else ""
        encoders += f", LoRA snapshot {self.loras / GiB:.2f}" if self.loras else ""
        return (f"≈ {self.total / GiB:.1f} GiB of host memory (canvases {self.canvases / GiB:.1f}, picture and "
                f"decode {self.picture / GiB:.1f}{inputs}{device}{encoders}, the process {self.process / GiB:.1f})")


def host_footprint(request: GenerationRequest, info: ModelInfo, device_type: str, dtype: str = "fp32",
                   tile_batch: int | None = None) -> HostFootprint:
    """What ``request`` keeps in host memory with ``info``'s model on a ``device_type`` device;
    on a CPU with ``tile_batch`` tiles a call (default: the request's, or the automatic one)."""
    plan = info.plan(request)
    latent = info.channels * plan.height * plan.width * 4
    px = request.width * request.height
    out_bytes = 2 if info.output == "height" else 3
    picture = px * (out_bytes + HOST_DECODE_BYTES_PER_PX.get(info.output, 16))
    inputs = (px * (1 if info.output == "height" else 3) * 4 if request.init_image else 0) \
        + (len(request.regions) + 1) * plan.height * plan.width * 4 * (1 if request.regions else 0) \
        + control_map_bytes(request)  # the control maps, uint8 at canvas size (never on the device)
    device = weights = 0
    if device_type == "cpu":
        fp = footprint(request, info, dtype)
        if tile_batch is None:
            tile_batch = request.tile_batch if isinstance(request.tile_batch, int) else CPU_AUTO_BATCH
        device = fp.denoise_peak(max(1, min(fp.tiles, tile_batch)))
        weights = fp.weights
    encoders = info.host_weight_bytes * _dtype_bytes(dtype) // info.weight_dtype_bytes
    snapshot = lora_params(request)[1] * _dtype_bytes(dtype) if request.loras else 0
    return HostFootprint(2 * latent, picture, inputs, device, output=px * out_bytes, weights=weights,
                         encoders=encoders, loras=snapshot)


def host_available() -> int | None:
    """Memory the kernel says it can give without swapping (MemAvailable); None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_host_fits(hf: HostFootprint, available: int | None, limit: int | None = None,
                    smallest: HostFootprint | None = None) -> None:
    """Refuse, with the estimate and what to change, a request the host's memory cannot hold —
    before any work, instead of the kernel's out-of-memory killer hours later — or one over the
    user's budget (``limit``, bytes), saying the smallest budget that would work (that of
    ``smallest``, the leanest plan of the same request; ``hf`` itself by default)."""
    if limit is not None:
        least = (smallest or hf).total
        if least > limit:
            need = math.ceil(least / GiB * 10) / 10
            raise RequestError("host_memory", f"the run needs {(smallest or hf).describe()} but the budget is "
                                              f"{limit / GiB:.1f} GiB; the smallest budget that would work is "
                                              f"{need:.1f} GiB (or use a smaller size)")
        if hf.total > limit:  # a tile batch the person fixed on a CPU: fewer tiles a call would fit
            raise RequestError("tile_batch", f"the run needs {hf.describe()} but the host-memory budget is "
                                             f"{limit / GiB:.1f} GiB: use --tile-batch auto, which keeps within it")
    if available is None or hf.total <= available * HOST_MARGIN:
        return
    raise RequestError("size", f"needs {hf.describe()} but this machine has {available / GiB:.1f} GiB available; "
                               "use a smaller size, a GPU (--device cuda), or close what else uses memory")


# -- The user's host-memory budget ------------------------------------------------------------------
#
# A person who keeps working in other programs while an 8K picture decodes says how much memory the
# run may take: ``request.host_memory`` (GiB; the CLI's --host-memory, the app's setting), else
# $PARADIFF_HOST_MEMORY, else none (what the machine has). It caps, it never grants: the run also
# stays within what the machine has. It bounds the refusal above, a CPU's automatic tile batch, and
# the exact decode's choice of where its stage canvases live (in memory, spilled, recomputed, or
# the per-tile decoder: models/sd/vae.py), which reads the room left by the rest of the run from
# ``decode_room`` while a generation runs.

HOST_MEMORY_ENV = "PARADIFF_HOST_MEMORY"

_DECODE_ROOM: contextvars.ContextVar[int | None] = contextvars.ContextVar("paradiff_decode_room", default=None)


def host_limit(request: GenerationRequest) -> int | None:
    """The budget in bytes for ``request``: its ``host_memory``, else ``$PARADIFF_HOST_MEMORY``
    (GiB), else None. A malformed environment value is refused by name, never ignored."""
    if request.host_memory is not None:
        return int(request.host_memory * GiB)
    text = os.environ.get(HOST_MEMORY_ENV, "").strip()
    if not text:
        return None
    try:
        gib = float(text)
    except ValueError:
        gib = math.nan
    if not MIN_HOST_MEMORY <= gib <= MAX_HOST_MEMORY:  # also NaN
        raise RequestError("host_memory", f"${HOST_MEMORY_ENV} must be a number of GiB from {MIN_HOST_MEMORY} to "
                                          f"{MAX_HOST_MEMORY}; got {text!r}")
    return int(gib * GiB)


def host_plan(request: GenerationRequest, info: ModelInfo, device_type: str, dtype: str,
              limit: int | None) -> tuple[HostFootprint, HostFootprint, int | None]:
    """The host footprint of ``request`` as it will run, that of its leanest plan (one tile a
    call), and on a CPU with tile_batch auto under a budget the tile batch that keeps within it
    (the largest up to the usual automatic batch; None where the budget does not choose it).
    Only the tile batch differs between them, so the plan (slow to build for a huge canvas) is
    built once for the canvases and once for the device footprint."""
    leanest = host_footprint(request, info, device_type, dtype, tile_batch=1)
    if device_type != "cpu":
        return leanest, leanest, None
    fp = footprint(request, info, dtype)

    def at(batch: int) -> HostFootprint:
        return dataclasses.replace(leanest, device=fp.denoise_peak(max(1, min(fp.tiles, batch))))

    if request.tile_batch != "auto":
        return at(int(request.tile_batch)), leanest, None
    if limit is None:
        return at(CPU_AUTO_BATCH), leanest, None
    batch = 1
    for b in range(2, CPU_AUTO_BATCH + 1):
        if at(b).total > limit:
            break
        batch = b
    return at(batch), leanest, batch


@contextlib.contextmanager
def decode_budget(room: int | None):
    """While a generation runs: the bytes of host memory its exact decode may take under the
    user's budget (None: no budget)."""
    token = _DECODE_ROOM.set(None if room is None else max(0, room))
    try:
        yield
    finally:
        _DECODE_ROOM.reset(token)


def decode_room() -> int | None:
    """The room the user's budget leaves the exact decode in the current run (None: no budget)."""
    return _DECODE_ROOM.get()


# -- Scratch disk: where data too big for the host memory goes -------------------------------------
#
# The exact tiled decode spills its stage canvases there when the host cannot hold them
# (models/sd/vae.py). Not the system's temporary folder: on many systems /tmp is a tmpfs, which
# lives in the very memory the spill is meant to spare.

SCRATCH_ENV = "PARADIFF_SCRATCH"


def scratch_dir() -> Path:
    """The scratch folder: ``$PARADIFF_SCRATCH``, else ``scratch`` in the user cache folder
    (created on first use)."""
    from platformdirs import user_cache_path

    folder = Path(os.environ[SCRATCH_ENV]) if os.environ.get(SCRATCH_ENV) else user_cache_path("paradiff") / "scratch"
    with contextlib.suppress(OSError):  # disk_free then says 0 for it, and the caller names it
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def disk_free(folder: Path) -> int:
    """Bytes free for this user in ``folder``'s file system (0 when it cannot be read)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0
