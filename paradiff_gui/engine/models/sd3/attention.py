"""SD3's joint attention opened to bridges (``sampling/bridges.py``).

:class:`OpenJointProcessor` computes what diffusers' ``JointAttnProcessor2_0`` computes (image and
text projections, their norms, one scaled-dot-product attention over both, the output
projections) with the attention in ``attn.attend(q, k, v, context=text)``: q, k, v as (batch,
heads, tokens, head_dim); the queries in the model's order (image tokens, then text), the keys and
values with the text first — attention does not depend on the order of its keys, and a bridge
reads the tile's grid of image tokens after the first ``context`` ones. SD3.5's second,
image-only attention (``attn2``) has no text: ``context`` 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ..sd.bridging import plain_attend


class OpenJointProcessor:
    """``JointAttnProcessor2_0`` with the attention in ``attn.attend``."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        b = hidden_states.shape[0]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), \
            heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        text = 0
        if encoder_hidden_states is not None:
            eq, ek, ev = (heads(p(encoder_hidden_states)) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            text = encoder_hidden_states.shape[1]
            query = torch.cat([query, eq], dim=2)
            key, value = torch.cat([ek, key], dim=2), torch.cat([ev, value], dim=2)
        out = attn.attend(query, key, value, None, context=text)
        out = out.transpose(1, 2).reshape(b, -1, out.shape[1] * out.shape[-1]).to(query.dtype)
        image = hidden_states.shape[1]
        if encoder_hidden_states is not None:
            out, encoder_out = out[:, :image], out[:, image:]
            if not attn.context_pre_only:
                encoder_out = attn.to_add_out(encoder_out)
        out = attn.to_out[1](attn.to_out[0](out))
        return out if encoder_hidden_states is None else (out, encoder_out)


def attention_modules(transformer: torch.nn.Module) -> list[Any]:
    """The transformer's joint (and SD3.5's image-only) attention layers."""
    from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0

    return [m for m in transformer.modules()
            if isinstance(m, Attention) and isinstance(m.processor, JointAttnProcessor2_0)]


@contextlib.contextmanager
def opened(transformer: torch.nn.Module) -> Iterator[list[Any]]:
    """Every joint attention layer of ``transformer`` on :class:`OpenJointProcessor` with a plain
    ``attend`` for the block; yields the layers. Their own processors come back on exit."""
    layers = attention_modules(transformer)
    before = [m.processor for m in layers]
    try:
        for m in layers:
            m.set_processor(OpenJointProcessor())
            m.attend = plain_attend()
        yield layers
    finally:
        for m, processor in zip(layers, before):
            m.set_processor(processor)
            m.__dict__.pop("attend", None)
