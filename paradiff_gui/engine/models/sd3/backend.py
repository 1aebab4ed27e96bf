"""Stable Diffusion 3 / 3.5 behind the Denoiser protocol.

The transformer patchifies the 16-channel latents itself (2×2 patches), so ``predict`` hands it the
tile crops as they are. Classifier-free guidance as in SD: the unconditional and conditional halves
of every tile in one batch. Prompts go through the pipeline's own ``encode_prompt`` — CLIP-L,
CLIP-G and T5; without T5 (a folder saved without it) the pipeline's zeros stand in, as diffusers
does.

Positions: SD3 adds a fixed 2-D sin-cos table (``pos_embed_max_size`` tokens a side) to its tokens
and crops its centre for a picture of the tile's size (``local``). With ``canvas``, the canvas is
placed at the centre of the table and each tile gets the part under it, so one tile covering the
canvas is the same as ``local``; a canvas larger than the table is refused (the model never saw
positions past it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...core.plan import Tile, TilePlan
from ...core.request import GenerationRequest, RequestError
from .. import flow
from . import attention

KIND = "SD3"


@dataclass(frozen=True)
class SD3Conditioning:
    embeds: torch.Tensor  # (2, L, D) [negative, positive] with guidance, else (1, L, D)
    pooled: torch.Tensor  # (2 or 1, P): CLIP-L and CLIP-G pooled, side by side
    guidance: float
    cfg: bool
    positions: str  # local | canvas
    canvas_tokens: tuple[int, int]  # the canvas in tokens (rows, cols), for canvas positions


class SD3Denoiser(flow.FlowDenoiser):
    """A diffusers StableDiffusion3Pipeline behind the Denoiser protocol."""

    kind = KIND
    tiny_family = "sd3"  # previews: TAESD3 when found

    def __init__(self, pipe: Any, name: str, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(pipe, name, device, dtype)
        config = self.transformer.config
        self.native_tile = int(config.sample_size) * self.scale  # image px (SD3, 3.5: 128 latent px → 1024)
        self.patch_embed = self.transformer.pos_embed
        self.table_size = config.pos_embed_max_size  # tokens a side; None: no table to place tiles in

    def notices(self, request: GenerationRequest) -> list[str]:
        said = super().notices(request)
        if self.pipe.text_encoder_3 is None:
            said.append(f"{self.name} has no T5 text encoder: zeros stand in for its part of the prompt, as in "
                        "diffusers (shorter prompts are followed less closely)")
        return said

    @torch.no_grad()
    def prepare(self, request: GenerationRequest, plan: TilePlan) -> SD3Conditioning:
        self._prepare_common(request, plan)
        rows, cols = (-(-e // flow.PATCH) for e in plan.extent)  # tokens; a wrapped plan reaches past the edge
        if request.positions == "canvas":
            if self.table_size is None:
                raise RequestError("positions", f"{self.name} has no position table to place tiles in "
                                                "(pos_embed_max_size): use positions local")
            if max(rows, cols) > self.table_size:
                most = self.table_size * flow.PATCH * self.scale
                raise RequestError("positions", f"canvas places the whole canvas in {self.name}'s position table of "
                                                f"{self.table_size} tokens a side ({most} px); this canvas is "
                                                f"{cols}x{rows} tokens: use positions local or a canvas of at "
                                                f"most {most}x{most} px")
        g = request.guidance
        cfg = g > 1.0
        with flow.encoders_on(self.pipe, self.device) as where:  # CLIP-L/G and T5 leave the device after
            pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
                prompt=request.prompt, prompt_2=None, prompt_3=None, device=where, num_images_per_prompt=1,
                do_classifier_free_guidance=cfg, negative_prompt=request.negative_prompt or None,
            )
        embeds = torch.cat([neg, pos]) if cfg else pos
        pooled_all = torch.cat([neg_pooled, pooled]) if cfg else pooled
        return SD3Conditioning(embeds.to(self.device, self.dtype), pooled_all.to(self.device, self.dtype), g, cfg,
                               request.positions, (rows, cols))

    def table_embedding(self, top: float, left: float, rows: int, cols: int) -> torch.Tensor:
        """(rows·cols, D) sin-cos embedding of a block of tokens whose first sits at (top, left) of
        the table (token units; halves allowed). At whole positions it is the table's own crop: the
        same formula as diffusers' ``get_2d_sincos_pos_embed``, evaluated where the tile lies."""
        from diffusers.models.embeddings import get_2d_sincos_pos_embed_from_grid

        pe = self.patch_embed
        per = self.table_size / pe.base_size  # table positions per embedding unit
        ys = (torch.arange(rows, dtype=torch.float32) + top) / per / pe.interpolation_scale
        xs = (torch.arange(cols, dtype=torch.float32) + left) / per / pe.interpolation_scale
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=0).reshape(2, 1, rows, cols)
        return get_2d_sincos_pos_embed_from_grid(pe.pos_embed.shape[-1], grid, output_type="pt").float()

    def tile_embeddings(self, tiles: Sequence[Tile], cond: SD3Conditioning) -> torch.Tensor:
        """(len(tiles), tokens, D): each tile's part of the table under the canvas placed at its centre."""
        crows, ccols = cond.canvas_tokens
        top0, left0 = (self.table_size - crows) // 2, (self.table_size - ccols) // 2
        out = []
        for tl in tiles:
            oy, ox = flow.token_origin(tl)
            out.append(self.table_embedding(top0 + oy, left0 + ox, tl.height // flow.PATCH, tl.width // flow.PATCH))
        return torch.stack(out).to(self.device)

    @contextlib.contextmanager
    def bridgeable(self) -> Iterator[None]:
        """For a bridged run: the joint attention layers opened (``attention.py``) until the run ends;
        their own processors come back afterwards, also after errors and cancels."""
        with attention.opened(self.transformer):
            yield

    @contextlib.contextmanager
    def _placed(self, embeds: torch.Tensor | None) -> Iterator[None]:
        """The patch embedding's output with ``embeds`` (one per batch row) in place of the centre crop
        it adds; nothing changes when ``embeds`` is None."""
        if embeds is None:
            yield
            return
        pe = self.patch_embed

        def hook(module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor:
            latent = module.proj(args[0]).flatten(2).transpose(1, 2)  # as PatchEmbed.forward, without the crop
            return (latent + embeds.to(latent.dtype)).to(latent.dtype)

        assert pe.norm is None and pe.flatten, "SD3's patch embedding adds the table to the projected patches"
        handle = pe.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def predict(self, x: torch.Tensor, t: torch.Tensor, tiles: Sequence[Tile], cond: SD3Conditioning) -> torch.Tensor:
        b = len(tiles)
        halves = 2 if cond.cfg else 1
        x_in = torch.cat([x] * halves) if cond.cfg else x
        # embeds is [neg, pos]: repeat_interleave gives b negatives then b positives, matching x_in.
        placed = self.tile_embeddings(tiles, cond).repeat(halves, 1, 1) if cond.positions == "canvas" else None
        # The batch is [unconditional rows; conditional rows], each half the tiles in order: the
        # layout a bridge expects.
        bridged = self.bridge.tiles(tiles) if self.bridge is not None else contextlib.nullcontext()
        with self._placed(placed), bridged:
            out = self.transformer(
                hidden_states=x_in, timestep=t.expand(len(x_in)), encoder_hidden_states=cond.embeds.repeat_interleave(
                    b, dim=0), pooled_projections=cond.pooled.repeat_interleave(b, dim=0), return_dict=False,
            )[0]
        if cond.cfg:
            uncond, text = out.chunk(2)
            out = uncond + cond.guidance * (text - uncond)
        return out


# -- loading ------------------------------------------------------------------------------------


def load_sd3(model: str, device: torch.device, dtype: torch.dtype, *, transformer: str | None = None,
             allow_download: bool = False, weights: str = "full") -> SD3Denoiser:
    """An SD3/3.5 diffusers folder or cached hub id; ``transformer``: a single-file checkpoint of the
    transformer used in place of the folder's (the rest — VAE, CLIP-L/G, T5 — from the folder). ``weights`` fp8: the
    transformer stored in float8 (flow.store_weights). Only the transformer and the VAE go to
    ``device``; the text encoders stay on the CPU between encodes (flow.encoders_on)."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    pipe = flow.load_pipeline(StableDiffusion3Pipeline, SD3Transformer2DModel, "sd3", KIND, model, dtype,
                              transformer=transformer, allow_download=allow_download,
                              optional=("text_encoder_3", "tokenizer_3"))
    pipe.set_progress_bar_config(disable=True)
    flow.store_weights(pipe.transformer, weights, dtype)  # fp8: before the move, so only fp8 travels
    flow.place(pipe, device)  # the text encoders stay on the CPU (flow.encoders_on)
    name = flow.display_name(model, transformer)
    return SD3Denoiser(pipe, name, device, dtype)
