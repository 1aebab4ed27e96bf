"""Tiny seeded FLUX.1 and SD3 pipelines built from config (no downloads), after diffusers' own
``get_dummy_components``, at the real geometry where it matters to Paradiff: 16 latent channels, a
VAE of factor 8, 2×2 patches (FLUX packs them into 64 channels; SD3 patchifies inside). Random
weights: they prove mechanics and exactness against the pipelines, not looks.

The T5 tokenizer is built in code too: a Unigram vocabulary of whole words (transformers 5's
``T5Tokenizer`` takes one), so nothing is read from the hub.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxControlNetModel,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from tiny import _WORDS, _text_config, tiny_tokenizer
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel, T5Tokenizer


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A T5 (Unigram) tokenizer over the tiny vocabulary: whole words, then single letters."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -1.0) for w in _WORDS]
    pieces += [(ch, -5.0) for ch in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _t5(d_model: int = 32) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=64, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=1))


def tiny_vae16(seed: int = 0) -> AutoencoderKL:
    """A 16-channel VAE of factor 8 with FLUX's layout (no quant convs) and a shift factor."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=16, norm_num_groups=8, layers_per_block=1, sample_size=64,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611,
    )


def tiny_flux(guidance_embeds: bool = True, seed: int = 0) -> FluxPipeline:
    """FLUX.1-dev-like (guidance embedding) or, with ``guidance_embeds=False``, schnell-like."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8),
        guidance_embeds=guidance_embeds,
    )
    text_encoder = CLIPTextModel(_text_config(hidden_act="gelu", projection_dim=32))
    text_encoder_2 = _t5()
    vae = tiny_vae16(seed + 1)
    # FLUX's own scheduler config: the shift follows the image's token count (dynamic shifting).
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0 if guidance_embeds else 1.0, use_dynamic_shifting=guidance_embeds, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(),
        text_encoder_2=text_encoder_2, tokenizer_2=tiny_t5_tokenizer(), transformer=transformer,
    )


def tiny_flux_controlnet(seed: int, **config) -> FluxControlNetModel:
    """Shaped like tiny_flux's transformer (``config``: e.g. ``num_mode`` for a union one); its
    zero-initialised layers (the control embedder and the output blocks) get random weights, or
    every block sample would be zero."""
    torch.manual_seed(seed)
    net = FluxControlNetModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                              num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                              axes_dims_rope=(4, 4, 8), guidance_embeds=True, **config)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def tiny_sd3(with_t5: bool = True, seed: int = 0, pos_embed_max_size: int = 32) -> StableDiffusion3Pipeline:
    """SD3-like: CLIP-L, CLIP-G and (optionally) T5; a 16-channel VAE; 2×2 patches; a static shift.
    ``pos_embed_max_size`` (tokens a side) is small so that canvas positions can run out of it."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=32,
        pos_embed_max_size=pos_embed_max_size,
    )
    te = CLIPTextModelWithProjection(_text_config(hidden_size=16, hidden_act="gelu", projection_dim=16))
    te2 = CLIPTextModelWithProjection(_text_config(hidden_size=16, hidden_act="gelu", projection_dim=16))
    vae = tiny_vae16(seed + 1)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=te, tokenizer=tiny_tokenizer(),
        text_encoder_2=te2, tokenizer_2=tiny_tokenizer(), text_encoder_3=_t5() if with_t5 else None,
        tokenizer_3=tiny_t5_tokenizer() if with_t5 else None,
    )
