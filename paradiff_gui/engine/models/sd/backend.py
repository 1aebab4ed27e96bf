"""The diffusers UNet family: SD 1.x, SD 2.x (v-prediction), SDXL.

Loading goes through diffusers' own loaders (``from_pretrained`` for folders and hub ids,
``from_single_file`` for ``.safetensors`` checkpoints); prompt encoding through the pipeline's
own ``encode_prompt``. What is ours: batching tiles with both guidance halves in one UNet call,
and SDXL's micro-conditioning per tile (crop coordinates = the tile's position on the canvas).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as _tlogging

# Importing the pipelines makes transformers log a fallback notice about torchvision (which
# Paradiff does not need: no image processors run). Keep it off the user's terminal.
_verbosity = _tlogging.get_verbosity()
_tlogging.set_verbosity_error()
try:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
finally:
    _tlogging.set_verbosity(_verbosity)

from ...core.plan import Tile, TilePlan
from ...core.request import GenerationRequest, RequestError
from ..base import ModelUnavailable
from . import bridging, taesd
from . import control as controlnets
from . import preview as previews
from .codec import VaeCodec
from .inpaint import InpaintInputs, is_inpainting
from .schedulers import make_scheduler

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_HINT = (
    "download it while online (e.g. `hf download {id}`), or pass a local diffusers folder or "
    "a .safetensors file with --model"
)


@dataclass(frozen=True)
class SDConditioning:
    embeds: torch.Tensor  # (2, L, D) [negative, positive] with guidance, else (1, L, D)
    pooled: torch.Tensor | None  # SDXL: (2 or 1, P)
    guidance: float
    cfg: bool
    timestep_cond: torch.Tensor | None  # LCM-distilled UNets embed the guidance scale
    canvas_hw: tuple[int, int]  # image px
    control: controlnets.ControlSet | None = None  # ControlNets with their maps (sd/control.py)
    inpaint: InpaintInputs | None = None  # an inpainting UNet's mask and masked picture (sd/inpaint.py)


class SDDenoiser(VaeCodec):
    """A diffusers Stable Diffusion (1.x / 2.x / XL) pipeline behind the Denoiser protocol."""

    def __init__(self, pipe: Any, name: str, device: torch.device, dtype: torch.dtype) -> None:
        self.pipe = pipe
        self.name = name
        self.device = device
        self.dtype = dtype
        self.is_xl = isinstance(pipe, StableDiffusionXLPipeline)
        self.unet = pipe.unet
        self.vae = pipe.vae
        self.scale = int(pipe.vae_scale_factor)
        # The latent canvas's channels are the VAE's: an inpainting UNet takes more (sd/inpaint.py).
        self.channels = int(self.vae.config.latent_channels)
        self.inpainting = is_inpainting(self.unet, self.channels)
        self._inpaint: InpaintInputs | None = None  # the run's, from take_known
        sample = self.unet.config.sample_size or 64  # latent px; a config without it is SD1.x-sized
        self.native_tile = int((sample[0] if isinstance(sample, (list, tuple)) else sample) * self.scale)
        self.scheduler_config = pipe.scheduler.config
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        self._alphas_cumprod = make_scheduler("ddim", self.scheduler_config).alphas_cumprod
        self._rgb: torch.Tensor | None = None
        self._controlnets: dict[str, Any] = {}  # loaded ControlNets, kept with the model (sd/control.py)
        self._control: controlnets.ControlSet | None = None  # the run's, told the step by begin_step
        self.tiny: taesd.TinyPreview | None = None  # previews through a tiny autoencoder (prepare chooses)
        self.preview_method, self.preview_budget = "linear map", None
        self.decode_method = ""  # how the last decode ran (recorded in the run's info)
        self.compiled = False
        # The layers bridges reach into (sampling/bridges.py), and the bridge of the run when
        # the loop installs one: each UNet call then tells it which tiles the call holds.
        self.bridge_module = pipe.unet
        self.bridge: Any = None
        # SDXL's VAE overflows in fp16; diffusers marks such VAEs with force_upcast.
        self._vae_dtype = torch.float32 if getattr(self.vae.config, "force_upcast", False) else dtype
        if self.vae.dtype != self._vae_dtype:
            self.vae.to(dtype=self._vae_dtype)

    # -- Denoiser protocol ------------------------------------------------------------------

    def make_scheduler(self, sampler: str) -> Any:
        return make_scheduler(sampler, self.scheduler_config)

    @torch.no_grad()
    def prepare(self, request: GenerationRequest, plan: TilePlan) -> SDConditioning:
        g = request.guidance
        # LCM-distilled UNets take the guidance as an embedding instead of a second batch half.
        guided_by_embedding = self.unet.config.time_cond_proj_dim is not None
        cfg = g > 1.0 and not guided_by_embedding
        if self.is_xl:
            pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
                prompt=request.prompt, device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=cfg, negative_prompt=request.negative_prompt or None,
            )
            pooled_all = torch.cat([neg_pooled, pooled]) if cfg else pooled
        else:
            pos, neg = self.pipe.encode_prompt(
                request.prompt, self.device, 1, cfg, request.negative_prompt or None
            )
            pooled_all = None
        embeds = torch.cat([neg, pos]) if cfg else pos
        if self._rgb is None:  # once per model: one VAE encode of a colour chart
            self._rgb = previews.fit_linear_rgb(self.vae, self.vae.config.scaling_factor, self.scale).to(self.device)
        taesd.attach(self, request.preview, "sdxl" if self.is_xl else "sd")  # linear map or a tiny autoencoder
        timestep_cond = None
        if guided_by_embedding:
            w = torch.tensor(g - 1).repeat(1)
            timestep_cond = self.pipe.get_guidance_scale_embedding(
                w, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(self.device, self.dtype)
        # ControlNets not in this request are dropped (their weights leave the device).
        wanted = {str(Path(c.model).expanduser().resolve()) for c in request.controls}
        self._controlnets = {k: v for k, v in self._controlnets.items() if k in wanted}
        # One set per run: a region's prepare (same controls) shares it, so begin_step reaches it.
        key = (request.controls, request.width, request.height, request.init_image)
        if self._control is None or self._control.key != key:
            self._control = controlnets.control_set(self, request, self._controlnets)
            if self._control is not None:
                self._control.key = key
        return SDConditioning(
            embeds.to(self.dtype), None if pooled_all is None else pooled_all.to(self.dtype),
            g, cfg, timestep_cond, (request.height, request.width), self._control, self._inpaint,
        )

    def take_known(self, request: GenerationRequest, plan: TilePlan, known: Any) -> bool:
        """Called by the loop before ``prepare``, with the run's known picture (sampling/inpaint.py
        ``Known``) or None. An inpainting checkpoint takes it as UNet input (True: the loop then
        leaves the known part to the model); an ordinary checkpoint does not (False: the loop keeps
        it by blending). An inpainting checkpoint without a known picture is refused."""
        self._inpaint = None
        if not self.inpainting:
            return False
        if known is None:
            raise RequestError("model", f"{request.model} is an inpainting checkpoint (its UNet takes a mask and the "
                                        "masked picture): it re-draws a selection of a picture, so use it with "
                                        "paradiff refine (--rect or --mask) or the app's Refine selection…; for "
                                        "text-to-image and image-to-image use an ordinary checkpoint")
        self._inpaint = InpaintInputs.build(known.pixels, known.mask, self.scale, self.encode, self.device, self.dtype)
        return True

    def begin_step(self, plan: TilePlan, step: int, total: int) -> None:
        """The loop says which step of how many it starts, on which plan: ControlNets steer only
        within their range of the steps, and crop their maps at the plan's canvas size."""
        if self._control is not None:
            self._control.begin_step(plan, step, total)

    @torch.no_grad()
    def enable_compile(self) -> None:
        """``torch.compile`` the UNet (and, on CUDA, switch it to channels-last, which tensor-core
        convolutions prefer). The first step of each batch shape compiles (a minute or more); a
        step's last, smaller batch is a second shape. The picture does not change beyond float
        rounding."""
        if self.device.type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
        self.unet = torch.compile(self.unet, mode="max-autotune-no-cudagraphs")
        self.compiled = True

    @contextlib.contextmanager
    def bridgeable(self) -> Iterator[None]:
        """For a bridged run: the UNet's self-attention layers get ``attend`` (bridging.py); their
        own processors come back afterwards, also after errors and cancels."""
        with bridging.bridgeable(self.bridge_module):
            yield

    def predict(self, x: torch.Tensor, t: torch.Tensor, tiles: Sequence[Tile], cond: SDConditioning) -> torch.Tensor:
        b = len(tiles)
        halves = 2 if cond.cfg else 1
        x_in = torch.cat([x] * halves) if cond.cfg else x
        # embeds is [neg, pos]: repeat_interleave gives B negatives then B positives, matching x_in.
        ehs = cond.embeds.repeat_interleave(b, dim=0)
        added = None
        if self.is_xl:
            s = self.scale
            H, W = cond.canvas_hw
            # SDXL micro-conditioning: each tile says where on the full canvas it was "cropped".
            time_ids = torch.tensor(
                [[H, W, tl.y0 * s, tl.x0 * s, tl.height * s, tl.width * s] for tl in tiles],
                device=self.device, dtype=self.dtype,
            ).repeat(halves, 1)
            added = {"text_embeds": cond.pooled.repeat_interleave(b, dim=0), "time_ids": time_ids}
        tcond = None if cond.timestep_cond is None else cond.timestep_cond.expand(len(x_in), -1)
        unet_in = x_in if cond.inpaint is None else torch.cat([x_in, cond.inpaint.crops(tiles, halves)], dim=1)
        # ControlNets: each tile's own crop of each control map, both guidance halves (sd/control.py).
        extra = {} if cond.control is None else cond.control.residuals(
            x_in, t, tiles, halves, encoder_hidden_states=ehs, timestep_cond=tcond, added_cond_kwargs=added)
        # The batch is [unconditional rows; conditional rows], each half the tiles in order: the
        # layout a bridge expects.
        with self.bridge.tiles(tiles) if self.bridge is not None else contextlib.nullcontext():
            out = self.unet(
                unet_in, t, encoder_hidden_states=ehs, timestep_cond=tcond, added_cond_kwargs=added, return_dict=False,
                **extra,
            )[0]
        if cond.cfg:
            uncond, text = out.chunk(2)
            out = uncond + cond.guidance * (text - uncond)
        return out

    @torch.no_grad()
    def preview(self, x: torch.Tensor, pred: torch.Tensor, t: float, linear: bool = False) -> torch.Tensor:
        ti = min(max(round(t), 0), len(self._alphas_cumprod) - 1)
        x0 = previews.x0_from_vp(x.float(), pred.float(), float(self._alphas_cumprod[ti]), self.prediction_type)
        if self.tiny is not None and not linear:
            return self.tiny.rgb(x0)
        return previews.apply_linear_rgb(x0, self._rgb)


# -- loading ---------------------------------------------------------------------------------


def _pipeline_class(name: str) -> Any:
    classes = {c.__name__: c for c in (StableDiffusionPipeline, StableDiffusionXLPipeline)}
    # Inpainting folders hold the same components (their UNet takes 9 channels, sd/inpaint.py);
    # they load through the plain pipelines, whose prompt encoding is the same.
    inpainting = {"StableDiffusionInpaintPipeline": StableDiffusionPipeline,
                  "StableDiffusionXLInpaintPipeline": StableDiffusionXLPipeline}
    if name not in classes and name not in inpainting:
        raise ModelUnavailable(
            f"model: {name} is not supported; Paradiff runs {', '.join([*classes, *inpainting])} checkpoints"
        )
    return classes.get(name) or inpainting[name]


def _is_sdxl_checkpoint(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return any(k.startswith("conditioner.embedders.1") for k in f.keys())  # noqa: SIM118


def _extra_kwargs(cls: Any) -> dict[str, Any]:
    # SD 1.x/2.x folders may name a safety checker; Paradiff never runs one (its output would be
    # a black tile in the middle of a canvas) and passing None up front skips loading it.
    if cls.__name__ == "StableDiffusionPipeline":
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    return {}


def _pickle_to_safetensors(path: Path) -> Path:
    """The tensors of a pickle checkpoint, unpickled with ``weights_only=True`` (which refuses any
    object but tensors and plain containers: no code runs), written to a .safetensors file in the
    user cache, so the loaders below only ever see safetensors."""
    from platformdirs import user_cache_path
    from safetensors.torch import save_file

    if not path.is_file():
        raise ModelUnavailable(f"model: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError and friends: the file holds more than tensors
        raise ModelUnavailable(f"model: {path.name} holds more than weights (refused by torch.load with "
                               f"weights_only=True: {str(exc).splitlines()[0]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)} \
        if isinstance(state, dict) else {}
    if not tensors:
        raise ModelUnavailable(f"model: {path.name} holds no tensors")
    out = user_cache_path("paradiff", appauthor=False) / "converted" / f"{path.stem}-{path.stat().st_size}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out))
    return out


def load_sd(model: str, device: torch.device, dtype: torch.dtype, allow_download: bool = False,
            allow_pickle: bool = False) -> SDDenoiser:
    """Load from a local diffusers folder, a single ``.safetensors`` file, or a hub id.

    Hub ids load from the local hub cache; the network is used only with ``allow_download``.
    """
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    # Our own progress reporting replaces the loaders' bars on stderr.
    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    path = Path(model).expanduser()
    try:
        if path.is_dir():
            index = path / "model_index.json"
            if not index.is_file():
                raise ModelUnavailable(f"model: {path} is a folder but not a diffusers model (no model_index.json)")
            try:
                cls = _pipeline_class(json.loads(index.read_text())["_class_name"])
            except (json.JSONDecodeError, KeyError) as exc:
                raise ModelUnavailable(f"model: {index} is not a valid diffusers model index ({exc})") from None
            pipe = cls.from_pretrained(str(path), dtype=dtype, local_files_only=True, **_extra_kwargs(cls))
        elif path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
            if not allow_pickle:
                raise ModelUnavailable(
                    f"model: {path.name} is a pickle checkpoint, which can run code when loaded; convert it to "
                    ".safetensors, use a diffusers folder, or pass --allow-pickle to load only its tensors "
                    "(torch.load with weights_only=True)"
                )
            return load_sd(str(_pickle_to_safetensors(path)), device, dtype, allow_download)
        elif path.suffix == ".safetensors":
            if not path.is_file():
                raise ModelUnavailable(f"model: no such file {path}")
            cls = StableDiffusionXLPipeline if _is_sdxl_checkpoint(path) else StableDiffusionPipeline
            pipe = _load_single_file(cls, path, dtype, allow_download)
        elif _HUB_ID.fullmatch(model):
            pipe = _load_hub(model, dtype, allow_download)
        else:
            raise ModelUnavailable(f"model: no such file or folder {path}")
    except ModelUnavailable:
        raise
    except OSError as exc:
        raise ModelUnavailable(f"model: could not load {model!r}: {exc}") from None
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return SDDenoiser(pipe, path.name if path.exists() else model, device, dtype)


def _load_single_file(cls: Any, path: Path, dtype: torch.dtype, allow_download: bool) -> Any:
    """A single ``.safetensors`` checkpoint; diffusers takes the component configs of its base
    model from the hub cache (a few kB, fetched once when downloads are allowed)."""
    from huggingface_hub import constants

    local_only = constants.HF_HUB_OFFLINE or not allow_download
    try:
        return cls.from_single_file(str(path), dtype=dtype, local_files_only=local_only, **_extra_kwargs(cls))
    except (OSError, ValueError) as exc:
        if local_only and ("local" in str(exc) or "cached" in str(exc)):
            base = "SDXL" if cls is StableDiffusionXLPipeline else "SD 1.x/2.x"
            raise ModelUnavailable(
                f"model: {path.name} is a single-file {base} checkpoint; diffusers needs its base model's "
                "configuration files (not weights), which are not in the local hub cache and downloads are "
                "not allowed: run it once with --allow-download, or convert it to a diffusers folder"
            ) from None
        raise ModelUnavailable(f"model: could not load {path.name} as a single-file checkpoint: {exc}") from None


def _load_hub(model_id: str, dtype: torch.dtype, allow_download: bool) -> Any:
    """A hub id: from the local hub cache, or downloaded when the user allows it."""
    import warnings

    from diffusers import DiffusionPipeline
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError

    local_only = constants.HF_HUB_OFFLINE or not allow_download
    try:
        with warnings.catch_warnings():
            # diffusers passes a deprecated argument to huggingface_hub; not the user's concern.
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            index = DiffusionPipeline.load_config(model_id, local_files_only=local_only)
    except HFValidationError:
        raise ModelUnavailable(f"model: {model_id!r} is neither a local path nor a hub id (owner/name)") from None
    except OSError:
        if constants.HF_HUB_OFFLINE:
            how = "downloads are off (HF_HUB_OFFLINE=1)"
        elif not allow_download:
            how = "downloads are not allowed (pass --allow-download, or set PARADIFF_ALLOW_DOWNLOAD=1)"
        else:
            how = "it could not be downloaded (offline, or no such repository)"
        raise ModelUnavailable(
            f"model: {model_id!r} is not in the local hub cache and {how}; " + HUB_HINT.format(id=model_id)
        ) from None
    cls = _pipeline_class(index.get("_class_name", "?"))
    return cls.from_pretrained(model_id, dtype=dtype, local_files_only=local_only, **_extra_kwargs(cls))
