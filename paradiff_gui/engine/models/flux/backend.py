"""FLUX.1 dev and schnell behind the Denoiser protocol.

The loop's tiles stay in latent px (16 channels); ``predict`` packs each crop into 2×2-patch tokens,
runs the transformer and unpacks the velocity. Prompts are encoded by the pipeline's own
``encode_prompt`` (CLIP pooled + T5 sequence). What is ours: the tiles' rotary positions
(``positions``), and the schedule's shift taken for the tile's size (flow.FlowScheduler).

Guidance: FLUX.1-dev is guidance-distilled — the request's ``guidance`` goes into the guidance
embedding and every tile is one view (no classifier-free guidance, no negative prompt); schnell
has no guidance at all (4 steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...core.plan import Tile, TilePlan
from ...core.request import GenerationRequest, RequestError
from .. import flow

KIND = "FLUX.1"
NATIVE = 1024  # image px: the pipeline's default size (128 latent px a side)
DEV_GUIDANCE = 3.5  # the pipeline's default guidance for the guidance-distilled model
# Text tokens: the pipeline's default for dev; schnell was distilled with 256 (BFL's reference
# code, and diffusers' examples pass 256 for it).
DEV_SEQUENCE, SCHNELL_SEQUENCE = 512, 256


@dataclass(frozen=True)
class FluxConditioning:
    embeds: torch.Tensor  # (1, L, D) T5 sequence
    pooled: torch.Tensor  # (1, P) CLIP pooled
    txt_ids: torch.Tensor  # (L, 3) zeros: text tokens sit at the origin of the rotary positions
    guidance: float | None  # the guidance embedding's value (dev); None: schnell
    positions: str  # local | canvas


class FluxDenoiser(flow.FlowDenoiser):
    """A diffusers FluxPipeline (dev or schnell) behind the Denoiser protocol."""

    kind = KIND
    native_tile = NATIVE
    pipeline_sigmas = True  # FluxPipeline passes σ = linspace(1, 1/steps, steps)

    def __init__(self, pipe: Any, name: str, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(pipe, name, device, dtype)
        self.guidance_embeds = bool(self.transformer.config.guidance_embeds)

    def notices(self, request: GenerationRequest) -> list[str]:
        said = super().notices(request)
        if request.negative_prompt:
            said.append(f"{KIND} is guidance-distilled (one view per tile, no unconditional half): the negative "
                        "prompt is ignored")
        if request.positions == "canvas":
            said.append(f"{KIND} with positions canvas runs one tile per transformer call (each tile has its own "
                        "rotary positions); positions local batches them")
        return said

    @torch.no_grad()
    def prepare(self, request: GenerationRequest, plan: TilePlan) -> FluxConditioning:
        if not self.guidance_embeds and request.guidance != 1.0:  # refused, not ignored: no silent change
            raise RequestError("guidance", f"{KIND} schnell has no guidance (it was distilled without it): use "
                                           f"guidance 1, got {request.guidance}")
        self._prepare_common(request, plan)
        sequence = DEV_SEQUENCE if self.guidance_embeds else SCHNELL_SEQUENCE
        with flow.encoders_on(self.pipe, self.device) as where:  # T5 and CLIP leave the device after
            embeds, pooled, txt_ids = self.pipe.encode_prompt(
                prompt=request.prompt, prompt_2=None, device=where, num_images_per_prompt=1,
                max_sequence_length=sequence,
            )
        return FluxConditioning(embeds.to(self.device, self.dtype), pooled.to(self.device, self.dtype),
                                txt_ids.to(self.device), request.guidance if self.guidance_embeds else None,
                                request.positions)

    def image_ids(self, tile: Tile, positions: str) -> torch.Tensor:
        """(tokens, 3) rotary positions of a tile's image tokens: (0, row, col) as the pipeline makes
        them (``local``), or moved by the tile's place on the canvas's token grid (``canvas``).

        Rotary attention depends only on differences of positions, so among image tokens both are
        the same; what ``canvas`` changes is where the image sits relative to the text tokens (all at
        0) — each tile's text attention sees it at its own place on the canvas."""
        rows, cols = tile.height // flow.PATCH, tile.width // flow.PATCH
        oy, ox = flow.token_origin(tile) if positions == "canvas" else (0.0, 0.0)
        ids = torch.zeros(rows, cols, 3)
        ids[..., 1] = ids[..., 1] + torch.arange(rows)[:, None] + oy
        ids[..., 2] = ids[..., 2] + torch.arange(cols)[None, :] + ox
        return ids.reshape(rows * cols, 3).to(self.device, self.dtype)

    def predict(self, x: torch.Tensor, t: torch.Tensor, tiles: Sequence[Tile], cond: FluxConditioning) -> torch.Tensor:
        _, _, h, w = x.shape
        out = torch.empty_like(x)
        # All tiles share their positions when local: one call. On the canvas each tile has its own,
        # and the transformer takes one set of positions per call.
        groups = [list(range(len(tiles)))] if cond.positions == "local" else \
            flow.group_by(tiles, lambda tl: (tl.y0, tl.x0))
        for rows in groups:
            b = len(rows)
            tokens = flow.pack(x[rows])
            # As the pipeline: the timestep in the latents' dtype, in units of 1000.
            timestep = t.expand(b).to(x.dtype) / flow.NUM_TRAIN_TIMESTEPS
            guidance = None if cond.guidance is None else \
                torch.full([1], cond.guidance, device=self.device, dtype=torch.float32).expand(b)
            v = self.transformer(
                hidden_states=tokens, timestep=timestep, guidance=guidance,
                pooled_projections=cond.pooled.expand(b, -1), encoder_hidden_states=cond.embeds.expand(b, -1, -1),
                txt_ids=cond.txt_ids, img_ids=self.image_ids(tiles[rows[0]], cond.positions), return_dict=False,
            )[0]
            out[rows] = flow.unpack(v, h, w).to(out.dtype)
        return out


# -- loading ------------------------------------------------------------------------------------


def load_flux(model: str, device: torch.device, dtype: torch.dtype, *, transformer: str | None = None,
              allow_download: bool = False, weights: str = "full") -> FluxDenoiser:
    """A FLUX.1 diffusers folder or cached hub id; ``transformer``: a single-file checkpoint of the
    transformer used in place of the folder's (the rest — VAE, CLIP, T5 — from the folder). ``weights`` fp8: the
    transformer stored in float8 (flow.store_weights). Only the transformer and the VAE go to
    ``device``; the text encoders stay on the CPU between encodes (flow.encoders_on)."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    pipe = flow.load_pipeline(FluxPipeline, FluxTransformer2DModel, "flux", KIND, model, dtype,
                              transformer=transformer, allow_download=allow_download)
    pipe.set_progress_bar_config(disable=True)
    flow.store_weights(pipe.transformer, weights, dtype)  # fp8: before the move, so only fp8 travels
    flow.place(pipe, device)  # the text encoders stay on the CPU (flow.encoders_on)
    name = flow.display_name(model, transformer)
    return FluxDenoiser(pipe, name, device, dtype)
