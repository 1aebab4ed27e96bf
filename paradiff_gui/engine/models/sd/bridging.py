"""Diffusers UNets opened to bridges (``sampling/bridges.py``).

A bridge reaches into a model's zero-padded ``nn.Conv2d`` and ``nn.GroupNorm`` modules, which a
diffusers UNet (SD 1.x/2.x, SDXL) already has, and into every attention module with an
``attend(q, k, v, mask=None)`` method, which diffusers' ``Attention`` has not: its processor
does the whole computation. :func:`bridgeable` gives each *self*-attention module (``attn1`` of
the transformer blocks; cross-attention ``attn2`` stays as it is) for one run

- a processor of ours, :class:`BridgeableAttnProcessor`: diffusers' ``AttnProcessor2_0`` on
  the self-attention path, with the attention itself left to ``attn.attend``;
- ``attn.attend``: q, k, v of shape (batch, heads, tokens, head_dim) →
  ``F.scaled_dot_product_attention(q, k, v, attn_mask=mask)``, exactly what ``AttnProcessor2_0``
  computes. Tokens are the layer's (h, w) grid row-major, as ``Transformer2DModel`` flattens it.

Unbridged, the opened model computes what it computed before. On exit — also after an error or
a cancel — every module gets its own processor back and loses ``attend`` (a loaded model is kept
for the next run).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch import nn

log = logging.getLogger(__name__)

Attend = Callable[..., torch.Tensor]


def plain_attend() -> Attend:
    """A new plain ``attend``: one object per module (a bridge tells layers apart by it)."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
               context: int = 0) -> torch.Tensor:
        # ``context``: leading tokens of k and v that are not on the layer's grid (a joint
        # attention's text); only a bridge needs to know them apart.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return attend


class BridgeableAttnProcessor:
    """``AttnProcessor2_0`` for self-attention, with the attention in ``attn.attend(q, k, v)``."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("BridgeableAttnProcessor serves self-attention only")
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            # (batch, heads, query tokens, key tokens), as SDPA takes it
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if attention_mask is None:
            hidden_states = attn.attend(query, key, value)
        else:
            hidden_states = attn.attend(query, key, value, mask=attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _openable(attn: Attention) -> bool:
    """A self-attention module whose computation our processor reproduces exactly."""
    if attn.is_cross_attention or isinstance(attn.processor, BridgeableAttnProcessor):
        return False
    if type(attn.processor) not in (AttnProcessor2_0, AttnProcessor) or not attn.scale_qk \
            or attn.group_norm is not None or attn.spatial_norm is not None:
        # Another processor (LoRA, fused projections, xformers…) or a layout SD UNets do not
        # have: left as it is, so this layer's attention stays per tile.
        log.warning("bridges: self-attention %s with %s left unbridged", type(attn).__name__,
                    type(attn.processor).__name__)
        return False
    return True


@contextlib.contextmanager
def bridgeable(model: nn.Module) -> Iterator[list[Attention]]:
    """``model``'s self-attention modules given ``attend`` (and our processor) for the block;
    yields the modules opened. Restored on exit, also on errors."""
    opened: list[tuple[Attention, Any]] = []
    try:
        for module in model.modules():
            if isinstance(module, Attention) and _openable(module):
                opened.append((module, module.processor))
                module.set_processor(BridgeableAttnProcessor())
                module.attend = plain_attend()
        yield [m for m, _ in opened]
    finally:
        for module, processor in reversed(opened):
            module.set_processor(processor)
            if "attend" in module.__dict__:
                del module.attend
