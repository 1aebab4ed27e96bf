"""The real FLUX.1-dev, SD3.5-large and SD3.5-medium configurations (their config.json files as
published, hardcoded: nothing is downloaded). Built on the meta device they count parameters without
memory (tests/engine/test_dit_memory.py); built on a GPU with random weights they time the real
architectures (benchmarks/bench_dit.py)."""

from __future__ import annotations

FLUX_DEV = dict(attention_head_dim=128, guidance_embeds=True, in_channels=64, joint_attention_dim=4096,
                num_attention_heads=24, num_layers=19, num_single_layers=38, patch_size=1, pooled_projection_dim=768,
                axes_dims_rope=[16, 56, 56])
SD35_LARGE = dict(attention_head_dim=64, caption_projection_dim=2432, in_channels=16, joint_attention_dim=4096,
                  num_attention_heads=38, num_layers=38, out_channels=16, patch_size=2, pooled_projection_dim=2048,
                  pos_embed_max_size=192, qk_norm="rms_norm", sample_size=128)
SD35_MEDIUM = dict(attention_head_dim=64, caption_projection_dim=1536, dual_attention_layers=list(range(13)),
                   in_channels=16, joint_attention_dim=4096, num_attention_heads=24, num_layers=24, out_channels=16,
                   patch_size=2, pooled_projection_dim=2048, pos_embed_max_size=384, qk_norm="rms_norm",
                   sample_size=128)
VAE16 = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
             up_block_types=["UpDecoderBlock2D"] * 4, in_channels=3, out_channels=3, latent_channels=16,
             layers_per_block=2, norm_num_groups=32, sample_size=1024, use_quant_conv=False,
             use_post_quant_conv=False, force_upcast=True)
FLUX_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                      num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)
# Text encoders' parameters (the published model cards): CLIP-L 123 M, CLIP-G 695 M, T5-XXL's encoder 4.76 B.
CLIP_L, CLIP_G, T5_XXL = 123_060_480, 694_659_840, 4_762_310_656
