"""Tiny LoRAs for the tiny models (tests/tiny.py, tests/tiny_dit.py), built in the test: a PEFT
``LoraConfig`` with random (not zero) up-weights on the model (and, when asked, on its text
encoders), saved with the pipeline's own ``save_lora_weights`` (diffusers format); and the same
weights written the way people's files spell them:

- :func:`to_kohya`: Kohya's sd-scripts / A1111 layout (``lora_unet_…​.lora_down/lora_up/alpha``,
  ``lora_te_…`` for SD 1.x's text encoder, ``lora_te1_…``/``lora_te2_…`` for SDXL's two). SD 1.x
  LoRAs name the UNet's modules as diffusers does (sd-scripts trains SD 1.x on the diffusers UNet);
  SDXL LoRAs name them after Stability's original ("sgm") UNet that sd-scripts trains SDXL on:
  ``input_blocks.4.1.transformer_blocks.0.attn1.to_q``. Text encoders are named as transformers 4's
  ``CLIPTextModel`` named them (``text_model.encoder.layers.0.self_attn.q_proj``), as every such
  file on the web does.
- :func:`to_kohya_flux`: sd-scripts' FLUX.1 layout (Black Forest Labs' module names:
  ``lora_unet_double_blocks_0_img_attn_qkv`` — one LoRA over the fused q, k, v projection).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
# Kohya's default LoRA ("networks.lora" without conv_dim): the Linear layers of the UNet's transformers.
KOHYA_UNET = (*ATTENTION, "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
# ... and of CLIP's attention and MLP.
TEXT = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def _denoiser(pipe):
    return pipe.transformer if getattr(pipe, "transformer", None) is not None else pipe.unet


def make_lora(pipe, path: Path, *, seed: int = 1, rank: int = 4, targets=ATTENTION, text_targets=(),
              text_encoders=TEXT_ENCODERS) -> Path:
    """A diffusers-format LoRA of ``pipe``'s UNet (or transformer) at ``path`` (a .safetensors file),
    also of its CLIP text encoders (those of ``text_encoders`` it has) when ``text_targets`` are
    given; the pipeline is left without adapters."""
    model = _denoiser(pipe)
    torch.manual_seed(seed)
    # PEFT's non-zero init is small: enough to change the picture, gentle enough that the random
    # tiny model stays well conditioned (a 20x larger LoRA made fused and unfused runs differ by
    # 1e-2 in fp32: float rounding, amplified ~1e5 by the random weights; 1e-11 in float64).
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=False),
                      adapter_name="tmp")
    key = "transformer" if model is getattr(pipe, "transformer", None) else "unet"
    # PEFT's names (``lora_A``/``lora_B``), as diffusers' trainers save them. (Not run through
    # ``convert_state_dict_to_diffusers``: that renames attention layers only, and a file mixing the
    # two spellings loses its attention layers in diffusers' loader — test_lora proves the Notice.)
    layers = {f"{key}_lora_layers": get_peft_model_state_dict(model, adapter_name="tmp")}
    model.delete_adapters("tmp")
    for name in text_encoders if text_targets else ():
        if getattr(pipe, name, None) is not None:
            layers[f"{name}_lora_layers"] = _text_lora(getattr(pipe, name), rank, text_targets)
    path.parent.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(str(path.parent), weight_name=path.name, safe_serialization=True, **layers)
    return path


def _text_lora(encoder: torch.nn.Module, rank: int, targets) -> dict[str, torch.Tensor]:
    """PEFT-named LoRA weights (``<module>.lora_A/lora_B.weight``) for a text encoder's Linear layers
    named ``targets``, drawn as PEFT's non-zero init draws them (uniform, 1/sqrt(fan-in)). Written
    by hand because transformers' own ``add_adapter`` wants a newer PEFT than diffusers does."""
    out = {}
    for name, m in encoder.named_modules():
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            bound_a, bound_b = m.in_features ** -0.5, rank ** -0.5
            out[f"{name}.lora_A.weight"] = torch.empty(rank, m.in_features).uniform_(-bound_a, bound_a)
            out[f"{name}.lora_B.weight"] = torch.empty(m.out_features, rank).uniform_(-bound_b, bound_b)
    assert out, f"no {targets} in {type(encoder).__name__}"
    return out


def _pairs(diffusers_file: Path) -> dict[tuple[str, str], dict[str, torch.Tensor]]:
    """(component, module path) → {"down": A, "up": B} of a diffusers-format LoRA file."""
    out: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(diffusers_file)).items():
        component, _, rest = key.partition(".")
        m = re.fullmatch(r"(.+)\.(lora_A|lora_B|lora\.down|lora\.up)\.weight", rest)
        assert m, key
        kind = "down" if m.group(2) in ("lora_A", "lora.down") else "up"
        out.setdefault((component, m.group(1)), {})[kind] = value
    return out


def sgm_name(module: str, unet_config) -> str:
    """A diffusers UNet module path in Stability's original ("sgm") UNet, the names sd-scripts gives
    SDXL LoRAs: ``input_blocks.N.{0 resnet, 1 attention}``, ``middle_block.{0,1,2}``,
    ``output_blocks.N.{0 resnet, 1 attention, 1|2 upsampler}``; ``down_blocks.B.downsamplers.0.conv``
    is ``input_blocks.N.0.op``."""
    per = unet_config.layers_per_block
    crossattn_up = [t.startswith("CrossAttn") for t in unet_config.up_block_types]
    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", module)
    if m:
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"input_blocks.{1 + b * (per + 1) + i}.{0 if kind == 'resnets' else 1}.{rest}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)", module)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * (per + 1)}.0.op{m[2]}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", module)
    if m:
        return f"middle_block.{1 if m[1] == 'attentions' else 2 * int(m[2])}.{m[3]}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", module)
    if m:
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks.{b * (per + 1) + i}.{0 if kind == 'resnets' else 1}.{rest}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv(.*)", module)
    if m:
        b = int(m[1])
        return f"output_blocks.{b * (per + 1) + per}.{2 if crossattn_up[b] else 1}.conv{m[2]}"
    return module  # conv_in, time_embedding... are not in a LoRA of the transformers


def _kohya_pair(out: dict, name: str, down: torch.Tensor, up: torch.Tensor, alpha: float | None) -> None:
    """Kohya's ``name.lora_down/lora_up/alpha``: the change is ``up @ down * alpha / rank``, so for
    the same change as PEFT's (scale lora_alpha / r = 1) the up-weights are divided by alpha/rank."""
    rank = down.shape[0]
    a = float(rank) if alpha is None else alpha
    out[f"{name}.lora_down.weight"] = down.contiguous()
    out[f"{name}.lora_up.weight"] = (up * (rank / a)).contiguous()
    out[f"{name}.alpha"] = torch.tensor(a)


def to_kohya(diffusers_file: Path, path: Path, *, unet_config=None, alpha: float | None = None) -> Path:
    """The same SD / SDXL LoRA (UNet and text encoders) in Kohya's layout. With ``unet_config`` (an
    SDXL UNet's) the UNet's modules get their sgm names and the text encoders ``lora_te1_`` /
    ``lora_te2_``; without, SD 1.x's diffusers names and ``lora_te_``. ``alpha`` (default: the
    rank) is written, and the up-weights scaled so the file changes the model exactly as before."""
    out: dict[str, torch.Tensor] = {}
    for (component, module), w in _pairs(diffusers_file).items():
        if component == "unet":
            name = "lora_unet_" + (sgm_name(module, unet_config) if unet_config is not None else module)
        else:
            # transformers 5's CLIPTextModel dropped its ``text_model`` level; people's files have it.
            module = module if module.startswith("text_model.") else "text_model." + module
            prefix = {"text_encoder": "lora_te1_" if unet_config is not None else "lora_te_",
                      "text_encoder_2": "lora_te2_"}[component]
            name = prefix + module
        _kohya_pair(out, name.replace(".", "_"), w["down"], w["up"], alpha)
    save_file(out, str(path))
    return path


_FLUX_DOUBLE = {  # sd-scripts' FLUX names of a double block's layers (diffusers' names in each)
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn_proj": ("attn.to_out.0",),
    "img_mlp_0": ("ff.net.0.proj",), "img_mlp_2": ("ff.net.2",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp_0": ("ff_context.net.0.proj",), "txt_mlp_2": ("ff_context.net.2",),
}
# What a diffusers-format LoRA of the tiny FLUX (one double, one single block) may hold for
# to_kohya_flux: the double block's layers, and the single block's output projection. (A single
# block's q, k, v and MLP input are one fused ``linear1`` in FLUX.1, which diffusers' converter
# splits at FLUX.1's own widths, 3072 and 12288: no tiny model can carry it.)
FLUX_KOHYA_TARGETS = (*(f"transformer_blocks.0.{m}" for ms in _FLUX_DOUBLE.values() for m in ms),
                      "single_transformer_blocks.0.proj_out")


def to_kohya_flux(diffusers_file: Path, path: Path, *, alpha: float | None = None) -> Path:
    """The same FLUX LoRA in sd-scripts' layout. A fused projection (q, k, v in one layer) gets one
    LoRA of rank 3r whose down-weights are the three stacked and whose up-weights are block-diagonal:
    the very change of the three separate LoRAs (what sd-scripts' own converter writes)."""
    pairs = _pairs(diffusers_file)
    out: dict[str, torch.Tensor] = {}
    for (component, module), w in pairs.items():
        if component == "text_encoder":  # CLIP-L: as in SD 1.x/SDXL files, ``lora_te1_``
            module = module if module.startswith("text_model.") else "text_model." + module
            _kohya_pair(out, ("lora_te1_" + module).replace(".", "_"), w["down"], w["up"], alpha)
            continue
        assert component == "transformer", component
        m = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)|single_transformer_blocks\.(\d+)\.proj_out", module)
        assert m, f"{module}: not in FLUX_KOHYA_TARGETS"
    for i in sorted({int(k[1].split(".")[1]) for k in pairs if k[1].startswith("transformer_blocks.")}):
        for name, modules in _FLUX_DOUBLE.items():
            parts = [pairs.get(("transformer", f"transformer_blocks.{i}.{m}")) for m in modules]
            if not any(parts):
                continue
            assert all(parts), f"{name}: all of {modules} or none"
            down = torch.cat([p["down"] for p in parts])
            up = torch.block_diag(*(p["up"] for p in parts))
            _kohya_pair(out, f"lora_unet_double_blocks_{i}_{name}", down, up, alpha)
    for (component, module), w in pairs.items():
        if component == "transformer" and module.startswith("single_transformer_blocks."):
            _kohya_pair(out, f"lora_unet_single_blocks_{module.split('.')[1]}_linear2", w["down"], w["up"], alpha)
    save_file(out, str(path))
    return path
