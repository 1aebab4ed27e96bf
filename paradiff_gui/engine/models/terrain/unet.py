"""``TerrainUNet``: the built-in terrain model as a native torch module.

Written from the bundled ONNX graph (``adaptive-terrain-diffusion`` 0.4.2,
``terrain_consistency_unet_difficulty100.onnx``), whose structure is the OpenAI
guided-diffusion / consistency-models UNet: 32 base channels, channel multipliers
(1, 1, 2, 3, 4), four residual blocks per level, residual blocks that also down- and
up-sample, scale-shift conditioning from a timestep + continuous-label embedding, GroupNorm
with 32 groups, and multi-head self-attention (32 channels per head) at 32², 16² and 8².

Module and parameter names follow the graph's initializer names (``input_blocks.11.1.qkv``…),
so the converted state dict loads without a rename table. What the graph computes around the
network — the consistency preconditioning (Song et al. 2023, "Consistency Models", appendix C:
c_skip = σ_d² / ((σ − σ_min)² + σ_d²), c_out = (σ − σ_min)·σ_d / √(σ² + σ_d²),
c_in = 1 / √(σ² + σ_d²), c_noise = 250·ln σ) and the final clip to [−1, 1] — is here too,
with its constants read from the graph into buffers (see ``weights.py``).

The pieces the synchronized loop's bridges will reach into (issue 12) are separate modules:
every ``GroupNorm``, every padded 3×3 ``Conv2d``, every ``Attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MODEL_CHANNELS = 32
CHANNEL_MULT = (1, 1, 2, 3, 4)
NUM_RES_BLOCKS = 4
ATTENTION_LEVELS = (2, 3, 4)  # levels at 32², 16², 8² for a 128² input
HEAD_CHANNELS = 32
EMB_DIM = 4 * MODEL_CHANNELS
GROUPS = 32
NORM_EPS = 1e-5


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=NORM_EPS)


class ResBlock(nn.Module):
    """Residual block with scale-shift conditioning; ``resample`` is None, "down" or "up".

    A resampling block pools (2×2 average) or repeats (nearest 2×) both its input and its
    normalised activations before the first convolution, as the graph does.
    """

    def __init__(self, ch_in: int, ch_out: int, resample: str | None = None) -> None:
        super().__init__()
        self.resample = resample
        self.in_layers = nn.Sequential(_norm(ch_in), nn.SiLU(), nn.Conv2d(ch_in, ch_out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(EMB_DIM, 2 * ch_out))
        # Index 2 is the graph's dropout (identity at inference): it keeps out_layers.3 the conv.
        self.out_layers = nn.Sequential(_norm(ch_out), nn.SiLU(), nn.Identity(),
                                        nn.Conv2d(ch_out, ch_out, 3, padding=1))
        self.skip_connection = nn.Conv2d(ch_in, ch_out, 1) if ch_in != ch_out else nn.Identity()

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # In place where the tensor is fresh, and scale-shift as one addcmul: on the CPU these
        # elementwise passes over (B, C, 128, 128) activations cost as much as a convolution.
        norm, _, conv = self.in_layers
        h = conv(self._resample(F.silu(norm(x), inplace=True)))
        x = self._resample(x)
        scale, shift = self.emb_layers(emb)[..., None, None].chunk(2, dim=1)
        out_norm, _, _, out_conv = self.out_layers
        h = out_conv(F.silu(torch.addcmul(shift, out_norm(h), 1 + scale), inplace=True))
        return h.add_(self.skip_connection(x))


class Attention(nn.Module):
    """Multi-head self-attention over all positions of a feature map (32 channels per head).

    The graph splits q, k, v as three consecutive channel blocks, each split into heads of 32
    channels, and scales q and k by 32^-¼ each — softmax(qᵀk/√32), which is SDPA's default.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.heads = channels // HEAD_CHANNELS
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # The 1×1 convolutions as matrix products over tokens: with channels-last activations
        # the token view is free, and BLAS beats the convolution path at these sizes.
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        qkv = F.linear(tokens, self.qkv.weight.flatten(1), self.qkv.bias)
        q, k, v = qkv.view(b, h * w, 3, self.heads, HEAD_CHANNELS).permute(2, 0, 3, 1, 4)  # (b, heads, T, 32)
        out = self.attend(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        out = F.linear(out, self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + out.view(b, h, w, c).permute(0, 3, 1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """The bridges' hook (sampling/bridges.py): they may pass more keys than queries and a mask."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Block(nn.ModuleList):
    """One entry of ``input_blocks``/``output_blocks``: a ResBlock, then optionally attention
    and/or a resampling ResBlock, applied in order."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class TerrainUNet(nn.Module):
    """The consistency UNet: ``forward(noisy, sigma, label) → denoised`` in model space [−1, 1].

    ``noisy`` is (B, 1, 128, 128) (other multiples of 16 work, the weights were trained at 128),
    ``sigma`` (B,) the noise level, ``label`` (B,) the difficulty scaled to [0, 1].
    """

    def __init__(self) -> None:
        super().__init__()
        ch = MODEL_CHANNELS
        self.time_embed = nn.Sequential(nn.Linear(ch, EMB_DIM), nn.SiLU(), nn.Linear(EMB_DIM, EMB_DIM))
        self.label_emb = nn.Sequential(nn.Linear(1, EMB_DIM), nn.SiLU(), nn.Linear(EMB_DIM, EMB_DIM))
        self.input_blocks = nn.ModuleList([Block([nn.Conv2d(1, ch, 3, padding=1)])])
        skips = [ch]
        for level, mult in enumerate(CHANNEL_MULT):
            for _ in range(NUM_RES_BLOCKS):
                layers: list[nn.Module] = [ResBlock(ch, mult * MODEL_CHANNELS)]
                ch = mult * MODEL_CHANNELS
                if level in ATTENTION_LEVELS:
                    layers.append(Attention(ch))
                self.input_blocks.append(Block(layers))
                skips.append(ch)
            if level != len(CHANNEL_MULT) - 1:
                self.input_blocks.append(Block([ResBlock(ch, ch, "down")]))
                skips.append(ch)
        self.middle_block = Block([ResBlock(ch, ch), Attention(ch), ResBlock(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(CHANNEL_MULT))):
            for i in range(NUM_RES_BLOCKS + 1):
                layers = [ResBlock(ch + skips.pop(), mult * MODEL_CHANNELS)]
                ch = mult * MODEL_CHANNELS
                if level in ATTENTION_LEVELS:
                    layers.append(Attention(ch))
                if level and i == NUM_RES_BLOCKS:
                    layers.append(ResBlock(ch, ch, "up"))
                self.output_blocks.append(Block(layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, 1, 3, padding=1))
        # Preconditioning constants, overwritten from the graph when the weights load.
        self.register_buffer("sigma_min", torch.tensor(0.002))
        self.register_buffer("sigma_data", torch.tensor(0.5))
        self.register_buffer("noise_scale", torch.tensor(250.0))
        self.register_buffer("freqs", torch.zeros(1, ch // 2))
        self.register_buffer("clip", torch.tensor([-1.0, 1.0]))

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.out[2].weight.dtype

    def set_compute_dtype(self, dtype: torch.dtype) -> TerrainUNet:
        """Run the network in ``dtype``; the preconditioning and its constants stay in fp32
        (σ_min = 0.002 and the embedding's frequencies are not representable in fp16)."""
        for part in (self.time_embed, self.label_emb, self.input_blocks, self.middle_block, self.output_blocks,
                     self.out):
            part.to(dtype)
        return self

    def embedding(self, sigma: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Timestep (sin/cos of c_noise = 250·ln σ) plus continuous-label embedding, (B, 128)."""
        args = (self.noise_scale * torch.log(sigma))[:, None] * self.freqs
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.compute_dtype)
        return self.time_embed(features) + self.label_emb(label[:, None].to(self.compute_dtype))

    def network(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The bare UNet (no preconditioning): scaled input → raw output."""
        skips = []
        for block in self.input_blocks:
            x = block(x, emb)
            skips.append(x)
        x = self.middle_block(x, emb)
        for block in self.output_blocks:
            x = block(torch.cat([x, skips.pop()], dim=1), emb)
        return self.out(x)

    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(torch.float32)
        label = label.to(torch.float32)
        sd2 = self.sigma_data**2
        shifted = sigma - self.sigma_min
        c_skip = sd2 / (shifted**2 + sd2)
        c_out = shifted * self.sigma_data / torch.sqrt(sigma**2 + sd2)
        c_in = 1 / torch.sqrt(sigma**2 + sd2)
        dtype = self.compute_dtype
        emb = self.embedding(sigma, label)
        raw = self.network((c_in[:, None, None, None] * noisy.float()).to(dtype), emb).float()
        out = c_out[:, None, None, None] * raw + c_skip[:, None, None, None] * noisy.float()
        return torch.clamp(out, min=self.clip[0], max=self.clip[1])
