"""Live previews through a tiny autoencoder (diffusers' ``AutoencoderTiny``: TAESD and kin).

The linear latent→RGB map (preview.py) is blurry by construction: one latent pixel, one colour.
A tiny autoencoder (Ollin Boer Bohan's TAESD family, ~1 M decoder parameters) decodes the same
x0 estimate to a real picture at 8× the latent size, for a few per cent of a UNet call on a GPU.
Paradiff never downloads one unasked: it uses one the person already has —

- a folder named after the model in a model folder (``$PARADIFF_MODEL_PATH``, the user data
  folder's ``models``; see models/folders.py): ``taesd`` (SD 1.x/2.x), ``taesdxl`` (SDXL),
  ``taef1`` (FLUX.1), ``taesd3`` (SD3/3.5), each a diffusers folder (``config.json`` with
  ``_class_name: AutoencoderTiny`` + ``diffusion_pytorch_model.safetensors``);
- or the same id from the hub cache (``madebyollin/taesd`` …), read with
  ``try_to_load_from_cache``, which never touches the network;
- or, with downloads allowed (``PARADIFF_ALLOW_DOWNLOAD=1``) and ``preview taesd`` asked for,
  downloaded from the hub.

Latents reach the decoder as a diffusers pipeline would pass them to this VAE:
``z / scaling_factor + shift_factor`` from the tiny model's own config (1 and 0 for the TAESD
family, which were trained on the diffusion latents, scaled and shifted as the big VAE's config
says). The decode runs on the model's device in the model's dtype; its output is area-averaged on
the device to at most :data:`PREVIEW_MAX` px a side (the app paints any size into the tile's
rectangle; 256 px is the tile's size on screen when a 4096² canvas fills the app's 2048 px preview
buffer with 512 px tiles, and keeps host copies small).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ...core.request import RequestError
from ..base import downloads_allowed
from ..folders import model_dirs

log = logging.getLogger(__name__)

PREVIEW_MAX = 256  # px a side of a tiny-autoencoder preview (image px after area averaging)
# The share of the run's wall time that tiny-autoencoder previews may take (sampling/previews.py
# enforces it): on a CPU a decode per tile per step would cost about as much as the model call.
BUDGET = 0.02

# The hub ids of the tiny autoencoders, per model family (backends name their family).
TINY_IDS = {
    "sd": "madebyollin/taesd",
    "sdxl": "madebyollin/taesdxl",
    "flux": "madebyollin/taef1",
    "sd3": "madebyollin/taesd3",
}
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _is_tiny(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("_class_name") == "AutoencoderTiny" \
        and (folder / WEIGHTS).is_file()


def where_to_put(family: str) -> str:
    """The sentence that says where a tiny autoencoder for ``family`` is looked for."""
    hub_id = TINY_IDS[family]
    name = hub_id.split("/")[1]
    dirs = ", ".join(str(d) for d in model_dirs())
    return (f"put the diffusers folder of {hub_id} (config.json + {WEIGHTS}) as a folder named {name} in a "
            f"model folder ({dirs}), or `hf download {hub_id}` into the hub cache")


def find_tiny(family: str) -> Path | None:
    """The folder of the tiny autoencoder for ``family`` ("sd", "sdxl", "flux", "sd3"), from the
    model folders or the hub cache; None when there is none. Never touches the network."""
    hub_id = TINY_IDS.get(family)
    if hub_id is None:
        return None
    name = hub_id.split("/")[1]
    for d in model_dirs():
        if _is_tiny(d / name):
            return d / name
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # a broken cache is simply no cache
        return None
    if isinstance(cached, str) and _is_tiny(Path(cached).parent):
        return Path(cached).parent
    return None


def _download(family: str) -> Path | None:
    """Only with downloads allowed and ``preview taesd`` asked for: the hub's copy."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(TINY_IDS[family], allow_patterns=["config.json", WEIGHTS]))
    except Exception as exc:
        log.warning("could not download %s: %s", TINY_IDS[family], exc)
        return None


class TinyPreview:
    """One loaded tiny autoencoder, decoding x0 estimates to small uint8 previews on the device."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
        from diffusers import AutoencoderTiny

        self.folder = folder
        self.vae = AutoencoderTiny.from_pretrained(str(folder), torch_dtype=dtype).to(device).eval()
        self.vae.requires_grad_(False)
        self.device, self.dtype = torch.device(device), dtype
        self.scaling = float(self.vae.config.scaling_factor)
        self.shift = float(getattr(self.vae.config, "shift_factor", 0.0) or 0.0)
        self.channels = int(self.vae.config.latent_channels)

    @property
    def method(self) -> str:
        return f"tiny autoencoder ({self.folder})"

    @torch.no_grad()
    def rgb(self, x0: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) diffusion latents → (B, H', W', 3) uint8 on the device, at most
        :data:`PREVIEW_MAX` a side (H = 8h before averaging)."""
        z = x0.to(self.device, self.dtype) / self.scaling + self.shift
        img = self.vae.decode(z, return_dict=False)[0].float()  # (B, 3, 8h, 8w) in [-1, 1]
        k = -(-max(img.shape[-2:]) // PREVIEW_MAX)
        if k > 1:
            img = torch.nn.functional.avg_pool2d(img, k, ceil_mode=True)
        return ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def select(choice: str, family: str, model_name: str, channels: int, device: torch.device, dtype: torch.dtype,
           loaded: TinyPreview | None) -> TinyPreview | None:
    """The tiny autoencoder a run's previews use (``request.preview``: auto, linear or taesd), or
    None for the linear map. ``loaded`` is the one the backend already holds, kept when it is
    the same folder, device and dtype. ``taesd`` without one is refused, naming the field and
    where to put one."""
    if choice == "linear":
        return None
    if family not in TINY_IDS:
        if choice == "taesd":
            raise RequestError("preview", f"taesd: {model_name} has no tiny autoencoder; use preview auto or linear")
        return None
    folder = find_tiny(family)
    if folder is None and choice == "taesd" and downloads_allowed():
        folder = _download(family)
    if folder is None:
        if choice == "taesd":
            raise RequestError("preview", f"taesd needs a tiny autoencoder for {model_name} and none was found: "
                                          f"{where_to_put(family)}; or use preview auto or linear")
        return None
    if loaded is not None and loaded.folder == folder and loaded.device == torch.device(device) \
            and loaded.dtype == dtype:
        return loaded
    try:
        tiny = TinyPreview(folder, device, dtype)
    except Exception as exc:
        if choice == "taesd":
            raise RequestError("preview", f"the tiny autoencoder in {folder} could not be loaded ({exc}); "
                                          f"{where_to_put(family)}") from exc
        log.warning("tiny autoencoder %s not loaded (%s): linear previews", folder, exc)
        return None
    if tiny.channels != channels:
        if choice == "taesd":
            raise RequestError("preview", f"the tiny autoencoder in {folder} decodes {tiny.channels}-channel "
                                          f"latents and {model_name} makes {channels}: {where_to_put(family)}")
        return None
    return tiny


def attach(den: object, choice: str, family: str) -> None:
    """Choose a backend's previews for a run (its ``prepare`` calls this): sets ``den.tiny``
    (a :class:`TinyPreview` or None), ``preview_method`` (recorded in the run's info) and
    ``preview_budget`` (the share of the run's time the loop lets previews take; None: no limit)."""
    tiny = select(choice, family, den.name, den.channels, den.device, den.dtype, getattr(den, "tiny", None))
    den.tiny = tiny
    den.preview_method = "linear map" if tiny is None else tiny.method
    den.preview_budget = None if tiny is None else BUDGET
