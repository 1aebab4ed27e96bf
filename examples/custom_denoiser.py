"""Plug a model of your own into Paradiff's synchronized tiled sampler.

Run it:  python examples/custom_denoiser.py out.png

A backend is any object with the attributes and methods of
``paradiff_gui.engine.Denoiser``. This one is a toy "model" in pixel space (scale 1, RGB
channels) that predicts a clean image — soft, overlapping colour blobs that it knows for the
whole canvas — from any noisy input, the way an x0-predicting network would. Because the loop
hands it crops of the canvas together with each tile's position, the tiles agree where they
overlap and the stitched image has no seams. Swap ``predict`` for a real network and everything
else (plan, fusion, samplers, previews, cancel, metadata) comes from Paradiff.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler

from paradiff_gui.engine import Denoiser, GenerationRequest, Tile, TilePlan, generate
from paradiff_gui.engine.io.metadata import save_png
from paradiff_gui.engine.models.sd.schedulers import make_scheduler


class BlobDenoiser:
    name = "example:blobs"
    scale = 1  # image px per latent px: a pixel-space model
    channels = 3
    native_tile = 128
    device = torch.device("cpu")
    dtype = torch.float32

    def make_scheduler(self, sampler: str):
        # A "sample" (x0) predicting model; any of Paradiff's sampler names works on top.
        return make_scheduler(sampler, DDIMScheduler(prediction_type="sample", clip_sample=False).config)

    def prepare(self, request: GenerationRequest, plan: TilePlan) -> torch.Tensor:
        # Computed once per generation: here, the clean canvas the toy model "knows".
        g = torch.Generator().manual_seed(request.seed)
        y, x = torch.meshgrid(torch.arange(plan.height), torch.arange(plan.width), indexing="ij")
        canvas = torch.zeros(3, plan.height, plan.width)
        for _ in range(12):
            cy, cx = torch.rand(2, generator=g) * torch.tensor([plan.height, plan.width])
            radius = 20 + 60 * torch.rand(1, generator=g)
            colour = torch.rand(3, 1, 1, generator=g) * 2 - 1
            canvas += colour * torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2))
        return canvas.clamp(-1, 1)

    def predict(self, x: torch.Tensor, t: torch.Tensor, tiles: Sequence[Tile], cond: torch.Tensor) -> torch.Tensor:
        return torch.stack([cond[:, tl.y0 : tl.y1, tl.x0 : tl.x1] for tl in tiles])

    def preview(self, x: torch.Tensor, pred: torch.Tensor, t: float) -> torch.Tensor:
        return ((pred.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)

    def decode(self, latents: torch.Tensor, on_progress: Callable[[int, int], None]) -> np.ndarray:
        on_progress(1, 1)
        return ((latents[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def main(out: str) -> None:
    den = BlobDenoiser()
    assert isinstance(den, Denoiser)  # the protocol is runtime-checkable
    request = GenerationRequest(model=den.name, width=512, height=384, tile=128, overlap=32, steps=8,
                                sampler="euler", seed=1)
    result = generate(request, denoiser=den)
    save_png(out, result.image, result.request, result.plan, {"model_name": den.name})
    print(f"wrote {out}: {result.plan.describe()}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "custom_denoiser.png")
