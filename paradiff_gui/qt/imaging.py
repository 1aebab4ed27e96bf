"""Pictures for the screen: display conversion, mip pyramids, heatmap colours, QImage wrapping.

The numpy parts run on worker threads (an 8192² pyramid takes about a second); the GUI thread
only wraps the finished buffers in QImages, which copies nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PySide6.QtGui import QImage

from ..engine.core.events import TilePreview

SMALLEST_LEVEL = 256  # px; the pyramid stops once a level's long side is at most this


def to_display(image: np.ndarray, relief: bool = False) -> np.ndarray:
    """(H, W, 4) uint8 in QImage's RGB32 byte order (B, G, R, 255) for the screen.

    RGB32 is what the raster painter draws without converting: a wrapped RGB888 picture would
    be converted on every paint. A 16-bit heightmap uses a few percent of its codes (the
    model's height range is fixed), so it is stretched between its 0.5th and 99.5th percentiles
    for viewing, or drawn as shaded relief.
    """
    if image.ndim == 3:
        if image.dtype != np.uint8:
            raise ValueError(f"colour images must be uint8, got {image.dtype}")
        rgb = image[..., :3]
    else:
        if relief:
            from ..engine.analysis.relief import shaded_relief

            gray = shaded_relief(image)
        elif image.dtype == np.uint8:
            gray = image
        else:
            # Percentiles of a subsample: one sharp peak must not turn the rest of the map black,
            # and an 8K map is not sorted in full for a view.
            step = max(1, int(np.sqrt(image.size / 1_000_000)))
            lo, hi = (float(v) for v in np.percentile(image[::step, ::step], (0.5, 99.5)))
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
            gray = np.clip((image.astype(np.float32) - lo) * scale, 0, 255).round().astype(np.uint8)
        rgb = gray[..., None] if gray.ndim == 2 else gray
    out = np.empty((*image.shape[:2], 4), np.uint8)
    out[..., 0:3] = rgb[..., ::-1]
    out[..., 3] = 255
    return out


def relief_preview(preview: TilePreview) -> TilePreview:
    """A heightmap model's grey tile preview as shaded relief, on one tint scale for all tiles
    (the preview's 0–255 is the model's fixed height range). Runs on the generation's worker."""
    from ..engine.analysis.relief import shaded_relief

    rgb = preview.rgb
    grey = rgb[..., 0] if rgb.ndim == 3 else rgb
    return replace(preview, rgb=shaded_relief(grey, span=(0.0, 255.0)))


def downsample(level: np.ndarray) -> np.ndarray:
    """Half size by 2x2 box averaging (odd edges keep their last row/column)."""
    h, w = level.shape[:2]
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    if h % 2 or w % 2:
        pad = [(0, h % 2), (0, w % 2)] + [(0, 0)] * (level.ndim - 2)
        level = np.pad(level, pad, mode="edge")
    acc = level.astype(np.uint16)
    acc = acc[0::2, 0::2] + acc[1::2, 0::2] + acc[0::2, 1::2] + acc[1::2, 1::2]
    return ((acc + 2) >> 2).astype(np.uint8).reshape((h2, w2, *level.shape[2:]))


def pyramid(display: np.ndarray) -> list[np.ndarray]:
    """Level 0 is ``display``; each next level is half the size, down to ``SMALLEST_LEVEL``."""
    levels = [display]
    while max(levels[-1].shape[:2]) > SMALLEST_LEVEL:
        levels.append(downsample(levels[-1]))
    return levels


def heat_rgba(heat: np.ndarray) -> np.ndarray:
    """Seam heatmap (1 = as smooth as the image, ≫ 1 = a visible seam) as premultiplied ARGB32
    (bytes B, G, R, A).

    Ordinary texture reaches 1–1.5 anywhere, so below 1.5 is transparent; from 1.5 it fades in
    yellow and turns to opaque red at 4 and above.
    """
    t = np.clip((heat - 1.5) / 2.5, 0.0, 1.0).astype(np.float32)
    alpha = np.where(heat > 1.5, 0.3 + 0.6 * t, 0.0).astype(np.float32)
    rgba = np.empty((*heat.shape, 4), np.uint8)
    rgba[..., 2] = (255 * alpha).astype(np.uint8)
    rgba[..., 1] = (255 * (1.0 - t) * alpha).astype(np.uint8)
    rgba[..., 0] = 0
    rgba[..., 3] = (255 * alpha).astype(np.uint8)
    return rgba


def qimage(array: np.ndarray, alpha: bool = False) -> QImage:
    """Wrap a C-contiguous uint8 array without copying: (H, W) gray, (H, W, 3) RGB, or (H, W, 4)
    in RGB32 byte order (premultiplied ARGB32 with ``alpha``).

    The QImage points into ``array``: keep the array alive as long as the image (``Layer``
    holds both).
    """
    if array.dtype != np.uint8 or not array.flags.c_contiguous:
        raise ValueError("qimage needs a C-contiguous uint8 array")
    h, w = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    fmt = {1: QImage.Format.Format_Grayscale8, 3: QImage.Format.Format_RGB888,
           4: QImage.Format.Format_ARGB32_Premultiplied if alpha else QImage.Format.Format_RGB32}[channels]
    return QImage(array.data, w, h, array.strides[0], fmt)


@dataclass
class Layer:
    """A picture as a mip pyramid of QImages, with the arrays they point into."""

    width: int  # level-0 size, image px
    height: int
    arrays: list[np.ndarray]
    images: list[QImage]

    @classmethod
    def from_levels(cls, levels: list[np.ndarray], alpha: bool = False) -> Layer:
        h, w = levels[0].shape[:2]
        return cls(w, h, levels, [qimage(a, alpha) for a in levels])

    def level_for(self, scale: float) -> int:
        """The coarsest level still at least as sharp as ``scale`` device px per image px."""
        k = 0
        while k + 1 < len(self.images) and scale * 2 ** (k + 1) <= 1.0:
            k += 1
        return k
