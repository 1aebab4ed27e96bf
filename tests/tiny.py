"""Tiny seeded SD / SDXL pipelines built from config (no downloads), after diffusers' own
``get_dummy_components``. They prove mechanics (shapes, determinism, fusion, loading), not
image quality: their weights are random.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

_WORDS = (
    "a an the red green blue castle forest mountain sky river cat dog city night day sea big small"
).split(" ")


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer built in code: whole words plus single letters."""
    letters = sorted(set("".join(_WORDS)) | set("abcdefghijklmnopqrstuvwxyz"))
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in letters:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for w in _WORDS:  # merge left to right so every listed word becomes one token
        parts = [*w[:-1], w[-1] + "</w>"]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    merges = list(dict.fromkeys(merges))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token="!")


def _text_config(**kw) -> CLIPTextConfig:
    base = dict(bos_token_id=0, eos_token_id=1, pad_token_id=2, hidden_size=32, intermediate_size=37,
                layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000)
    base.update(kw)
    return CLIPTextConfig(**base)


def _vae() -> AutoencoderKL:
    # Four blocks: the real SD latent factor of 8, with tiny channel counts.
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, norm_num_groups=8, layers_per_block=1, sample_size=64,
    )


def tiny_sd(prediction_type: str = "epsilon", seed: int = 0) -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=32,
    )
    vae = _vae()
    text_encoder = CLIPTextModel(_text_config())
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=prediction_type,
        timestep_spacing="leading", steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def tiny_sd_inpaint(seed: int = 0) -> StableDiffusionInpaintPipeline:
    """The tiny SD pipeline with an inpainting UNet: 9 input channels (latents, mask, masked
    picture's latents), saved as ``StableDiffusionInpaintPipeline`` like real inpainting folders."""
    base = tiny_sd(seed=seed)
    torch.manual_seed(seed + 100)
    unet = UNet2DConditionModel.from_config({**dict(base.unet.config), "in_channels": 9})
    return StableDiffusionInpaintPipeline(
        unet=unet, vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, scheduler=base.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + 32 pooled
        cross_attention_dim=64, norm_num_groups=32,
    )
    vae = _vae()
    te = CLIPTextModel(_text_config(hidden_act="gelu", projection_dim=32))
    te2 = CLIPTextModelWithProjection(_text_config(hidden_act="gelu", projection_dim=32))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading",
        steps_offset=1,
    )
    return StableDiffusionXLPipeline(
        unet=unet, vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tiny_tokenizer(),
        tokenizer_2=tiny_tokenizer(), scheduler=scheduler,
    )


def tiny_sdxl_inpaint(seed: int = 0) -> StableDiffusionXLInpaintPipeline:
    """The tiny SDXL pipeline with a 9-channel inpainting UNet (no aesthetic score, as SDXL
    inpainting 0.1), saved as ``StableDiffusionXLInpaintPipeline``."""
    b = tiny_sdxl(seed=seed)
    torch.manual_seed(seed + 100)
    unet = UNet2DConditionModel.from_config({**dict(b.unet.config), "in_channels": 9})
    return StableDiffusionXLInpaintPipeline(
        unet=unet, vae=b.vae, text_encoder=b.text_encoder, text_encoder_2=b.text_encoder_2, tokenizer=b.tokenizer,
        tokenizer_2=b.tokenizer_2, scheduler=b.scheduler, requires_aesthetics_score=False,
    )


def save(pipe, folder: Path) -> Path:
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def tiny_union_controlnet(unet, seed: int, num_control_type: int = 8):
    """A union ControlNet (``ControlNetUnionModel``) shaped like the tiny SDXL ``unet``, its zero
    layers randomised (zeros would make every residual zero, and any wiring would pass).
    diffusers' ``from_unet`` keeps the 320-channel control transformer, too wide for a 32-channel
    UNet: the config is copied here with the transformer as wide as the UNet's first block."""
    from diffusers import ControlNetUnionModel

    torch.manual_seed(seed)
    c = unet.config
    net = ControlNetUnionModel(
        in_channels=c.in_channels, block_out_channels=c.block_out_channels, down_block_types=c.down_block_types,
        layers_per_block=c.layers_per_block, attention_head_dim=c.attention_head_dim,
        use_linear_projection=c.use_linear_projection, addition_embed_type=c.addition_embed_type,
        addition_time_embed_dim=c.addition_time_embed_dim, transformer_layers_per_block=c.transformer_layers_per_block,
        projection_class_embeddings_input_dim=c.projection_class_embeddings_input_dim,
        cross_attention_dim=c.cross_attention_dim, norm_num_groups=c.norm_num_groups,
        conditioning_embedding_out_channels=(8, 8, 16, 16), num_control_type=num_control_type,
        num_trans_channel=c.block_out_channels[0], num_trans_head=2, num_proj_channel=c.block_out_channels[0],
    )
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net
