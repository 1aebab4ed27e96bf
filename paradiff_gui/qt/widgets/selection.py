"""The refine selection on the canvas: a rectangle, a painted mask or a mask file, at image px.

:class:`Selection` is the model: the picture's size and one of a rectangle (image px), a painted
mask or a mask file. A painted mask is held **downscaled** (at most ``MASK_MAX_SIDE`` px a side,
``scale`` mask px per image px): a 16K picture's full-size mask would be 256 MiB of float on the
GUI thread per stroke, where the 4096² mask is 64 MiB of ARGB that Qt paints with its own brush.
:func:`full_mask` brings it back to image px, on a worker, when a refine is submitted.

The mask is an ARGB image in the tint colour whose alpha is the selection: the canvas draws it
as it is (half transparent), and the alpha is the mask — one buffer, no conversion per stroke.

:class:`SelectionTool` turns the canvas's mouse into edits of the model (the canvas forwards its
events while a tool is set and draws :meth:`SelectionTool.paint` over the picture).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QKeyEvent, QMouseEvent, QPainter, QPen
from PySide6.QtWidgets import QWidget

from ...engine.core.request import RequestError

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 image px, x1/y1 exclusive
MASK_MAX_SIDE = 4096  # mask px: the painted mask's longest side at most
TINT = QColor(255, 120, 40)  # the selection's colour on the canvas
DEFAULT_BRUSH = 48  # image px across
TOOLS = ("rect", "brush")
EMPTY = ("is empty: drag a rectangle (Rectangle) or paint with the brush (Brush) on the picture, or load a "
         "mask (Mask from file…)")


class Selection(QObject):
    """What is selected on a ``width`` x ``height`` picture. ``kind``: "" (nothing), "rect",
    "brush" (the painted mask) or "file" (a mask image's path)."""

    changed = Signal()

    def __init__(self, width: int = 0, height: int = 0, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.width, self.height = 0, 0
        self.scale = 1.0
        self.mask: QImage | None = None
        self.reset(width, height)

    def reset(self, width: int, height: int) -> None:
        """Nothing selected on a ``width`` x ``height`` picture (the painted mask is made on the first stroke)."""
        self.width, self.height = width, height
        self.scale = min(1.0, MASK_MAX_SIDE / max(1, width, height))
        self.kind = ""
        self.rect: Rect | None = None
        self.path: str | None = None
        self.mask = None
        self.changed.emit()

    def clear(self) -> None:
        self.reset(self.width, self.height)

    @property
    def empty(self) -> bool:
        if self.kind == "rect":
            return self.rect is None
        if self.kind == "brush":  # (a mask erased to nothing is found on the worker: write_mask)
            return self.mask is None
        return self.kind != "file"

    def mask_size(self) -> tuple[int, int]:
        return max(1, round(self.width * self.scale)), max(1, round(self.height * self.scale))

    def set_rect(self, rect: Rect | None) -> None:
        """Select ``rect`` (image px, as given: the engine refuses one outside the picture by name)."""
        self.kind, self.rect, self.path, self.mask = "rect", rect, None, None
        self.changed.emit()

    def set_file(self, path: str, preview: QImage | None = None) -> None:
        """Select with the mask image at ``path`` (``preview``: its tint at mask size, for the canvas)."""
        self.kind, self.rect, self.path, self.mask = "file", None, str(path), preview
        self.changed.emit()

    def stroke(self, points: list[QPointF], size: float, erase: bool = False) -> None:
        """Paint (or ``erase``) a brush stroke through ``points`` (image px), ``size`` image px across."""
        if self.kind != "brush" or self.mask is None:
            w, h = self.mask_size()
            self.kind, self.rect, self.path = "brush", None, None
            self.mask = QImage(w, h, QImage.Format.Format_ARGB32_Premultiplied)
            self.mask.fill(Qt.GlobalColor.transparent)
        s = self.scale
        pen = QPen(TINT, max(1.0, size * s), Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap,
                   Qt.PenJoinStyle.RoundJoin)
        with QPainter(self.mask) as p:
            p.setRenderHint(QPainter.RenderHint.Antialiasing)
            if erase:
                p.setCompositionMode(QPainter.CompositionMode.CompositionMode_Clear)
            p.setPen(pen)
            pts = [QPointF(q.x() * s, q.y() * s) for q in points]
            if len(pts) == 1:
                p.drawPoint(pts[0])
            else:
                for a, b in itertools.pairwise(pts):
                    p.drawLine(a, b)
        self.changed.emit()

    def painted_box(self) -> Rect | None:
        """The painted mask's bounding box in image px (None: nothing painted)."""
        if self.mask is None:
            return None
        a = alpha(self.mask)
        ys, xs = np.nonzero(a)
        if ys.size == 0:
            return None
        s = self.scale
        return (int(xs.min() / s), int(ys.min() / s), min(self.width, int(np.ceil((xs.max() + 1) / s))),
                min(self.height, int(np.ceil((ys.max() + 1) / s))))


def alpha(image: QImage) -> np.ndarray:
    """The alpha channel of an ARGB32 image as (h, w) uint8 (a copy)."""
    w, h = image.width(), image.height()
    buf = np.frombuffer(image.constBits(), np.uint8, count=image.bytesPerLine() * h)
    return buf.reshape(h, image.bytesPerLine() // 4, 4)[:, :w, 3].copy()  # BGRA in memory (little-endian)


def full_mask(mask: QImage, width: int, height: int) -> np.ndarray:
    """The painted ``mask`` at image size, (height, width) uint8, 255 = refine: its alpha resized
    (bilinear) from mask px to image px. For a worker: pass it a copy of the mask."""
    from PIL import Image

    a = alpha(mask)
    if a.shape == (height, width):
        return a
    return np.asarray(Image.fromarray(a).resize((width, height), Image.Resampling.BILINEAR))


def write_mask(mask: QImage, width: int, height: int, path: Path) -> Path:
    """The painted ``mask`` written as a grayscale PNG at image size (the file a refine reads and
    its recipe names, so a replay has it). Atomic; for a worker. A mask erased to nothing is
    refused (field ``selection``) before anything is written."""
    import os

    from PIL import Image

    values = full_mask(mask, width, height)
    if not values.any():
        raise RequestError("selection", EMPTY)
    tmp = path.with_name(f".{path.name}.part")
    Image.fromarray(values, "L").save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def tint_of(values: np.ndarray) -> QImage:
    """A mask (h, w) uint8 as the canvas draws it: the tint colour with the mask as alpha."""
    h, w = values.shape
    argb = np.empty((h, w, 4), np.uint8)
    a = values.astype(np.uint16)
    argb[..., 0] = (a * TINT.blue() // 255).astype(np.uint8)  # premultiplied, BGRA in memory
    argb[..., 1] = (a * TINT.green() // 255).astype(np.uint8)
    argb[..., 2] = (a * TINT.red() // 255).astype(np.uint8)
    argb[..., 3] = values
    return QImage(argb.data, w, h, 4 * w, QImage.Format.Format_ARGB32_Premultiplied).copy()


class SelectionTool(QObject):
    """Edits ``selection`` with the mouse on ``canvas`` (a CanvasWidget: its coordinate maps only).
    ``tool``: "rect" (drag) or "brush" (paint; Shift, the right button or ``erase`` erases)."""

    def __init__(self, canvas: QWidget, selection: Selection) -> None:
        super().__init__(canvas)
        self.canvas = canvas
        self.selection = selection
        self.tool = "rect"
        self.brush = DEFAULT_BRUSH  # image px
        self.erase = False
        self.editable = True
        self._start: QPointF | None = None  # image px where a rectangle's drag began
        self._last: QPointF | None = None  # image px: a brush stroke's last point
        self._erasing = False
        self._hover: QPointF | None = None  # widget px, for the brush's outline
        selection.changed.connect(canvas.update)

    def _pos(self, event: QMouseEvent) -> QPointF:
        return self.canvas.to_image(event.position())

    def mouse_press(self, event: QMouseEvent) -> bool:
        if not self.editable or not self.selection.width:
            return False
        b = event.button()
        if self.tool == "rect" and b == Qt.MouseButton.LeftButton:
            self._start = self._pos(event)
            return True
        if self.tool == "brush" and b in (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton):
            self._erasing = self.erase or b == Qt.MouseButton.RightButton or bool(
                event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
            self._last = self._pos(event)
            self.selection.stroke([self._last], self.brush, self._erasing)
            return True
        return False

    def mouse_move(self, event: QMouseEvent) -> bool:
        self._hover = event.position()
        if self.tool == "brush":
            self.canvas.update()
        if self._start is not None:
            self.selection.set_rect(self._clamped(self._start, self._pos(event)))
            return True
        if self._last is not None:
            p = self._pos(event)
            self.selection.stroke([self._last, p], self.brush, self._erasing)
            self._last = p
            return True
        return False

    def mouse_release(self, event: QMouseEvent) -> bool:
        if self._start is not None:
            rect = self._clamped(self._start, self._pos(event))
            self._start = None
            self.selection.set_rect(rect)
            return True
        if self._last is not None:
            self._last = None
            return True
        return False

    def key_press(self, event: QKeyEvent) -> bool:
        if event.key() == Qt.Key.Key_Escape and self.selection.kind:
            self.selection.clear()
            return True
        return False

    def _clamped(self, a: QPointF, b: QPointF) -> Rect | None:
        """The rectangle a drag from ``a`` to ``b`` spans, whole image px inside the picture."""
        w, h = self.selection.width, self.selection.height
        x0, x1 = sorted((max(0, min(w, round(a.x()))), max(0, min(w, round(b.x())))))
        y0, y1 = sorted((max(0, min(h, round(a.y()))), max(0, min(h, round(b.y())))))
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None

    def paint(self, p: QPainter) -> None:
        sel, c = self.selection, self.canvas
        if not sel.width or (sel.width, sel.height) != (c.image_w, c.image_h):
            return
        p.save()
        if sel.kind == "rect" and sel.rect is not None:
            x0, y0, x1, y1 = sel.rect
            wr = c._widget_rect(QRectF(x0, y0, x1 - x0, y1 - y0))
            fill = QColor(TINT)
            fill.setAlpha(60)
            p.fillRect(wr, fill)
            pen = QPen(TINT, 2, Qt.PenStyle.DashLine)
            pen.setCosmetic(True)
            p.setPen(pen)
            p.drawRect(wr)
        elif sel.mask is not None:
            p.setOpacity(0.45)
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            p.drawImage(c._widget_rect(QRectF(0, 0, sel.width, sel.height)), sel.mask)
            p.setOpacity(1.0)
        if self.tool == "brush" and self.editable and self._hover is not None:
            r = self.brush * c.scale / 2
            pen = QPen(QColor(255, 255, 255, 200), 1)
            pen.setCosmetic(True)
            p.setPen(pen)
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawEllipse(self._hover, r, r)
        p.restore()


__all__ = ["MASK_MAX_SIDE", "Selection", "SelectionTool", "full_mask", "tint_of", "write_mask"]
