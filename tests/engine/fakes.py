"""Scriptable fake denoisers for engine tests (the edges of a unit test, not real models)."""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import DDIMScheduler

from paradiff_gui.engine.models.sd.schedulers import make_scheduler


class FieldDenoiser:
    """Predicts ``field(global y, x) + tile_index`` for each tile: the fused prediction then
    shows exactly how every tile's output was placed and weighted on the canvas."""

    name = "field"
    scale = 1
    channels = 2
    native_tile = 16
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []
        self.decoded = False

    @staticmethod
    def field(h: int, w: int) -> torch.Tensor:
        y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                              indexing="ij")
        return torch.stack([torch.sin(0.3 * y) + torch.cos(0.2 * x), 0.01 * y * x])

    def make_scheduler(self, sampler):
        # "sample" prediction: the fake predicts the clean canvas itself, unclipped.
        return make_scheduler(sampler, DDIMScheduler(prediction_type="sample", clip_sample=False).config)

    def prepare(self, request, plan):
        self.full = self.field(plan.height, plan.width)
        return None

    def predict(self, x, t, tiles, cond):
        self.calls.append(tuple(tl.index for tl in tiles))
        out = torch.stack([self.full[:, tl.y0 : tl.y1, tl.x0 : tl.x1] + tl.index for tl in tiles])
        assert out.shape == x.shape
        return out

    def preview(self, x, pred, t):
        return torch.zeros((len(x), 2, 2, 3), dtype=torch.uint8)

    def decode(self, latents, on_progress):
        self.decoded = True
        on_progress(1, 1)
        img = ((latents[0, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        return np.repeat(img[..., None], 3, axis=2)


def gaussian_1d(n: int) -> np.ndarray:
    mid = (n - 1) / 2
    return np.array([math.exp(-((i - mid) ** 2) / (n * n) / 0.02) for i in range(n)])
