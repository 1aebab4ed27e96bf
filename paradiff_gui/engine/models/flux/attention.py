"""FLUX's attention opened for Paradiff: rotary positions per batch row, and the attention itself
in ``attn.attend`` where a bridge can reach it (``sampling/bridges.py``).

diffusers' ``FluxAttnProcessor`` takes one set of rotary positions for the whole batch (the
transformer computes them from ``img_ids`` without a batch dimension), so tiles placed at their
own places on the canvas (``positions canvas``) could only run one per call. :class:`OpenFluxProcessor`
computes what ``FluxAttnProcessor`` computes (projections, RMS norms of q and k, text tokens
first, rotary embedding, scaled-dot-product attention, output projections) with two openings:

- ``state.rotary``: (cos, sin) of shape (batch, tokens, head_dim) — each row its own positions —
  used instead of the transformer's single set when given;
- the attention goes through ``attn.attend(q, k, v, mask, context=text)`` with q, k, v as
  (batch, heads, tokens, head_dim): the first ``context`` tokens are the text's, the rest the tile's
  grid of image tokens, row-major — the layout a bridge's attention channel reads.

:func:`opened` gives every ``FluxAttention`` of a transformer the processor (and a plain
``attend``) for a ``with`` block and restores the model's own on exit, also after errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..sd.bridging import plain_attend


@dataclass
class OpenState:
    """What the denoiser hands its opened attention layers for the next transformer call."""

    text: int = 0  # text tokens ahead of the image tokens
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None  # per-row (cos, sin): (B, S, head_dim)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' ``apply_rotary_emb`` (real form, pairs interleaved, sequence at dim 1) for x of
    shape (B, S, H, D) and cos/sin broadcastable to (B, S, 1, D)."""
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class OpenFluxProcessor:
    """``FluxAttnProcessor`` with per-row rotary positions and the attention in ``attn.attend``."""

    def __init__(self, state: OpenState) -> None:
        self.state = state

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb: Any = None) -> torch.Tensor:
        query = attn.to_q(hidden_states).unflatten(-1, (-1, attn.head_dim))
        key = attn.to_k(hidden_states).unflatten(-1, (-1, attn.head_dim))
        value = attn.to_v(hidden_states).unflatten(-1, (-1, attn.head_dim))
        query, key = attn.norm_q(query), attn.norm_k(key)
        joint = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
        if joint:  # a double-stream block: the text's own projections, put first
            eq = attn.norm_added_q(attn.add_q_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim)))
            ek = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim)))
            ev = attn.add_v_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim))
            query, key, value = torch.cat([eq, query], 1), torch.cat([ek, key], 1), torch.cat([ev, value], 1)
        # (A single-stream block gets the text tokens inside hidden_states, first too.)
        rotary = self.state.rotary
        if rotary is not None:
            cos, sin = (r[:, :, None, :].to(query.device) for r in rotary)
        elif image_rotary_emb is not None:
            cos, sin = (r[None, :, None, :].to(query.device) for r in image_rotary_emb)
        if rotary is not None or image_rotary_emb is not None:
            query, key = rotate(query, cos, sin), rotate(key, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (B, heads, tokens, head_dim)
        out = attn.attend(q, k, v, attention_mask, context=self.state.text)
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out
        text = encoder_hidden_states.shape[1]
        encoder_out, out = out[:, :text], out[:, text:]
        out = attn.to_out[1](attn.to_out[0](out.contiguous()))
        return out, attn.to_add_out(encoder_out.contiguous())


def attention_modules(transformer: torch.nn.Module) -> list[Any]:
    """The transformer's FLUX attention layers (double- and single-stream blocks)."""
    from diffusers.models.transformers.transformer_flux import FluxAttention

    return [m for m in transformer.modules() if isinstance(m, FluxAttention)]


@contextlib.contextmanager
def opened(transformer: torch.nn.Module, state: OpenState) -> Iterator[list[Any]]:
    """Every attention layer of ``transformer`` on :class:`OpenFluxProcessor` with a plain ``attend``
    for the block; yields the layers. Their own processors come back on exit, also on errors."""
    layers = attention_modules(transformer)
    before = [m.processor for m in layers]
    try:
        for m in layers:
            m.processor = OpenFluxProcessor(state)
            m.attend = plain_attend()
        yield layers
    finally:
        for m, processor in zip(layers, before):
            m.processor = processor
            m.__dict__.pop("attend", None)
