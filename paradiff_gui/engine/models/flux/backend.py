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

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...core.plan import Tile, TilePlan
from ...core.request import GenerationRequest, RequestError
from .. import flow
from . import attention
from . import control as controlnets

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
    control: controlnets.FluxControlSet | None = None  # ControlNets with their latents (flux/control.py)


class FluxDenoiser(flow.FlowDenoiser):
    """A diffusers FluxPipeline (dev or schnell) behind the Denoiser protocol."""

    kind = KIND
    tiny_family = "flux"  # previews: TAEF1 when found
    native_tile = NATIVE
    pipeline_sigmas = True  # FluxPipeline passes σ = linspace(1, 1/steps, steps)

    def __init__(self, pipe: Any, name: str, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(pipe, name, device, dtype)
        self.guidance_embeds = bool(self.transformer.config.guidance_embeds)
        self._state = attention.OpenState()  # what the opened attention layers read for the next call
        self._open = False  # opened for the whole run (bridges)
        self._controlnets: dict[str, Any] = {}  # loaded ControlNets, kept with the model (flux/control.py)
        self._control: controlnets.FluxControlSet | None = None  # the run's, told the step by begin_step

    def notices(self, request: GenerationRequest) -> list[str]:
        said = super().notices(request)
        if request.negative_prompt:
            said.append(f"{KIND} is guidance-distilled (one view per tile, no unconditional half): the negative "
                        "prompt is ignored")
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
        # ControlNets not in this request are dropped; one set per run (a region's prepare shares it).
        wanted = {str(Path(c.model).expanduser().resolve()) for c in request.controls}
        self._controlnets = {k: v for k, v in self._controlnets.items() if k in wanted}
        key = (request.controls, request.width, request.height, request.init_image, request.guidance)
        if self._control is None or self._control.key != key:
            self._control = controlnets.control_set(self, request, self._controlnets)
            if self._control is not None:
                self._control.key = key
        return FluxConditioning(embeds.to(self.device, self.dtype), pooled.to(self.device, self.dtype),
                                txt_ids.to(self.device), request.guidance if self.guidance_embeds else None,
                                request.positions, self._control)

    def begin_step(self, plan: TilePlan, step: int, total: int) -> None:
        """The loop says which step of how many starts, on which plan: ControlNets steer only within
        their range of the steps, and crop their latents at the plan's canvas size."""
        if self._control is not None:
            self._control.begin_step(plan, step, total)

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

    def rotary(self, tiles: Sequence[Tile], cond: FluxConditioning) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row rotary (cos, sin), (len(tiles), text + image tokens, head_dim): each tile's text and
        image positions through the transformer's own ``pos_embed``."""
        parts = [self.transformer.pos_embed(torch.cat([cond.txt_ids, self.image_ids(tl, "canvas")])) for tl in tiles]
        return torch.stack([c for c, _ in parts]), torch.stack([s for _, s in parts])

    @contextlib.contextmanager
    def bridgeable(self) -> Iterator[None]:
        """For a bridged run: the attention layers opened (``attention.py``) until the run ends;
        their own processors come back afterwards, also after errors and cancels."""
        with attention.opened(self.transformer, self._state):
            self._open = True
            try:
                yield
            finally:
                self._open = False

    def predict(self, x: torch.Tensor, t: torch.Tensor, tiles: Sequence[Tile], cond: FluxConditioning) -> torch.Tensor:
        _, _, h, w = x.shape
        b = len(tiles)
        # As the pipeline: the timestep in the latents' dtype, in units of 1000.
        timestep = t.expand(b).to(x.dtype) / flow.NUM_TRAIN_TIMESTEPS
        guidance = None if cond.guidance is None else \
            torch.full([1], cond.guidance, device=self.device, dtype=torch.float32).expand(b)
        # Local positions are the same for every tile: the transformer's own. On the canvas each tile
        # has its own: one tile alone takes them as the transformer's, several take per-row rotary
        # positions through the opened attention (one call for the whole batch).
        per_row = cond.positions == "canvas" and (self._open or len({(tl.y0, tl.x0) for tl in tiles}) > 1)
        with contextlib.ExitStack() as stack:
            if per_row and not self._open:
                stack.enter_context(attention.opened(self.transformer, self._state))
            if self.bridge is not None:  # (the batch is one view per tile: the layout a bridge expects)
                stack.enter_context(self.bridge.tiles(tiles))
            self._state.text = cond.embeds.shape[1]
            self._state.rotary = self.rotary(tiles, cond) if per_row else None
            hidden, img_ids = flow.pack(x), self.image_ids(tiles[0], cond.positions)
            common = dict(timestep=timestep, pooled_projections=cond.pooled.expand(b, -1),
                          encoder_hidden_states=cond.embeds.expand(b, -1, -1), txt_ids=cond.txt_ids,
                          img_ids=img_ids, return_dict=False)
            try:
                # ControlNets: each tile's own crop of each control's latents, packed like the tiles.
                extra = {} if cond.control is None else cond.control.samples(
                    tiles, lambda net, latents, scale: self._controlnet(net, hidden, latents, scale, tiles, cond,
                                                                       per_row, common))
                v = self.transformer(hidden_states=hidden, guidance=guidance, **common, **extra)[0]
            finally:
                self._state.rotary = None
        return flow.unpack(v, h, w).to(x.dtype)

    def _controlnet(self, net: Any, hidden: torch.Tensor, latents: torch.Tensor, scale: float,
                    tiles: Sequence[Tile], cond: FluxConditioning, per_row: bool, common: dict[str, Any]) -> Any:
        """One FLUX ControlNet on the batch: the transformer's inputs, the tiles' control latents
        packed, the guidance its own config asks for. Tiles at different canvas places get per-row
        rotary positions in its attention too (its own ``pos_embed``); bridges do not reach it
        (a ControlNet sees its tile alone)."""
        b = len(tiles)
        guidance = torch.full([1], cond.control.guidance, device=self.device, dtype=torch.float32).expand(b) \
            if net.config.guidance_embeds else None
        with contextlib.ExitStack() as stack:
            if per_row:
                state = attention.OpenState(text=cond.embeds.shape[1])
                parts = [net.pos_embed(torch.cat([cond.txt_ids, self.image_ids(tl, "canvas")])) for tl in tiles]
                state.rotary = torch.stack([c for c, _ in parts]), torch.stack([s for _, s in parts])
                stack.enter_context(attention.opened(net, state))
            return net(hidden_states=hidden, controlnet_cond=flow.pack(latents.to(hidden.dtype)),
                       conditioning_scale=scale, guidance=guidance, **common)


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
