"""The canvas's regions layer: regional prompts drawn over the picture and edited with the mouse.

The layer shows the regions it is given (``set_regions``) and says what the person did with them
(``drawn``, ``edited``, ``selected``, ``remove_requested``); it never changes a region itself. The
regions form (``forms/regions.py``) holds the regions, applies the edits and gives them back, so
the list and the canvas cannot drift apart.

Mouse, as in Krita's rectangle tools: with **Draw** on (or with Shift held) a left drag draws a new
rectangle; a left click on a region selects it, a drag on the selected one moves it and its eight
handles resize it; any other drag pans the view as before. Delete removes the selected region.
Every edit is in whole image px and stays inside the canvas; a region is at least ``MIN_SIDE`` px
on each side. While a generation runs the regions are shown but cannot be edited.

Painting is a handful of rectangles per region (at most 16), so it costs nothing next to the tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QKeyEvent, QMouseEvent, QPainter, QPen
from PySide6.QtWidgets import QWidget

from ...engine.core.regions import Region

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in image px, x1/y1 exclusive
MIN_SIDE = 8  # image px: a region never has zero area
HANDLE_PX = 4  # widget px: half the side of a handle's square
GRAB_PX = 7  # widget px: how close to a handle a press grabs it
CLICK_PX = 3  # widget px: a press that moves less than this is a click, not a drag

# Distinct from the accent (in-flight tiles), the tile lines (white/text) and red (seams, errors).
COLOURS = tuple(QColor(*c) for c in ((255, 159, 28), (46, 204, 113), (214, 92, 214), (241, 214, 54),
                                     (26, 188, 212), (255, 112, 150), (150, 214, 60), (160, 130, 255)))
INVALID = QColor(229, 83, 75)


def colour_for(index: int) -> QColor:
    return COLOURS[index % len(COLOURS)]


# Handles by the edges they move: l/r move x0/x1, t/b move y0/y1.
HANDLES = ("lt", "t", "rt", "r", "rb", "b", "lb", "l")
CURSORS = {"lt": Qt.CursorShape.SizeFDiagCursor, "rb": Qt.CursorShape.SizeFDiagCursor,
           "rt": Qt.CursorShape.SizeBDiagCursor, "lb": Qt.CursorShape.SizeBDiagCursor,
           "t": Qt.CursorShape.SizeVerCursor, "b": Qt.CursorShape.SizeVerCursor,
           "l": Qt.CursorShape.SizeHorCursor, "r": Qt.CursorShape.SizeHorCursor}


def _clamp(v: float, lo: int, hi: int) -> int:
    return int(max(lo, min(hi, round(v))))


def drawn_rect(a: QPointF, b: QPointF, width: int, height: int) -> Rect:
    """The rectangle spanned by image points ``a`` and ``b``: whole px, inside the canvas, at
    least ``MIN_SIDE`` on each side (grown away from ``a``, or back from the canvas edge)."""
    rect = []
    for pa, pb, size in ((a.x(), b.x(), width), (a.y(), b.y(), height)):
        lo, hi = sorted((_clamp(pa, 0, size), _clamp(pb, 0, size)))
        if hi - lo < MIN_SIDE:
            if pb >= pa:
                lo, hi = min(lo, size - MIN_SIDE), min(lo, size - MIN_SIDE) + MIN_SIDE
            else:
                hi, lo = max(hi, MIN_SIDE), max(hi, MIN_SIDE) - MIN_SIDE
        rect.append((lo, hi))
    (x0, x1), (y0, y1) = rect
    return x0, y0, x1, y1


def moved_rect(rect: Rect, dx: float, dy: float, width: int, height: int) -> Rect:
    """``rect`` moved by (``dx``, ``dy``) image px, kept whole inside the canvas."""
    x0, y0, x1, y1 = rect
    w, h = min(x1 - x0, width), min(y1 - y0, height)
    nx, ny = _clamp(x0 + dx, 0, width - w), _clamp(y0 + dy, 0, height - h)
    return nx, ny, nx + w, ny + h


def resized_rect(rect: Rect, handle: str, p: QPointF, width: int, height: int) -> Rect:
    """``rect`` with the edges of ``handle`` moved to image point ``p``: inside the canvas, and
    an edge stops ``MIN_SIDE`` px before the opposite one."""
    x0, y0, x1, y1 = rect
    if "l" in handle:
        x0 = _clamp(p.x(), 0, x1 - MIN_SIDE)
    if "r" in handle:
        x1 = _clamp(p.x(), x0 + MIN_SIDE, width)
    if "t" in handle:
        y0 = _clamp(p.y(), 0, y1 - MIN_SIDE)
    if "b" in handle:
        y1 = _clamp(p.y(), y0 + MIN_SIDE, height)
    return x0, y0, x1, y1


def _handle_points(r: QRectF) -> dict[str, QPointF]:
    cx, cy = r.center().x(), r.center().y()
    return {"lt": r.topLeft(), "t": QPointF(cx, r.top()), "rt": r.topRight(), "r": QPointF(r.right(), cy),
            "rb": r.bottomRight(), "b": QPointF(cx, r.bottom()), "lb": r.bottomLeft(), "l": QPointF(r.left(), cy)}


@dataclass
class _Drag:
    kind: str  # "new" | "move" | "resize"
    index: int | None  # the region moved or resized
    start: QPointF  # image px (unclamped) where the press was
    start_widget: QPointF  # widget px
    handle: str = ""
    rect: Rect | None = None  # the live rectangle; None until the mouse has moved past a click


class RegionsLayer(QObject):
    """The regions of one canvas (``canvas``: a CanvasWidget; only its coordinate maps, its size
    in image px and its cursor are used)."""

    drawn = Signal(object)  # Rect: a new region
    edited = Signal(int, object)  # index, Rect: moved or resized
    selected = Signal(object)  # int | None
    remove_requested = Signal(int)

    def __init__(self, canvas: QWidget) -> None:
        super().__init__(canvas)
        self.canvas = canvas
        self.regions: tuple[Region, ...] = ()
        self.labels: tuple[str, ...] = ()  # shown after each region's number
        self.current: int | None = None
        self.editable = True
        self.draw_mode = False
        self._drag: _Drag | None = None

    def link(self, form: Any) -> None:
        """Follow the regions form ``form`` (``forms/regions.py``): it holds the regions, this
        layer draws them and reports the mouse's edits back to it."""
        form.regions_changed.connect(self.set_regions)
        form.selected.connect(self.select)
        form.draw_toggled.connect(self.set_draw_mode)
        self.drawn.connect(form.add_region)
        self.edited.connect(form.set_rect)
        self.selected.connect(form.select)
        self.remove_requested.connect(form.remove)
        self.set_regions(form.regions(), tuple(row.caption() for row in form.rows))

    # -- state -------------------------------------------------------------------------------

    def set_regions(self, regions: tuple[Region, ...] | list[Region], labels: tuple[str, ...] | list[str] = ()
                    ) -> None:
        self.regions = tuple(regions)
        self.labels = tuple(labels)
        if self.current is not None and self.current >= len(self.regions):
            self.current = None
        self.canvas.update()

    def select(self, index: int | None) -> None:
        """Select region ``index`` (None: none); ``selected`` fires only on a change."""
        if index is not None and not 0 <= index < len(self.regions):
            index = None
        if index != self.current:
            self.current = index
            self.canvas.update()
            self.selected.emit(index)

    def set_editable(self, on: bool) -> None:
        """Off while a generation runs: shown, not editable (a drag under way is dropped)."""
        self.editable = on
        if not on:
            self._drag = None
            self.canvas.unsetCursor()
        self.canvas.update()

    def set_draw_mode(self, on: bool) -> None:
        self.draw_mode = on
        self.canvas.unsetCursor()

    def rect_of(self, index: int) -> Rect | None:
        """What region ``index`` shows now (its live rectangle while it is dragged)."""
        d = self._drag
        if d is not None and d.index == index and d.rect is not None:
            return d.rect
        return self.regions[index].rect

    # -- hit tests (widget px) -------------------------------------------------------------------

    def _widget_rect(self, rect: Rect) -> QRectF:
        x0, y0, x1, y1 = rect
        return self.canvas._widget_rect(QRectF(x0, y0, x1 - x0, y1 - y0))

    def handle_at(self, pos: QPointF) -> str | None:
        """The selected region's handle under ``pos``."""
        if self.current is None or self.regions[self.current].rect is None:
            return None
        points = _handle_points(self._widget_rect(self.regions[self.current].rect))
        best = min(points, key=lambda h: (points[h] - pos).manhattanLength())
        return best if (points[best] - pos).manhattanLength() <= GRAB_PX * 1.5 else None

    def region_at(self, pos: QPointF) -> int | None:
        """The topmost region under ``pos`` (the selected one wins where they overlap)."""
        order = list(range(len(self.regions)))[::-1]
        if self.current is not None:
            order.remove(self.current)
            order.insert(0, self.current)
        for i in order:
            rect = self.regions[i].rect
            if rect is not None and self._widget_rect(rect).contains(pos):
                return i
        return None

    # -- mouse and keys: each returns True when it used the event ---------------------------------

    def _active(self) -> bool:
        return self.editable and bool(self.canvas.image_w and self.canvas.image_h)

    def mouse_press(self, event: QMouseEvent) -> bool:
        if event.button() != Qt.MouseButton.LeftButton or not self._active():
            return False
        pos = event.position()
        start = self.canvas.to_image(pos)
        handle = self.handle_at(pos)
        if handle is not None:
            self._drag = _Drag("resize", self.current, start, pos, handle)
        elif self.draw_mode or event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self._drag = _Drag("new", None, start, pos)
        else:
            hit = self.region_at(pos)
            if hit is None:
                return False
            self.select(hit)
            self._drag = _Drag("move", hit, start, pos)
            self.canvas.setCursor(Qt.CursorShape.SizeAllCursor)
        return True

    def mouse_move(self, event: QMouseEvent) -> bool:
        d = self._drag
        pos = event.position()
        if d is None:
            self._hover(pos)
            return False
        if d.rect is None and (pos - d.start_widget).manhattanLength() < CLICK_PX:
            return True
        w, h = self.canvas.image_w, self.canvas.image_h
        p = self.canvas.to_image(pos)
        if d.kind == "new":
            d.rect = drawn_rect(d.start, p, w, h)
        elif d.kind == "move":
            d.rect = moved_rect(self.regions[d.index].rect, p.x() - d.start.x(), p.y() - d.start.y(), w, h)
        else:
            d.rect = resized_rect(self.regions[d.index].rect, d.handle, p, w, h)
        self.canvas.update()
        return True

    def mouse_release(self, event: QMouseEvent) -> bool:
        d, self._drag = self._drag, None
        if d is None:
            return False
        self.canvas.update()
        self._hover(event.position())
        if d.rect is None:
            if d.kind == "new":  # a click in draw mode selects what is under it
                self.select(self.region_at(event.position()))
            return True
        if d.kind == "new":
            self.drawn.emit(d.rect)
        elif d.rect != self.regions[d.index].rect:
            self.edited.emit(d.index, d.rect)
        return True

    def key_press(self, event: QKeyEvent) -> bool:
        if event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace) and self.current is not None and self._active():
            self.remove_requested.emit(self.current)
            return True
        return False

    def _hover(self, pos: QPointF) -> None:
        if not self._active():
            return
        handle = self.handle_at(pos)
        if handle is not None:
            self.canvas.setCursor(CURSORS[handle])
        elif self.draw_mode:
            self.canvas.setCursor(Qt.CursorShape.CrossCursor)
        elif self.current is not None and self.region_at(pos) == self.current:
            self.canvas.setCursor(Qt.CursorShape.SizeAllCursor)
        elif self.region_at(pos) is not None:
            self.canvas.setCursor(Qt.CursorShape.PointingHandCursor)
        else:
            self.canvas.unsetCursor()

    # -- painting ------------------------------------------------------------------------------

    def paint(self, p: QPainter) -> None:
        d = self._drag
        if not self.regions and (d is None or d.kind != "new" or d.rect is None):
            return
        w, h = self.canvas.image_w, self.canvas.image_h
        font = QFont(self.canvas.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.9))
        font.setBold(True)
        p.setFont(font)
        order = [i for i in range(len(self.regions)) if i != self.current]
        if self.current is not None:
            order.append(self.current)  # drawn last: on top
        for i in order:
            rect = self.rect_of(i)
            if rect is None:
                continue  # a mask region: listed in the form, not drawn (yet)
            inside = 0 <= rect[0] < rect[2] <= w and 0 <= rect[1] < rect[3] <= h
            self._paint_region(p, i, rect, self.regions[i].feather, inside)
        if d is not None and d.kind == "new" and d.rect is not None:
            self._paint_region(p, len(self.regions), d.rect, 0, True)

    def _paint_region(self, p: QPainter, index: int, rect: Rect, feather: int, inside: bool) -> None:
        colour = colour_for(index) if inside else INVALID
        selected = index == self.current and self.editable
        wr = self._widget_rect(rect)
        fill = QColor(colour)
        fill.setAlpha(40 if selected else 26)
        p.fillRect(wr, fill)
        if feather > 0 and feather * self.canvas.scale >= 3:
            # The ramp: the mask rises from 0 to 1 across this band, centred on the edge.
            faint = QColor(colour)
            faint.setAlpha(110)
            pen = QPen(faint, 1, Qt.PenStyle.DotLine)
            pen.setCosmetic(True)
            p.setPen(pen)
            p.setBrush(Qt.BrushStyle.NoBrush)
            half = feather / 2
            x0, y0, x1, y1 = rect
            outer = QRectF(max(0.0, x0 - half), max(0.0, y0 - half), 0, 0)
            outer.setRight(min(self.canvas.image_w, x1 + half))
            outer.setBottom(min(self.canvas.image_h, y1 + half))
            p.drawRect(self.canvas._widget_rect(outer))
            if x1 - x0 > feather and y1 - y0 > feather:
                p.drawRect(self.canvas._widget_rect(QRectF(x0 + half, y0 + half, x1 - x0 - feather,
                                                           y1 - y0 - feather)))
        pen = QPen(colour, 3 if selected else 2, Qt.PenStyle.SolidLine if inside else Qt.PenStyle.DashLine)
        pen.setCosmetic(True)
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(wr)
        self._paint_label(p, index, wr, colour)
        if selected:
            p.setPen(QPen(QColor(20, 20, 20), 1))
            p.setBrush(QColor(255, 255, 255))
            for pt in _handle_points(wr).values():
                p.drawRect(QRectF(pt.x() - HANDLE_PX, pt.y() - HANDLE_PX, 2 * HANDLE_PX, 2 * HANDLE_PX))
            p.setBrush(Qt.BrushStyle.NoBrush)

    def _paint_label(self, p: QPainter, index: int, wr: QRectF, colour: QColor) -> None:
        fm = p.fontMetrics()
        text = str(index + 1)
        extra = self.labels[index] if index < len(self.labels) else ""
        if extra:
            room = wr.width() - fm.horizontalAdvance(text + " · ") - 16
            extra = fm.elidedText(extra, Qt.TextElideMode.ElideRight, int(room)) if room > 30 else ""
            if extra and extra != "…":
                text = f"{text} · {extra}"
        box = QRectF(wr.left() + 1, wr.top() + 1, fm.horizontalAdvance(text) + 10, fm.height() + 4)
        p.fillRect(box, colour)
        p.setPen(QColor(20, 20, 20))
        p.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
