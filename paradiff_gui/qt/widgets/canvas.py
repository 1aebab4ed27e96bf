"""The canvas: the image (or the live previews of its tiles), the tile plan drawn over it, seam
overlays, zoom and pan.

Coordinates: *image px* (the generated image) and widget px (logical, as Qt gives them).
``scale`` is widget px per image px; "100 %" means one image pixel per *device* pixel, so on a
HiDPI screen it is ``1 / devicePixelRatio``.

It stays smooth on an 8192² image because it never scales the whole picture: it keeps a mip
pyramid, picks the level just sharper than the screen needs, and draws only the visible part.

Seamless canvases (``wrapping.py``): a tile that passes the canvas edge is drawn at both places,
and the 2×2 view draws the same picture four times (``set_tiled``) — never a bigger copy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QPointF, QRect, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QKeyEvent, QMouseEvent, QPainter, QPalette, QPen, QWheelEvent
from PySide6.QtWidgets import QSizePolicy, QWidget

from ...engine.core.events import TilePreview
from ..imaging import Layer, qimage
from .regions import RegionsLayer
from .underlay import seed_preview
from .wrapping import clip, copies, repeats, tile_copies

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in image px
PREVIEW_MAX_SIDE = 2048  # px; previews are ≤ ~128 px per tile, a finer buffer would only cost memory
MIN_SCALE, MAX_SCALE = 1 / 256, 64.0
ZOOM_STEP = 1.25


@dataclass(frozen=True)
class SeamMark:
    orientation: str  # "vertical" | "horizontal"
    position: int  # image px


def _axis_bands(starts: list[int], ends: list[int]) -> list[tuple[int, int]]:
    # Tiles of one plan share a size, so the k-th start pairs with the k-th end.
    return [(b, a) for a, b in zip(ends[:-1], starts[1:]) if b < a]


def overlap_bands(tiles: list[Rect]) -> list[Rect]:
    """Strips where neighbouring columns or rows of tiles overlap (the zones the blend windows
    fuse), across the plan's extent. Linear in the number of rows and columns: an 8192² plan
    of 8000 tiles has 190 strips, where pairwise intersections would be 32 million tests."""
    if not tiles:
        return []
    xs0 = sorted({t[0] for t in tiles})
    xs1 = sorted({t[2] for t in tiles})
    ys0 = sorted({t[1] for t in tiles})
    ys1 = sorted({t[3] for t in tiles})
    top, bottom, left, right = ys0[0], ys1[-1], xs0[0], xs1[-1]
    bands = [(a, top, b, bottom) for a, b in _axis_bands(xs0, xs1)]
    bands += [(left, a, right, b) for a, b in _axis_bands(ys0, ys1)]
    return bands


class CanvasWidget(QWidget):
    """Shows one canvas. Feed it a plan (``set_plan``), previews (``add_previews``) and finally a
    picture (``set_image``); toggle overlays with ``show_*`` and navigate with the mouse,
    ``fit()``, ``actual_size()`` and ``zoom_to()``."""

    view_changed = Signal()
    paint_ms = Signal(float)  # how long the last paint took (for the stall figure)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(320, 240)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.image_w, self.image_h = 0, 0
        self.scale = 1.0
        self.center = QPointF(0, 0)  # image px at the widget's centre
        self._fit_mode = True
        self.layer: Layer | None = None
        self.heat: Layer | None = None
        self._preview: QImage | None = None
        self._preview_scale = 1.0  # preview px per image px
        self.tiles: list[Rect] = []
        self._copies: list[tuple[int, Rect]] = []  # (tile, rect): a wrapped tile shows at both edges
        self._rects = np.zeros((0, 4))  # the copies' rects
        self._xs: list[int] = []  # tile edges, image px: the plan's grid lines
        self._ys: list[int] = []
        self.bands: list[Rect] = []
        self.tile_steps: dict[int, int] = {}
        self.total_steps = 0
        self.in_flight: set[int] = set()
        self.show_borders = True
        self.show_overlaps = False
        self.show_heatmap = False
        self.control: QImage | None = None  # a ControlNet's control image, stretched over the canvas
        self.show_control = False
        self.underlay: QImage | None = None  # a restyle's starting picture, stretched under the plan (qt/restyle.py)
        self.show_source = False  # View → Compare with source: the underlay in place of the picture
        self.tiled = False  # the 2×2 view
        self.seam: SeamMark | None = None
        self._drag: QPointF | None = None
        self.last_paint_ms = 0.0
        self.placeholder = "Press Generate (Ctrl+Enter) to start"
        self.regions = RegionsLayer(self)  # regional prompts: drawn and edited here (widgets/regions.py)
        self.tool = None  # a SelectionTool (widgets/selection.py) while one is on: it takes the mouse first

    # -- content -----------------------------------------------------------------------------

    def set_canvas_size(self, width: int, height: int) -> None:
        """A new, empty canvas of ``width`` x ``height`` image px (drops image and previews)."""
        changed = (width, height) != (self.image_w, self.image_h)
        self.image_w, self.image_h = width, height
        self.layer = self.heat = None
        self._preview = None
        self.tile_steps.clear()
        self.in_flight.clear()
        self.seam = None
        if changed:
            self.set_plan(self.tiles, self.total_steps)  # where wrapped tiles wrap moved
        if changed or self._fit_mode:
            self.fit()
        self.update()

    def set_plan(self, tiles: list[Rect], total_steps: int = 0) -> None:
        w, h = self.image_w, self.image_h
        self.tiles = list(tiles)
        self._copies = tile_copies(self.tiles, w, h)
        self._rects = np.array([r for _, r in self._copies], dtype=np.float64).reshape(-1, 4)
        pieces = [c for c in (clip(r, w, h) for _, r in self._copies) if c is not None]
        self._xs = sorted({t[0] for t in pieces} | {t[2] for t in pieces})
        self._ys = sorted({t[1] for t in pieces} | {t[3] for t in pieces})
        bands = (clip(b, w, h) for b in overlap_bands([r for _, r in self._copies]))
        self.bands = [b for b in bands if b is not None]
        self.total_steps = total_steps
        self.update()

    def start_previews(self) -> None:
        """An empty preview buffer for a run about to start (the old picture stays until then)."""
        s = min(1.0, PREVIEW_MAX_SIDE / max(1, self.image_w, self.image_h))
        w, h = max(1, round(self.image_w * s)), max(1, round(self.image_h * s))
        self._preview = QImage(w, h, QImage.Format.Format_RGB32)
        self._preview.fill(self.palette().color(QPalette.ColorRole.Window).darker(130))
        self._preview_scale = s
        seed_preview(self._preview, self.underlay)  # the tiles' previews replace it as they come
        self.layer = self.heat = None
        self.tile_steps.clear()
        self.in_flight.clear()
        self.update()

    def add_previews(self, previews: list[TilePreview]) -> None:
        if self._preview is None:
            self.start_previews()
        s = self._preview_scale
        dirty = QRectF()
        with QPainter(self._preview) as p:
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            for pv in previews:
                image = qimage(np.ascontiguousarray(pv.rgb))
                for x0, y0, x1, y1 in copies(pv.rect, self.image_w, self.image_h):  # the buffer clips
                    p.drawImage(QRectF(x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s), image)
                    dirty = dirty.united(QRectF(x0, y0, x1 - x0, y1 - y0))
                self.tile_steps[pv.tile] = pv.step
        self._update_image(dirty, 2)

    def set_in_flight(self, tiles: tuple[int, ...] | set[int]) -> None:
        old = self.in_flight
        self.in_flight = set(tiles)
        changed = old ^ self.in_flight
        for i, r in self._copies:
            if i in changed:
                self._update_image(_qrect(r), 3)

    def _update_image(self, r: QRectF, margin: int) -> None:
        """Repaint the image rect ``r`` (image px) wherever it shows: each copy of the 2×2 view."""
        for dx, dy in repeats(self.image_w, self.image_h, self.tiled):
            self.update(self._widget_rect(r.translated(dx, dy)).toAlignedRect().adjusted(-margin, -margin,
                                                                                      margin, margin))

    def set_image(self, layer: Layer | None) -> None:
        """Show a finished picture (its pyramid); previews and step marks go."""
        self.layer = layer
        self.heat = None
        self._preview = None
        self.in_flight.clear()
        self.tile_steps.clear()
        if layer is not None and (layer.width, layer.height) != (self.image_w, self.image_h):
            self.image_w, self.image_h = layer.width, layer.height
            self.set_plan(self.tiles, self.total_steps)
            self.fit()
        self.update()

    def set_heatmap(self, layer: Layer | None) -> None:
        self.heat = layer
        self.update()

    def set_overlays(self, *, borders: bool | None = None, overlaps: bool | None = None,
                     heatmap: bool | None = None) -> None:
        if borders is not None:
            self.show_borders = borders
        if overlaps is not None:
            self.show_overlaps = overlaps
        if heatmap is not None:
            self.show_heatmap = heatmap
        self.update()

    def set_control(self, image: QImage | None) -> None:
        """The control image drawn half-transparent over the canvas when ``show_control`` is on
        (stretched to the canvas, as the engine reads it at canvas size)."""
        self.control = image
        self.update()

    def set_show_control(self, on: bool) -> None:
        self.show_control = on
        self.update()

    def set_tiled(self, on: bool) -> None:
        """Show the picture 2×2, to check that a seamless picture tiles (zoom and pan span all four)."""
        self.tiled = on
        if self._fit_mode:
            self.fit()
        self.update()

    # -- navigation --------------------------------------------------------------------------

    def device_scale(self) -> float:
        """Device px per image px at the current zoom (1.0 = 100 %)."""
        return self.scale * self.devicePixelRatioF()

    def fit(self) -> None:
        if not self.image_w or not self.image_h:
            return
        margin = 16
        n = 2 if self.tiled else 1
        sx = (self.width() - margin) / (n * self.image_w)
        sy = (self.height() - margin) / (n * self.image_h)
        self._set_view(max(MIN_SCALE, min(sx, sy)), QPointF(n * self.image_w / 2, n * self.image_h / 2))
        self._fit_mode = True

    def actual_size(self) -> None:
        self.zoom_to(self.center, 1.0)

    def zoom_to(self, point: QPointF, device_scale: float = 1.0) -> None:
        """Centre ``point`` (image px) at ``device_scale`` device px per image px."""
        self._set_view(device_scale / self.devicePixelRatioF(), QPointF(point))

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        """Zoom keeping the image point under ``anchor`` (widget px) where it is."""
        anchor = anchor if anchor is not None else QPointF(self.width() / 2, self.height() / 2)
        before = self.to_image(anchor)
        new = min(MAX_SCALE, max(MIN_SCALE, self.scale * factor))
        # Solve for the centre that keeps `before` under `anchor` at the new scale.
        c = QPointF(before.x() - (anchor.x() - self.width() / 2) / new,
                    before.y() - (anchor.y() - self.height() / 2) / new)
        self._set_view(new, c)

    def _set_view(self, scale: float, center: QPointF) -> None:
        self.scale = min(MAX_SCALE, max(MIN_SCALE, scale))
        self.center = center
        self._fit_mode = False
        self.update()
        self.view_changed.emit()

    def to_image(self, p: QPointF) -> QPointF:
        return QPointF(self.center.x() + (p.x() - self.width() / 2) / self.scale,
                       self.center.y() + (p.y() - self.height() / 2) / self.scale)

    def to_widget(self, p: QPointF) -> QPointF:
        return QPointF((p.x() - self.center.x()) * self.scale + self.width() / 2,
                       (p.y() - self.center.y()) * self.scale + self.height() / 2)

    def _widget_rect(self, r: QRectF) -> QRectF:
        tl = self.to_widget(r.topLeft())
        return QRectF(tl.x(), tl.y(), r.width() * self.scale, r.height() * self.scale)

    def visible_image_rect(self) -> QRectF:
        tl, br = self.to_image(QPointF(0, 0)), self.to_image(QPointF(self.width(), self.height()))
        return QRectF(tl, br).intersected(QRectF(0, 0, self.image_w, self.image_h))

    # -- events ------------------------------------------------------------------------------

    def resizeEvent(self, event) -> None:
        if self._fit_mode:
            self.fit()
        super().resizeEvent(event)

    def wheelEvent(self, event: QWheelEvent) -> None:
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.zoom_by(ZOOM_STEP ** steps, event.position())
        event.accept()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if (self.tool is not None and self.tool.mouse_press(event)) or self.regions.mouse_press(event):
            return
        if event.button() in (Qt.MouseButton.LeftButton, Qt.MouseButton.MiddleButton):
            self._drag = event.position()
            self.setCursor(Qt.CursorShape.ClosedHandCursor)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._drag is None and ((self.tool is not None and self.tool.mouse_move(event))
                                   or self.regions.mouse_move(event)):
            return
        if self._drag is not None:
            d = event.position() - self._drag
            self._drag = event.position()
            self._set_view(self.scale, QPointF(self.center.x() - d.x() / self.scale,
                                               self.center.y() - d.y() / self.scale))

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if (self.tool is not None and self.tool.mouse_release(event)) or self.regions.mouse_release(event):
            return
        self._drag = None
        self.unsetCursor()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if not (self.tool is not None and self.tool.key_press(event)) and not self.regions.key_press(event):
            super().keyPressEvent(event)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if self._fit_mode:
            self.zoom_to(self.to_image(event.position()), 1.0)
        else:
            self.fit()

    # -- painting ----------------------------------------------------------------------------

    def paintEvent(self, event) -> None:
        started = time.perf_counter()
        pal = self.palette()
        with QPainter(self) as p:
            p.fillRect(event.rect(), pal.color(QPalette.ColorRole.Window).darker(115))
            if not self.image_w:
                p.setPen(pal.color(QPalette.ColorRole.PlaceholderText))
                p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.placeholder)
            else:
                for dx, dy in repeats(self.image_w, self.image_h, self.tiled):
                    with self._shifted(dx, dy):
                        self._paint_picture(p)
                        self._paint_overlays(p)
                self.regions.paint(p)
                if self.tool is not None:
                    self.tool.paint(p)
        self.last_paint_ms = (time.perf_counter() - started) * 1000
        self.paint_ms.emit(self.last_paint_ms)

    @contextmanager
    def _shifted(self, dx: int, dy: int) -> Iterator[None]:
        # Painting the copy at (dx, dy) is painting the picture with the view moved back by as
        # much: every mapping (visible part, widget rects) follows, and nothing is copied.
        center = self.center
        self.center = QPointF(center.x() - dx, center.y() - dy)
        try:
            yield
        finally:
            self.center = center

    def _paint_picture(self, p: QPainter) -> None:
        full = QRectF(0, 0, self.image_w, self.image_h)
        visible = self.visible_image_rect()
        if visible.isEmpty():
            return
        zoomed_in = self.device_scale() >= 1.0
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, not zoomed_in)
        if self.layer is None and self._preview is None:
            p.fillRect(self._widget_rect(full), self.palette().color(QPalette.ColorRole.Base))
        if self._preview is not None:
            self._draw_part(p, self._preview, self._preview_scale, visible)
        if self.layer is not None:
            k = self.layer.level_for(self.device_scale())
            self._draw_part(p, self.layer.images[k], 0.5**k, visible)
        if self.underlay is not None and (self.show_source or (self.layer is None and self._preview is None)):
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)  # a smaller source, stretched
            p.drawImage(self._widget_rect(full), self.underlay)
        if self.show_heatmap and self.heat is not None:
            k = self.heat.level_for(self.device_scale())
            self._draw_part(p, self.heat.images[k], 0.5**k, visible)
        if self.show_control and self.control is not None and not self.control.isNull():
            p.save()
            p.setOpacity(0.5)
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            p.drawImage(self._widget_rect(full), self.control)
            p.restore()

    def _draw_part(self, p: QPainter, img: QImage, level_scale: float, visible: QRectF) -> None:
        # Whole source pixels only: a fractional source rect makes Qt resample the whole image.
        sx0, sy0 = int(visible.left() * level_scale), int(visible.top() * level_scale)
        sx1 = min(img.width(), int(np.ceil(visible.right() * level_scale)) + 1)
        sy1 = min(img.height(), int(np.ceil(visible.bottom() * level_scale)) + 1)
        if sx1 <= sx0 or sy1 <= sy0:
            return
        src = QRect(sx0, sy0, sx1 - sx0, sy1 - sy0)
        target = self._widget_rect(QRectF(sx0 / level_scale, sy0 / level_scale,
                                          (sx1 - sx0) / level_scale, (sy1 - sy0) / level_scale))
        p.drawImage(target, img, QRectF(src))

    def _visible_tiles(self, visible: QRectF) -> list[int]:
        r = self._rects
        hit = (r[:, 2] > visible.left()) & (r[:, 0] < visible.right()) & \
            (r[:, 3] > visible.top()) & (r[:, 1] < visible.bottom())
        return np.flatnonzero(hit).tolist()

    def _paint_overlays(self, p: QPainter) -> None:
        pal = self.palette()
        accent = pal.color(QPalette.ColorRole.Highlight)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        visible = self.visible_image_rect()
        if self.show_overlaps and self.bands:
            band = QColor(80, 170, 255, 60)
            for r in self.bands:
                if _qrect(r).intersects(visible):
                    p.fillRect(self._widget_rect(_qrect(r)), band)
        if self.show_borders and self.tiles:
            # Every tile edge of a plan lies on one of its grid lines: drawing the lines costs
            # rows + cols, not one rectangle per tile (8000 at 8192²). Over an empty canvas the
            # lines take the text colour, over a picture a light veil that shows on any image.
            picture = self.layer is not None or self._preview is not None
            colour = QColor(255, 255, 255, 110) if picture else QColor(pal.color(QPalette.ColorRole.Text))
            if not picture:
                colour.setAlpha(70)
            pen = QPen(colour, 1)
            pen.setCosmetic(True)
            p.setPen(pen)
            top = self.to_widget(QPointF(0, self._ys[0])).y()
            bottom = self.to_widget(QPointF(0, self._ys[-1])).y()
            left = self.to_widget(QPointF(self._xs[0], 0)).x()
            right = self.to_widget(QPointF(self._xs[-1], 0)).x()
            for x in self._xs:
                if visible.left() - 1 <= x <= visible.right() + 1:
                    wx = round(self.to_widget(QPointF(x, 0)).x()) - (0.5 if x == self._xs[-1] else -0.5)
                    p.drawLine(QPointF(wx, top), QPointF(wx, bottom))
            for y in self._ys:
                if visible.top() - 1 <= y <= visible.bottom() + 1:
                    wy = round(self.to_widget(QPointF(0, y)).y()) - (0.5 if y == self._ys[-1] else -0.5)
                    p.drawLine(QPointF(left, wy), QPointF(right, wy))
        on_screen: list[tuple[int, Rect]] = []
        if self.in_flight or (self.tile_steps and self.total_steps):
            on_screen = [self._copies[k] for k in self._visible_tiles(visible)]
        p.save()
        p.setClipRect(self._widget_rect(QRectF(0, 0, self.image_w, self.image_h)))  # wrapped tiles pass the edge
        if self.in_flight:
            fill = QColor(accent)
            fill.setAlpha(45)
            pen = QPen(accent, 2)
            pen.setCosmetic(True)
            p.setPen(pen)
            for i, r in on_screen:
                if i in self.in_flight:
                    wr = self._widget_rect(_qrect(r))
                    p.fillRect(wr, fill)
                    p.drawRect(wr.adjusted(1, 1, -1, -1))
        if self.tile_steps and self.total_steps and self._tile_on_screen_px() >= 48:
            self._paint_step_labels(p, on_screen)
        p.restore()
        if self.seam is not None:
            pen = QPen(QColor(255, 60, 60), 2, Qt.PenStyle.DashLine)
            pen.setCosmetic(True)
            p.setPen(pen)
            if self.seam.orientation == "vertical":
                x = self.to_widget(QPointF(self.seam.position, 0)).x()
                p.drawLine(QPointF(x, 0), QPointF(x, self.height()))
            else:
                y = self.to_widget(QPointF(0, self.seam.position)).y()
                p.drawLine(QPointF(0, y), QPointF(self.width(), y))

    def _tile_on_screen_px(self) -> float:
        if not len(self._rects):
            return 0.0
        r = self._rects[0]
        return float(min(r[2] - r[0], r[3] - r[1])) * self.scale

    def _paint_step_labels(self, p: QPainter, on_screen: list[tuple[int, Rect]]) -> None:
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        p.setFont(font)
        fm = p.fontMetrics()
        for i, r in on_screen:
            step = self.tile_steps.get(i)
            if step is None:
                continue
            wr = self._widget_rect(_qrect(r))
            text = f"{step + 1}/{self.total_steps}"
            tw, th = fm.horizontalAdvance(text) + 8, fm.height() + 2
            if wr.width() < tw + 8 or wr.height() < th + 8:
                continue  # too small on screen to label
            box = QRectF(wr.left() + 4, wr.top() + 4, tw, th)
            p.fillRect(box, QColor(0, 0, 0, 150))
            p.setPen(QColor(255, 255, 255))
            p.drawText(box, Qt.AlignmentFlag.AlignCenter, text)


def _qrect(r: Rect) -> QRectF:
    return QRectF(r[0], r[1], r[2] - r[0], r[3] - r[1])
