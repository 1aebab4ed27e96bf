"""Tiny LoRAs for the tiny models (tests/tiny.py, tests/tiny_dit.py), built in the test: a PEFT
``LoraConfig`` with random (not zero) up-weights on the model, saved with the pipeline's own
``save_lora_weights`` (diffusers format); and the same weights written in Kohya/A1111's layout
(``lora_unet_…​.lora_down/lora_up/alpha``) to prove diffusers' converter takes people's files."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def make_lora(pipe, path: Path, *, seed: int = 1, rank: int = 4, targets=ATTENTION) -> Path:
    """A diffusers-format LoRA of ``pipe``'s UNet (or transformer) at ``path`` (a .safetensors file);
    the pipeline is left without adapters."""
    model = pipe.transformer if hasattr(pipe, "transformer") and pipe.transformer is not None else pipe.unet
    torch.manual_seed(seed)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=False),
                      adapter_name="tmp")
    # PEFT's non-zero init is small: enough to change the picture, gentle enough that the random
    # tiny model stays well conditioned (a 20x larger LoRA made fused and unfused runs differ by
    # 1e-2 in fp32: float rounding, amplified ~1e5 by the random weights; 1e-11 in float64).
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model, adapter_name="tmp"))
    key = "transformer_lora_layers" if model is getattr(pipe, "transformer", None) else "unet_lora_layers"
    path.parent.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(str(path.parent), weight_name=path.name, safe_serialization=True, **{key: layers})
    model.delete_adapters("tmp")
    return path


def to_kohya(diffusers_file: Path, path: Path) -> Path:
    """The same SD UNet LoRA in Kohya's layout: ``lora_unet_<module path with _>.lora_down.weight``,
    ``.lora_up.weight`` and ``.alpha`` (= rank: scale 1, as PEFT's lora_alpha = r)."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for key, value in load_file(str(diffusers_file)).items():
        module, _, kind = key.removeprefix("unet.").rpartition(".lora.")
        for old, new in (("lora_A", "down"), ("lora_B", "up")):  # either diffusers spelling
            if module.endswith("." + old):
                module, kind = module[: -len(old) - 1], new + ".weight"
        kohya = "lora_unet_" + module.replace(".", "_")
        out[f"{kohya}.lora_{kind}"] = value.contiguous()
        if kind.startswith("down"):
            out[f"{kohya}.alpha"] = torch.tensor(float(value.shape[0]))
    save_file(out, str(path))
    return path
