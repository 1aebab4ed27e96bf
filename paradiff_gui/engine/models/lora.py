"""LoRAs on a loaded model, for one run: found, checked, applied through diffusers, removed.

Every diffusers backend whose pipeline has diffusers' LoRA loader (SD 1.x/2.x, SDXL, SD3, FLUX.1;
the pipeline is ``denoiser.pipe``) takes LoRAs the same way, here, never in the backend:

- **found**: a request's LoRA is its ``path``; when that file is not there (a recipe replayed on
  another machine) but the request carries its sha256, the LoRAs in the model folders
  (``catalogue.model_dirs``) are searched for that digest, and a missing one is named;
- **applied** (:func:`applied`, a context around the run): ``load_lora_weights(adapter_name=…)``
  — diffusers converts Kohya/A1111 files to its own layout (for SD 1.x/2.x, SDXL and FLUX.1; not
  SD3's) — then ``set_adapters(names, weights)`` and ``fuse_lora`` of the UNet or transformer and
  the text encoders (the run then costs what the bare model costs; prompts are encoded after, so
  a LoRA's text-encoder part counts). Pairs a file holds beyond the layers it changed (keys
  diffusers could not map and left out) are told in a Notice;
- **removed**, on the way out, also after an error or a cancel: ``unfuse_lora`` and
  ``unload_lora_weights``, and then the weights of the changed layers are copied back from a
  snapshot taken before fusing. Unfusing subtracts what fusing added, which is not exact in
  floating point (1.1e-6 on the tiny test UNet's output in fp32, and each fuse/unfuse cycle in
  fp16 would move the kept model by a rounding step): with the snapshot, the base model is the
  same bits after any run, so the registry keeps it loaded and a LoRA set is never part of its
  cache key. The snapshot sits in host memory (``runtime.memory`` counts it, from the LoRA file's
  header: ``core.lora.lora_size``).

A LoRA that does not fit the model (another base's, a file that is not a LoRA) is refused with a
``RequestError`` naming the file and the base its tensor names point to; a file that cannot be
read at all with ``ModelUnavailable``.
Either way the model is left as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.lora import LoraSpec, is_lora_header, lora_base, lora_pairs, safetensors_header
from ..core.request import RequestError
from .base import ModelUnavailable

log = logging.getLogger(__name__)

ADAPTER_PREFIX = "paradiff_lora_"
_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) → sha256: a file is hashed once


@dataclass(frozen=True)
class ResolvedLora:
    """A request's LoRA with the file that will be loaded and that file's sha256."""

    spec: LoraSpec
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return self.path.stem

    def recipe(self) -> dict[str, Any]:
        """What the run's info (and so the picture's recipe) says about this LoRA."""
        return {"name": self.name, "file": self.path.name, "sha256": self.sha256, "weight": self.spec.weight}


def file_sha256(path: str | os.PathLike[str]) -> str:
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def lora_folders() -> list[Path]:
    from .catalogue import model_dirs

    return model_dirs()


def find_loras(folders: Sequence[Path] | None = None) -> list[Path]:
    """The LoRA ``.safetensors`` files in the model folders (and their sub-folders, but not inside a
    diffusers model folder), by their header: nothing is loaded or hashed."""
    from .folders import walk_parts

    found: list[Path] = []
    for p in walk_parts(lora_folders() if folders is None else folders):
        try:
            if is_lora_header(safetensors_header(p)):
                found.append(p)
        except (OSError, ValueError):
            continue
    return found


def resolve(spec: LoraSpec, index: int = 0, folders: Sequence[Path] | None = None) -> ResolvedLora:
    """The file for ``spec``: its path when that is a file (and matches its sha256, if given), else
    a LoRA in the model folders with that sha256 (same name first). Raises RequestError naming
    the LoRA and where it was looked for."""
    field = f"loras[{index}]"
    path = Path(spec.path).expanduser()
    if path.is_file():
        digest = file_sha256(path)
        if spec.sha256 is None or digest == spec.sha256:
            return ResolvedLora(spec, path, digest)
    if spec.sha256 is None:
        raise RequestError(field, f"no such LoRA file {spec.path}: give the path of a LoRA .safetensors file")
    candidates = find_loras(folders)
    candidates.sort(key=lambda p: p.name != path.name)  # a file of the same name is the likeliest
    for p in candidates:
        if file_sha256(p) == spec.sha256:
            return ResolvedLora(spec, p, spec.sha256)
    where = ", ".join(str(f) for f in (lora_folders() if folders is None else folders))
    have = "a different file" if path.is_file() else "no file"
    raise RequestError(field, f"the LoRA {path.name} (sha256 {spec.sha256[:12]}…) is missing: {spec.path} is "
                              f"{have}, and no LoRA with that sha256 is in the model folders ({where}); put it in a "
                              "model folder ($PARADIFF_MODEL_PATH) or give its path")


def resolve_all(loras: Sequence[LoraSpec]) -> list[ResolvedLora]:
    return [resolve(spec, i) for i, spec in enumerate(loras)]


def _peft_layers(pipe: Any) -> list[Any]:
    """The PEFT-wrapped layers of the pipeline's LoRA-loadable components."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = []
    for component in getattr(pipe, "_lora_loadable_modules", ()):
        module = getattr(pipe, component, None)
        if isinstance(module, torch.nn.Module):
            layers.extend(m for m in module.modules() if isinstance(m, BaseTunerLayer))
    return layers


def _adapters(pipe: Any) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


def _check_file(lora: ResolvedLora, index: int) -> dict[str, Any]:
    """A file that is no .safetensors cannot be loaded (ModelUnavailable, exit 3); one that holds no
    LoRA weights is the wrong file (RequestError, exit 2). Returns its header."""
    try:
        header = safetensors_header(lora.path)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"loras[{index}]: cannot load {lora.path.name}: {exc}; a LoRA is a .safetensors "
                               "file (Kohya/A1111 or diffusers format)") from None
    if not is_lora_header(header):
        raise RequestError(f"loras[{index}]", f"{lora.path.name} holds no LoRA weights (no lora_A/lora_B or "
                                              "lora_down/lora_up tensors): give a LoRA file, Kohya/A1111 or diffusers "
                                              "format")
    return header


def _made_for(header: dict[str, Any]) -> str:
    base = lora_base(header)
    return f"it looks like a LoRA for {base}" if base else "a LoRA for another base model?"


def _unreadable(header: dict[str, Any], pipe: Any) -> str:
    """Why a file that changes no layer may still be a LoRA for this kind of model: diffusers reads
    Kohya/A1111 files (``lora_unet_…``) for SD 1.x/2.x, SDXL and FLUX.1 only (not SD3's, 0.42)."""
    kohya = any(k.startswith(("lora_unet_", "lora_te")) for k in header)
    if kohya and type(pipe).__name__.startswith("StableDiffusion3"):
        return ("; diffusers reads no Kohya/A1111-format (lora_unet_…) file for SD3, only diffusers-format ones "
                "(transformer.… lora_A/lora_B)")
    return ""


def _components(pipe: Any) -> list[str]:
    """The pipeline's LoRA-loadable components that are there: the UNet or transformer and the
    text encoders (diffusers' FLUX and SD3 pipelines fuse only the transformer unless told)."""
    return [c for c in getattr(pipe, "_lora_loadable_modules", ())
            if isinstance(getattr(pipe, c, None), torch.nn.Module)]


@contextlib.contextmanager
def applied(den: Any, loras: Sequence[ResolvedLora], notes: list[str] | None = None) -> Iterator[None]:
    """``loras`` fused into ``den``'s model (UNet or transformer, and text encoders) for the block;
    the model exactly as before afterwards. What the person should know (part of a file that
    fits no layer) is appended to ``notes``."""
    if not loras:
        yield
        return
    pipe = getattr(den, "pipe", None)
    if pipe is None or not hasattr(pipe, "load_lora_weights"):
        raise RequestError("loras", f"{getattr(den, 'name', 'this model')} takes no LoRAs (SD 1.x/2.x, SDXL, SD3 "
                                    "and FLUX.1 do): run it without --lora")
    if getattr(den, "compiled", False):
        raise RequestError("loras", "change the model's layers, which a compiled model hides: use no compile")
    headers = [_check_file(lora, i) for i, lora in enumerate(loras)]
    if _adapters(pipe):  # a LoRA left by someone else would be fused with ours and then unloaded
        raise RuntimeError(f"{den.name} already holds LoRA adapters ({', '.join(sorted(_adapters(pipe)))})")
    names = [f"{ADAPTER_PREFIX}{i}" for i in range(len(loras))]
    snapshot: list[tuple[torch.Tensor, torch.Tensor]] = []
    fused = False
    try:
        for i, (lora, name) in enumerate(zip(loras, names, strict=True)):
            try:
                with warnings.catch_warnings():
                    # PEFT's notes on a second adapter (what we mean to do) and on the target list
                    # diffusers infers (wider than what a file holds) are not the person's concern.
                    warnings.filterwarnings("ignore", message=".*Already found a `peft_config`")
                    warnings.filterwarnings("ignore", message=".*inconsistency was discovered between the PEFT")
                    # A file that does not fit: diffusers deletes the half-made adapter (and says so).
                    warnings.filterwarnings("ignore", message=".*was active which is now deleted")
                    pipe.load_lora_weights(str(lora.path), adapter_name=name)
            except (RuntimeError, ValueError, KeyError, IndexError, AttributeError) as exc:
                first = str(exc).strip().splitlines()
                detail = first[1].strip() if len(first) > 1 and "mismatch" in first[1] else (first[0] if first else "")
                raise RequestError(f"loras[{i}]", f"{lora.path.name} does not fit {den.name} ({_made_for(headers[i])}: "
                                                  f"{detail[:300]}): give a LoRA made for this model") from None
            touched, pairs = _touches(pipe, name), lora_pairs(headers[i])
            if not touched:
                raise RequestError(f"loras[{i}]", f"{lora.path.name} changes no layer of {den.name} "
                                                  f"({_made_for(headers[i])}{_unreadable(headers[i], pipe)}): give a "
                                                  "LoRA made for this model")
            if touched < pairs:
                # diffusers leaves out what it cannot map (T5 layers of a FLUX LoRA, a file mixing
                # two key spellings...) with at most a log line: never silently.
                note = (f"loras[{i}]: {lora.path.name} changes {touched} layers of {den.name} but holds {pairs}: "
                        f"at least {pairs - touched} fit no layer diffusers can map, and are left out")
                log.warning("%s", note)
                if notes is not None:
                    notes.append(note)
        pipe.set_adapters(names, [lora.spec.weight for lora in loras])
        for layer in _peft_layers(pipe):
            base = layer.get_base_layer()
            for p in (base.weight, getattr(base, "bias", None)):
                if isinstance(p, torch.Tensor):
                    snapshot.append((p, p.detach().to("cpu", copy=True)))
        fused = True
        pipe.fuse_lora(components=_components(pipe), adapter_names=names)
        yield
    finally:
        _remove(pipe, names, snapshot, fused)


def _touches(pipe: Any, name: str) -> int:
    """How many layers adapter ``name`` changes."""
    return sum(name in getattr(layer, "lora_A", {}) for layer in _peft_layers(pipe))


@torch.no_grad()
def _remove(pipe: Any, names: Sequence[str], snapshot: Sequence[tuple[torch.Tensor, torch.Tensor]],
            fused: bool) -> None:
    if fused:
        pipe.unfuse_lora(components=_components(pipe))
    if _adapters(pipe) or _peft_layers(pipe):  # a refused file can leave empty PEFT wrappers
        pipe.unload_lora_weights()
    # The exact base weights back (unfusing subtracts in floating point: close, not equal).
    for param, saved in snapshot:
        param.data.copy_(saved)
