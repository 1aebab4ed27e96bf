"""The canvas's underlay: a restyle's starting picture (File → Restyle…) under the tile plan.

The canvas draws ``underlay`` (a QImage, stretched over the canvas as the engine reads the
starting picture at canvas size) where it has no picture yet, seeds a run's preview buffer with it
so the tiles' previews replace it as they come, and with ``show_source`` draws it in place of the
finished picture (View → Compare with source). Kept here so the canvas only paints it.
"""

from __future__ import annotations

from PySide6.QtCore import QRectF
from PySide6.QtGui import QImage, QPainter

UNDERLAY_OPACITY = 0.6  # under a run's previews: dimmed, so the re-drawn tiles stand out


def seed_preview(buffer: QImage, underlay: QImage | None) -> None:
    """Paint ``underlay`` over a fresh preview buffer (its fill shows through, dimmed)."""
    if underlay is None or underlay.isNull():
        return
    with QPainter(buffer) as p:
        p.setOpacity(UNDERLAY_OPACITY)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        p.drawImage(QRectF(0, 0, buffer.width(), buffer.height()), underlay)


def set_underlay(canvas, image: QImage | None, show_source: bool = False) -> None:
    """Give ``canvas`` (a CanvasWidget) its starting picture; ``show_source``: shown in place of the
    picture (the A/B view). A run that started before the picture was read gets it under its
    previews while none has arrived."""
    canvas.underlay = image
    canvas.show_source = show_source and image is not None
    if canvas._preview is not None and not canvas.tile_steps:
        canvas.start_previews()
    canvas.update()
