"""What the flow-matching diffusion transformers (FLUX.1 in ``flux/``, SD3/3.5 in ``sd3/``) share:
the 16-channel VAE and its 2×2 latent patches, the flow-matching scheduler behind the loop's
interface, the schedule's shift, the tiles' positions, previews and loading.

Flow matching: x_σ = (1 − σ)·x0 + σ·ε, the model predicts the velocity v = ε − x0, and a step is
x ← x + (σ_next − σ)·v (Esser et al. 2024, "Scaling Rectified Flow Transformers", eq. 1–3). The
velocity is what the loop fuses across tiles, exactly as it fuses an SD model's noise prediction.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.plan import Tile, TilePlan
from ..core.request import GenerationRequest, RequestError
from ..runtime import memory
from .base import ModelUnavailable
from .sd import preview as previews
from .sd import taesd
from .sd.codec import VaeCodec

PATCH = 2  # latent px a side of one transformer token (FLUX packs 2×2, SD3 patchifies 2×2)
FLOW_SAMPLERS = ("euler", "heun")
NUM_TRAIN_TIMESTEPS = 1000  # timesteps are σ·1000 (diffusers' convention for these schedulers)


# -- 2×2 patches --------------------------------------------------------------------------------


def pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents → (B, h/2·w/2, 4C) tokens, each token one 2×2 patch (FLUX's layout:
    channel-major within the patch, rows of patches in order)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`pack` for a (h, w) latent crop (latent px)."""
    b, _, d = tokens.shape
    c = d // (PATCH * PATCH)
    x = tokens.view(b, h // PATCH, w // PATCH, c, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def tokens_of(tile_h: int, tile_w: int) -> int:
    """Transformer tokens of a tile of (tile_h, tile_w) latent px."""
    return (tile_h // PATCH) * (tile_w // PATCH)


# -- the schedule ---------------------------------------------------------------------------------


def dynamic_mu(config: Any, tokens: int) -> float:
    """The resolution-dependent shift (FLUX; SD3.5 configs may ask for it too): μ grows linearly with
    the image's token count between the config's base and max sequence lengths — diffusers' own
    ``calculate_shift``, with the pipelines' defaults for keys a config lacks."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                            config.get("base_shift", 0.5), config.get("max_shift", 1.15))


class FlowScheduler:
    """A diffusers flow-matching scheduler with the interface the synchronized loop uses for every
    model: ``scale_model_input`` (identity: flow models take x as it is), ``init_noise_sigma`` (1:
    the run starts from pure noise), ``add_noise`` (the forward process, diffusers' ``scale_noise``),
    ``set_timesteps(steps, device)`` with the pipeline's own σ list and shift, ``step``.

    The shift of a dynamic schedule (FLUX) depends on the token count of what the model sees. The
    model sees one tile, never the canvas, so the schedule is the one the pipeline would use for a
    picture of the tile's size: :meth:`for_tile` sets it (the loop calls it with each plan), and a
    4096² canvas of 1024² tiles takes the 1024² schedule. The canvas's token count would push μ far
    past anything the model was trained at (μ = 0.5…1.15 over 256…4096 tokens; 8192² is 262144).
    """

    init_noise_sigma = 1.0

    def __init__(self, inner: Any, *, pipeline_sigmas: bool, tokens: int) -> None:
        self.inner = inner
        # FLUX's pipelines pass σ = linspace(1, 1/steps, steps); SD3's let the scheduler space them.
        self.pipeline_sigmas = pipeline_sigmas
        self.tokens = tokens  # transformer tokens of one tile
        self._accepts = set(inspect.signature(inner.set_timesteps).parameters)

    @property
    def order(self) -> int:
        return int(self.inner.order)

    @property
    def timesteps(self) -> torch.Tensor:
        return self.inner.timesteps

    @property
    def sigmas(self) -> torch.Tensor:
        return self.inner.sigmas

    @property
    def dynamic(self) -> bool:
        return bool(self.inner.config.get("use_dynamic_shifting", False))

    @property
    def mu(self) -> float | None:
        """The dynamic shift for the current tile size; None for a static shift."""
        return dynamic_mu(self.inner.config, self.tokens) if self.dynamic else None

    def for_tile(self, tile_h: int, tile_w: int) -> None:
        """The model sees tiles of (tile_h, tile_w) latent px: schedule for their token count."""
        self.tokens = tokens_of(tile_h, tile_w)

    def set_timesteps(self, steps: int, device: Any = None) -> None:
        kwargs: dict[str, Any] = {}
        if self.pipeline_sigmas and "sigmas" in self._accepts:
            kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
        if self.dynamic:
            kwargs["mu"] = self.mu
        if "sigmas" in kwargs:
            self.inner.set_timesteps(device=device, **kwargs)
        else:
            self.inner.set_timesteps(steps, device=device, **kwargs)

    def set_begin_index(self, index: int = 0) -> None:
        self.inner.set_begin_index(index)

    def scale_model_input(self, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return sample

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.inner.scale_noise(x0, t, noise)

    def step(self, model_output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = False) -> Any:
        return self.inner.step(model_output, t, sample, generator=generator, return_dict=return_dict)


def make_flow_scheduler(sampler: str, config: Any, *, pipeline_sigmas: bool, tokens: int, model: str) -> FlowScheduler:
    """A fresh flow-matching scheduler for ``sampler`` from the model's scheduler ``config``.

    ``euler`` is the pipelines' own FlowMatchEulerDiscreteScheduler; ``heun`` is diffusers'
    FlowMatchHeunDiscreteScheduler (second order), which knows only a static shift, so a model with
    a dynamic one (FLUX) does not offer it.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

    offered = samplers_for(config)
    if sampler not in offered:
        raise RequestError("sampler", f"{model} supports {', '.join(offered)} (flow matching); got {sampler!r}")
    if sampler == "heun":
        keys = set(inspect.signature(FlowMatchHeunDiscreteScheduler.__init__).parameters) - {"self"}
        inner = FlowMatchHeunDiscreteScheduler(**{k: v for k, v in dict(config).items() if k in keys})
    else:
        inner = FlowMatchEulerDiscreteScheduler.from_config(config)
    return FlowScheduler(inner, pipeline_sigmas=pipeline_sigmas, tokens=tokens)


def samplers_for(config: Any) -> tuple[str, ...]:
    """The samplers a flow model's schedule allows: Heun has no dynamic shift."""
    return ("euler",) if config.get("use_dynamic_shifting", False) else FLOW_SAMPLERS


# -- geometry and positions -------------------------------------------------------------------


def check_geometry(request: GenerationRequest, plan: TilePlan, model: str) -> None:
    """Tiles must be whole 2×2 patches of latent px (16 image px with the VAE's factor 8): refuse
    others naming the field that made them. The overlap is free: tile starts are spread evenly (and
    jitter moves them), so a tile may start at an odd latent px whatever the overlap, and positions
    handle half tokens (:func:`token_origin`)."""
    multiple = PATCH * plan.scale  # image px
    for name, value in (("width", request.width), ("height", request.height)):
        if value % multiple:
            raise RequestError(name, f"must be a multiple of {multiple} px for {model} (its tokens are "
                                     f"{multiple}x{multiple} px patches), got {value}")
    th, tw = plan.tile_h * plan.scale, plan.tile_w * plan.scale  # image px
    if th % multiple or tw % multiple:
        field = "grid" if request.grid is not None else "tile"
        hint = "choose a grid whose tiles come out" if field == "grid" else "use a tile that is"
        raise RequestError(field, f"tiles of {tw}x{th} px: {model} needs tiles that are multiples of {multiple} px; "
                                  f"{hint} a multiple of {multiple} px")


def check_bridges(request: GenerationRequest, model: str) -> None:
    """A transformer's tiles meet in attention only (no convolution or GroupNorm spans them), and a
    neighbour's keys carry the positions it was computed at: bridges need the tiles placed on the
    canvas. Refuse what would run but carry nothing, or carry tokens to the wrong places."""
    if request.bridges in ("halos", "norms"):
        raise RequestError("bridges", f"{model}'s tiles meet only in attention (it has no convolution or group "
                                      f"norm that spans tiles): use bridges attention or full, or off "
                                      f"(got {request.bridges})")
    if request.bridges != "off" and request.positions != "canvas":
        raise RequestError("positions", f"bridges bring each neighbour's tokens into a tile's attention with the "
                                        f"positions they were computed at: use positions canvas with bridges "
                                        f"{request.bridges}, or bridges off (positions is {request.positions})")


def token_origin(tile: Tile) -> tuple[float, float]:
    """Where a tile's first token sits on the canvas's token grid (rows, cols). A tile may start at
    an odd latent px (tile starts are spread evenly, and jitter moves them), hence half tokens."""
    return tile.y0 / PATCH, tile.x0 / PATCH


# -- the denoiser's shared half ---------------------------------------------------------------------


class FlowDenoiser(VaeCodec):
    """What a FLUX or SD3 backend shares: the pipeline it wraps, the 16-channel VAE (encode/decode
    through :class:`~.sd.codec.VaeCodec`, the exact tiled decode included), schedulers, previews.
    Subclasses add ``prepare`` and ``predict``."""

    kind = "flow"  # "FLUX.1" / "SD3": named in messages
    tiny_family = ""  # "flux" / "sd3": which tiny autoencoder previews look for (models/sd/taesd.py)
    pipeline_sigmas = False

    def __init__(self, pipe: Any, name: str, device: torch.device, dtype: torch.dtype) -> None:
        self.pipe = pipe
        self.name = name
        self.device = device
        self.dtype = dtype
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.scale = int(pipe.vae_scale_factor)  # image px per latent px
        self.channels = int(self.vae.config.latent_channels)
        self.tile_multiple = PATCH * self.scale  # image px
        self.scheduler_config = pipe.scheduler.config
        self.decode_method = ""
        self._rgb: torch.Tensor | None = None
        self.tiny: taesd.TinyPreview | None = None  # previews through a tiny autoencoder (prepare chooses)
        self.preview_method, self.preview_budget = "linear map", None
        # The layers bridges reach into (sampling/bridges.py): the transformer's attention, opened
        # by the subclass's ``bridgeable``; and the bridge of the run when one is installed.
        self.bridge_module = self.transformer
        self.bridge: Any = None
        self._vae_dtype = torch.float32 if getattr(self.vae.config, "force_upcast", False) else dtype
        if self.vae.dtype != self._vae_dtype:
            self.vae.to(dtype=self._vae_dtype)

    @property
    def native_tokens(self) -> int:
        side = self.native_tile // self.scale  # latent px
        return tokens_of(side, side)

    @property
    def samplers(self) -> tuple[str, ...]:
        return samplers_for(self.scheduler_config)

    def make_scheduler(self, sampler: str) -> FlowScheduler:
        return make_flow_scheduler(sampler, self.scheduler_config, pipeline_sigmas=self.pipeline_sigmas,
                                   tokens=self.native_tokens, model=self.kind)

    def _prepare_common(self, request: GenerationRequest, plan: TilePlan) -> None:
        check_geometry(request, plan, self.kind)
        check_bridges(request, self.kind)
        if self._rgb is None:  # once per model: one VAE encode of a colour chart
            # The fit has a bias term, so the VAE's shift_factor is absorbed like any offset.
            self._rgb = previews.fit_linear_rgb(self.vae, self.vae.config.scaling_factor, self.scale).to(self.device)
        taesd.attach(self, request.preview, self.tiny_family)  # linear map or a tiny autoencoder

    @torch.no_grad()
    def preview(self, x: torch.Tensor, pred: torch.Tensor, t: float, linear: bool = False) -> torch.Tensor:
        # x_σ = (1 − σ)·x0 + σ·ε and v = ε − x0 give x0 = x_σ − σ·v.
        sigma = t / NUM_TRAIN_TIMESTEPS
        x0 = x.float() - sigma * pred.float()
        if self.tiny is not None and not linear:
            return self.tiny.rgb(x0)
        return previews.apply_linear_rgb(x0, self._rgb)


# -- loading ----------------------------------------------------------------------------------------


def model_folder(model: str) -> Path | None:
    """The folder of a diffusers model: the path itself, or a hub id's snapshot in the local cache
    (where its model_index.json is); None for anything else (single files, built-ins, unknown ids)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path if (path / "model_index.json").is_file() else None
    if path.exists() or "/" not in model or model.startswith(("/", ".", "~", "builtin:")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "model_index.json")
    except Exception:  # an id the hub library rejects is simply not cached
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def pipeline_class_name(model: str) -> str | None:
    """The ``_class_name`` in a diffusers model's model_index.json (see :func:`model_folder`)."""
    folder = model_folder(model)
    name = _json(folder / "model_index.json").get("_class_name") if folder is not None else None
    return name if isinstance(name, str) else None


def check_folder(path: Path, parts: Sequence[str], kind: str, optional: Sequence[str] = ()) -> list[str]:
    """A diffusers folder of ``kind`` must hold every component the pipeline loads; name the
    missing ones (a half-copied download fails here, not deep inside diffusers). Returns the
    ``optional`` components it does not have (named null in model_index.json, or no folder)."""
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelUnavailable(f"model: {path} is a folder but not a diffusers model (no model_index.json)") from None
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"model: {path / 'model_index.json'} is not a valid diffusers model index ({exc})") \
            from None

    def named(part: str) -> bool:
        entry = index.get(part)
        return isinstance(entry, list) and entry[:1] != [None]

    def absent(part: str) -> bool:
        return not named(part) or not (path / part).is_dir()

    missing = [p for p in parts if p not in optional and named(p) and absent(p)]
    if missing:
        raise ModelUnavailable(f"model: {path} is a {kind} folder without {', '.join(m + '/' for m in missing)}: "
                               "copy the whole model folder (every component model_index.json names)")
    return [p for p in optional if absent(p)]


# What the keys of a single-file checkpoint say it holds. FLUX and SD3 files come in the
# original layouts (BFL's, Stability's; possibly under "model.diffusion_model.") or in diffusers'.
_KIND_KEYS = (
    ("flux", ("double_blocks.", "single_transformer_blocks.")),
    ("sd3", ("joint_blocks.", "context_embedder.")),
    ("sdxl", ("conditioner.embedders.1",)),
    ("sd", ("input_blocks.", "down_blocks.", "first_stage_model.")),
)
KIND_NAMES = {"flux": "a FLUX.1 transformer", "sd3": "an SD3 transformer", "sdxl": "an SDXL checkpoint",
              "sd": "a Stable Diffusion checkpoint", "unknown": "no model Paradiff knows"}


def checkpoint_kind(path: Path) -> str:
    """flux, sd3, sdxl, sd or unknown, from a .safetensors file's tensor names (its header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = [k.removeprefix("model.diffusion_model.") for k in f.keys()]  # noqa: SIM118
    except Exception as exc:  # not a safetensors file at all
        raise ModelUnavailable(f"model: {path.name} is not a readable .safetensors file ({exc})") from None
    # SD3 in diffusers' layout has transformer_blocks and a context embedder, like FLUX's double
    # blocks; FLUX alone has single blocks, so it is tested first.
    for kind, prefixes in _KIND_KEYS:
        if any(k.startswith(prefixes) for k in keys):
            return kind
    return "unknown"


def load_pipeline(pipe_cls: Any, transformer_cls: Any, kind: str, label: str, model: str, dtype: torch.dtype, *,
                  transformer: str | None, allow_download: bool, optional: Sequence[str] = ()) -> Any:
    """A FLUX or SD3 pipeline from a diffusers folder or a cached hub id (the network only with
    ``allow_download``), its transformer optionally from a single ``.safetensors`` file (the
    folder then needs only the transformer's config.json). ``optional`` components (SD3's T5) may
    be missing from a folder: the pipeline gets None for them."""
    from diffusers.utils import logging as dlogging
    from huggingface_hub import constants
    from transformers.utils import logging as tlogging

    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    local_only = constants.HF_HUB_OFFLINE or not allow_download
    path = Path(model).expanduser()
    source = str(path) if path.is_dir() else model
    parts = [p for p in ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                         "text_encoder_3", "tokenizer_3", "transformer") if not (transformer and p == "transformer")]
    kwargs: dict[str, Any] = {}
    if path.is_dir():
        kwargs.update(dict.fromkeys(check_folder(path, parts, label, optional)))
    if transformer:
        kwargs["transformer"] = load_transformer_file(transformer_cls, kind, label, Path(transformer).expanduser(),
                                                      source, dtype, local_only)
    try:
        return pipe_cls.from_pretrained(source, dtype=dtype, local_files_only=local_only, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"model: could not load {model!r} as a {label} model: {str(exc).splitlines()[0]}") \
            from None


def load_transformer_file(transformer_cls: Any, kind: str, label: str, file: Path, source: str, dtype: torch.dtype,
                          local_only: bool) -> Any:
    """A single-file transformer checkpoint, its configuration from ``source``'s transformer/."""
    if file.suffix != ".safetensors":
        raise ModelUnavailable(f"transformer: {file.name} is not a .safetensors file; {label} transformers load from "
                               ".safetensors only (pickle checkpoints can run code)")
    if not file.is_file():
        raise ModelUnavailable(f"transformer: no such file {file}")
    found = checkpoint_kind(file)
    if found != kind:
        raise ModelUnavailable(f"transformer: {file.name} holds {KIND_NAMES[found]}, not {KIND_NAMES[kind]}; give "
                               f"the {label} transformer's .safetensors file, or leave --transformer out to use the "
                               "model folder's own")
    try:
        return transformer_cls.from_single_file(str(file), config=source, subfolder="transformer", dtype=dtype,
                                                local_files_only=local_only)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelUnavailable(
            f"transformer: could not load {file.name} with the configuration in {source}/transformer "
            f"({str(exc).splitlines()[0]}); the model folder needs transformer/config.json of the same {label} "
            "variant") from None


# -- describing a model without loading it ----------------------------------------------------------

FLOW_PIPELINES = {"FluxPipeline": "flux", "StableDiffusion3Pipeline": "sd3"}
# Prompt tokens every tile's image tokens attend with (their activations: runtime.memory): T5's
# sequence for FLUX (flux/backend.py: 512 for dev, 256 for schnell); CLIP's 77 and T5's 256 for SD3
# (the pipeline's max_sequence_length), CLIP's 77 twice without T5 (its zeros stand in).
FLUX_TEXT_TOKENS = {True: 512, False: 256}
SD3_TEXT_TOKENS = {True: 77 + 256, False: 77 + 77}


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def display_name(model: str, transformer: str | None) -> str:
    """How a loaded FLUX/SD3 model is named to users: the folder's name (or the hub id), and a
    single-file transformer's name after it."""
    path = Path(model).expanduser()
    name = path.name if path.exists() else model
    return f"{name} + {Path(transformer).name}" if transformer else name


def describe_folder(folder: Path) -> dict[str, Any] | None:
    """What a FLUX or SD3 diffusers folder is, from its JSON configs alone: ``kind``, ``defaults``
    (request fields that suit it: the pipeline's own steps and guidance, Euler) and ``info``
    (:class:`~..core.modelinfo.ModelInfo` fields). None for any other folder."""
    kind = FLOW_PIPELINES.get(_json(folder / "model_index.json").get("_class_name", ""))
    if kind is None:
        return None
    transformer = _json(folder / "transformer" / "config.json")
    scheduler = _json(folder / "scheduler" / "scheduler_config.json")
    vae = _json(folder / "vae" / "config.json")
    scale = 2 ** (len(vae.get("block_out_channels") or [0] * 4) - 1)  # image px per latent px
    hidden = int(transformer.get("num_attention_heads", 24)) * int(transformer.get("attention_head_dim", 128))
    info: dict[str, Any] = {
        "scale": scale,
        "channels": int(vae.get("latent_channels", 16)),
        "tile_multiple": PATCH * scale,
        "positions": True,
        "samplers": samplers_for(scheduler),
        "hidden": hidden,
        "heads": int(transformer.get("num_attention_heads", 24)),
        "fp8_full_params": fp8_full_params(kind, transformer),
    }
    if kind == "flux":
        dev = bool(transformer.get("guidance_embeds", False))
        info.update(native_tile=1024, guidance=dev, guidance_embedded=dev, text_tokens=FLUX_TEXT_TOKENS[dev],
                    label=f"{folder.name} (FLUX.1 {'dev' if dev else 'schnell'})")
        # The pipeline's defaults: 28 steps and guidance 3.5 for dev; schnell is distilled for 4
        # steps without guidance.
        defaults = {"steps": 28, "guidance": 3.5} if dev else {"steps": 4, "guidance": 1.0}
    else:
        t5 = _json(folder / "model_index.json").get("text_encoder_3")
        t5 = isinstance(t5, list) and t5[:1] != [None] and (folder / "text_encoder_3").is_dir()
        info.update(native_tile=int(transformer.get("sample_size", 128)) * scale, guidance=True,
                    text_tokens=SD3_TEXT_TOKENS[t5], label=f"{folder.name} (SD3)",
                    controlnets=False)  # SD3ControlNetModel is not run yet
        defaults = {"steps": 28, "guidance": 7.0}  # StableDiffusion3Pipeline's defaults
    return {"kind": kind, "defaults": {**defaults, "sampler": "euler"}, "info": info}


# -- text encoders off the device while denoising ---------------------------------------------------
#
# FLUX's T5-XXL is 9.5 GB in bf16 (SD3.5's the same, beside 1.6 GB of CLIP-L and CLIP-G); a prompt
# is encoded once per run and never again. So on an accelerator the text encoders live on the CPU:
# the loader places only the transformer and the VAE on the device (``place``), ``prepare`` moves
# the encoders there for the encode alone (``encoders_on``) and back before the first step, and the
# denoising — the tile batch the planner picks from the free memory — has the room. When the device
# cannot hold them beside the transformer (FLUX in fp8 on a 24 GB card), the prompt is encoded on the
# CPU instead (slower, seconds to a minute for T5-XXL, instead of running out of memory). On a CPU
# nothing moves.

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def text_encoders(pipe: Any) -> list[torch.nn.Module]:
    """The pipeline's text encoders that are there (SD3 may be saved without T5)."""
    return [m for m in (getattr(pipe, n, None) for n in TEXT_ENCODERS) if isinstance(m, torch.nn.Module)]


def module_bytes(modules: Sequence[torch.nn.Module]) -> int:
    """Bytes of the modules' parameters and buffers as they are stored now."""
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


def place(pipe: Any, device: torch.device) -> None:
    """Every module of ``pipe`` on ``device`` except its text encoders, which stay on the CPU
    (moved for each encode by :func:`encoders_on`). On a CPU that is everything."""
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            component.to("cpu" if name in TEXT_ENCODERS else device)


@contextlib.contextmanager
def encoders_on(pipe: Any, device: torch.device) -> Iterator[torch.device]:
    """Around ``encode_prompt``: yields the device to encode on (pass it to ``encode_prompt``; move
    its results to the model's device). On a CPU, the CPU and nothing moves. On an accelerator, the
    text encoders go to ``device`` for the encode when its free memory holds them (runtime.memory
    decides), else the encode runs on the CPU; either way they are back on the CPU afterwards — after
    an error too — and CUDA's cache is emptied so the planner's free memory sees the room."""
    device = torch.device(device)
    encoders = text_encoders(pipe)
    if device.type == "cpu" or not encoders:
        yield device
        return
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    where = device if memory.encoders_fit(module_bytes(encoders), free) else torch.device("cpu")
    try:
        for m in encoders:
            m.to(where)
        yield where
    finally:
        for m in encoders:
            m.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


# -- fp8 storage ------------------------------------------------------------------------------------


def store_weights(transformer: Any, weights: str, dtype: torch.dtype) -> None:
    """``weights`` fp8 (request.WEIGHTS): the transformer's layers kept in float8 e4m3 — one byte a
    weight — and each cast to the run's ``dtype`` as it runs (diffusers' layerwise casting, with its
    own exceptions: the modulation and norm layers, patch embedding and output projection stay in
    ``dtype``, a third of the weights: :func:`fp8_full_params`). Called before the transformer goes
    to the device, so only the fp8 copy travels."""
    if weights == "fp8":
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)


def fp8_full_params(kind: str, config: dict[str, Any]) -> int:
    """Parameters of a FLUX or SD3 transformer (its config.json) that fp8 storage keeps in the run's
    dtype: diffusers' layerwise casting leaves alone every layer named ``norm`` — the adaptive norms'
    modulation Linears (hidden → 6·hidden per stream and block: most of it), the q/k RMS norms — and
    the patch embedding and output projection. A third of the weights (FLUX.1-dev 3.25 B of 11.9 B,
    SD3.5-large 2.69 B of 8.06 B; exact against the models built on the meta device), so fp8 takes
    FLUX.1-dev from 23.8 GB to 15.2 GB, not to half."""
    hd = int(config.get("attention_head_dim", 128))
    d = int(config.get("num_attention_heads", 24)) * hd
    p = int(config.get("patch_size", 1 if kind == "flux" else 2))
    out = int(config.get("out_channels") or config.get("in_channels", 64 if kind == "flux" else 16))

    def ada(k: int) -> int:  # an adaptive norm's modulation: hidden → k·hidden, with bias
        return k * d * d + k * d

    tail = ada(2) + d * p * p * out + p * p * out  # norm_out's modulation, proj_out
    if kind == "flux":
        double, single = int(config.get("num_layers", 19)), int(config.get("num_single_layers", 38))
        return double * (2 * ada(6) + 4 * hd) + single * (ada(3) + 2 * hd) + tail
    blocks = int(config.get("num_layers", 24))
    dual = set(config.get("dual_attention_layers") or ())
    qk = 4 * hd if config.get("qk_norm") else 0
    total = int(config.get("in_channels", 16)) * d * p * p + d  # pos_embed's patch projection (a Conv2d)
    for i in range(blocks):
        last = i == blocks - 1  # its context stream ends: a continuous norm (hidden → 2·hidden)
        total += (ada(9) if i in dual else ada(6)) + (ada(2) if last else ada(6)) + qk
        total += 2 * hd if i in dual and config.get("qk_norm") else 0
    return total + tail
