"""The regions form: one row per regional prompt, beside the canvas that draws them.

A row shows the region's number and colour (the canvas's), its prompt and negative prompt for a
text model or the model's own controls (e.g. the terrain's difficulty) for one without text, its
weight and feather, and where it lies. The form holds the regions; the canvas's regions layer
(``widgets/regions.py``) shows them and reports the person's mouse edits, which come back here
through :meth:`RegionsForm.add_region`, :meth:`set_rect`, :meth:`remove` and :meth:`select`.

A row keeps its :class:`Region` whole and a widget writes into it only when the person edits it,
so a loaded region comes back exactly (a weight or option a box could not show unchanged stays
what it was, and the request then names it if it is out of range).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
)

from ...engine.core.modelinfo import ModelInfo
from ...engine.core.regions import DEFAULT_FEATHER, MAX_FEATHER, MAX_REGIONS, MAX_WEIGHT, Region
from ..widgets.regions import colour_for
from .base import Form, spin
from .mapping import FormValues

Rect = tuple[int, int, int, int]
MIN_WEIGHT = 0.01  # the box's floor; the request takes any weight above 0


def describe_rect(region: Region) -> str:
    if region.rect is None:
        return "a mask image (from a recipe; not drawn on the canvas)"
    x0, y0, x1, y1 = region.rect
    return f"x {x0}–{x1}, y {y0}–{y1} px ({x1 - x0} × {y1 - y0})"


class RegionRow(QFrame):
    """One region's fields. ``edited`` fires on the person's edits (``region`` is then updated),
    ``chosen`` when any of its fields is clicked or focused."""

    edited = Signal()
    chosen = Signal(object)  # self
    remove_clicked = Signal(object)  # self

    def __init__(self, index: int, region: Region, info: ModelInfo) -> None:
        super().__init__()
        self.setObjectName("region_row")
        self.region = region
        self.index = index
        self.selected = False
        self._quiet = False
        grid = QGridLayout(self)
        grid.setContentsMargins(6, 4, 6, 4)
        grid.setVerticalSpacing(3)
        head = QHBoxLayout()
        self.swatch = QLabel()
        self.swatch.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.swatch.setFixedWidth(26)
        self.weight = QDoubleSpinBox()
        self.weight.setObjectName("region_weight")
        self.weight.setRange(MIN_WEIGHT, MAX_WEIGHT)
        self.weight.setDecimals(2)
        self.weight.setSingleStep(0.1)
        self.weight.setKeyboardTracking(False)
        self.weight.setToolTip("How strongly this prompt holds against the others where they meet")
        self.feather = spin(0, MAX_FEATHER, 8, " px", "region_feather")
        self.feather.setToolTip("Width of the soft edge, centred on the rectangle's border (image px)")
        self.remove_button = QToolButton()
        self.remove_button.setObjectName("region_remove")
        self.remove_button.setText("✕")
        self.remove_button.setToolTip("Remove this region")
        self.remove_button.setAutoRaise(True)
        head.addWidget(self.swatch)
        head.addWidget(QLabel("Weight"))
        head.addWidget(self.weight)
        head.addWidget(QLabel("Feather"))
        head.addWidget(self.feather, 1)
        head.addWidget(self.remove_button)
        grid.addLayout(head, 0, 0, 1, 2)
        self.prompt: QPlainTextEdit | None = None
        self.negative: QLineEdit | None = None
        self.controls: dict[str, QSpinBox] = {}
        row = 1
        if info.text:
            self.prompt = QPlainTextEdit()
            self.prompt.setObjectName("region_prompt")
            self.prompt.setFixedHeight(46)
            self.negative = QLineEdit()
            self.negative.setObjectName("region_negative_prompt")
            self.negative.setPlaceholderText("Negative prompt")
            grid.addWidget(self.prompt, row, 0, 1, 2)
            grid.addWidget(self.negative, row + 1, 0, 1, 2)
            row += 2
        else:
            for key, label, lo, hi, _default in info.controls:
                # One below the range: the region leaves the option out and the main one holds.
                s = spin(lo - 1, hi, 1, "", f"region_{key}")
                s.setSpecialValueText("as main")
                grid.addWidget(QLabel(label), row, 0)
                grid.addWidget(s, row, 1)
                self.controls[key] = s
                row += 1
        self.where = QLabel()
        self.where.setProperty("role", "note")
        grid.addWidget(self.where, row, 0, 1, 2)
        self._labels = {c[0]: c[1] for c in info.controls}
        self._show()
        self.set_index(index)
        self.weight.valueChanged.connect(lambda x: self._edit(weight=float(x)))
        self.feather.valueChanged.connect(lambda x: self._edit(feather=int(x)))
        if self.prompt is not None and self.negative is not None:
            self.prompt.textChanged.connect(lambda: self._edit(prompt=self.prompt.toPlainText()))
            self.negative.textEdited.connect(lambda t: self._edit(negative_prompt=t))
        for key, s in self.controls.items():
            s.valueChanged.connect(lambda x, key=key: self._edit_option(key, int(x)))
        self.remove_button.clicked.connect(lambda: self.remove_clicked.emit(self))
        for w in (self.weight, self.feather, self.prompt, self.negative, *self.controls.values()):
            if w is not None:
                w.installEventFilter(self)

    def _show(self) -> None:
        r = self.region
        self._quiet = True
        try:
            self.weight.setValue(r.weight)
            self.feather.setValue(r.feather)
            if self.prompt is not None and self.negative is not None:
                self.prompt.setPlainText(r.prompt)
                self.negative.setText(r.negative_prompt)
            for key, s in self.controls.items():
                value = r.extra.get(key)
                s.setValue(value if isinstance(value, int) and not isinstance(value, bool) else s.minimum())
        finally:
            self._quiet = False
        self.where.setText(describe_rect(r))

    def _edit(self, **changes: Any) -> None:
        if self._quiet:
            return
        self.region = replace(self.region, **changes)
        self.edited.emit()

    def _edit_option(self, key: str, value: int) -> None:
        extra = {k: x for k, x in self.region.extra.items() if k != key}
        if value != self.controls[key].minimum():
            extra[key] = value
        self._edit(extra=extra)

    def set_rect(self, rect: Rect) -> None:
        self.region = replace(self.region, rect=tuple(rect))
        self.where.setText(describe_rect(self.region))

    def set_index(self, index: int) -> None:
        self.index = index
        c = colour_for(index)
        self.swatch.setText(str(index + 1))
        self.swatch.setStyleSheet(f"background: {c.name()}; color: #141414; font-weight: 600; border-radius: 3px;")
        if self.prompt is not None:
            self.prompt.setPlaceholderText(f"What to paint in region {index + 1}")
        self.set_selected(self.selected)

    def set_selected(self, on: bool) -> None:
        self.selected = on
        border = f"2px solid {colour_for(self.index).name()}" if on else "1px solid palette(mid)"
        self.setStyleSheet(f"QFrame#region_row {{ border: {border}; border-radius: 5px; }}")

    def caption(self) -> str:
        """What the canvas writes beside the region's number."""
        if self.prompt is not None:
            return self.region.prompt.strip().splitlines()[0] if self.region.prompt.strip() else ""
        return ", ".join(f"{self._labels[k]} {s.text()}" for k, s in self.controls.items())

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.FocusIn:
            self.chosen.emit(self)
        return False

    def mousePressEvent(self, event: QMouseEvent) -> None:
        self.chosen.emit(self)
        super().mousePressEvent(event)


class RegionsForm(Form):
    """The regions of the request. ``regions_changed`` (regions, captions) fires on every change,
    shown requests included, for the canvas; ``selected`` when the selection changes;
    ``draw_toggled`` when the Draw button is pressed or released."""

    regions_changed = Signal(object, object)  # tuple[Region, ...], tuple[str, ...]
    selected = Signal(object)  # int | None
    draw_toggled = Signal(bool)

    def __init__(self) -> None:
        super().__init__("Regions")
        self.info: ModelInfo | None = None
        self.rows: list[RegionRow] = []
        self.current: int | None = None
        # Set by the panel: the canvas size the fields describe, and the main options a new
        # region of a model without text starts from.
        self.canvas_size: Callable[[], tuple[int, int]] = lambda: (1024, 1024)
        self.main_controls: Callable[[], dict[str, int]] = dict
        layout = QVBoxLayout(self)
        buttons = QHBoxLayout()
        self.draw = QPushButton("Draw")
        self.draw.setObjectName("region_draw")
        self.draw.setCheckable(True)
        self.draw.setToolTip("Drag a rectangle on the canvas to add a region (or hold Shift and drag at any time)")
        self.add = QPushButton("Add")
        self.add.setObjectName("region_add")
        self.add.setToolTip("Add a region in the middle of the canvas")
        self.remove_button = QPushButton("Remove")
        self.remove_button.setObjectName("region_remove_selected")
        self.remove_button.setToolTip("Remove the selected region (Delete on the canvas)")
        for b in (self.draw, self.add, self.remove_button):
            buttons.addWidget(b)
        layout.addLayout(buttons)
        self.note = QLabel()
        self.note.setObjectName("regions_note")
        self.note.setProperty("role", "note")
        self.note.setWordWrap(True)
        layout.addWidget(self.note)
        self._rows = QVBoxLayout()
        self._rows.setSpacing(6)
        layout.addLayout(self._rows)
        self.draw.toggled.connect(self.draw_toggled)
        self.add.clicked.connect(lambda: self.add_region())
        self.remove_button.clicked.connect(lambda: self.current is not None and self.remove(self.current))
        self._update_buttons()

    # -- the regions -----------------------------------------------------------------------------

    def regions(self) -> tuple[Region, ...]:
        return tuple(row.region for row in self.rows)

    def set_model(self, info: ModelInfo) -> None:
        """Rows for ``info``'s fields (prompts or its controls); the regions stay as they are."""
        self.info = info
        self._rebuild(self.regions())

    def show_regions(self, regions: tuple[Region, ...]) -> None:
        """Show ``regions`` (from a request, or kept across a model change); nothing selected."""
        with self.showing():
            self._rebuild(tuple(regions), keep_selection=False)

    def _rebuild(self, regions: tuple[Region, ...], keep_selection: bool = True) -> None:
        for row in self.rows:
            self._rows.removeWidget(row)
            row.deleteLater()
        self.rows = []
        if self.info is not None:
            for i, r in enumerate(regions):
                self._append_row(i, r)
        self._announce()
        self.select(self.current if keep_selection else None)

    def _append_row(self, index: int, region: Region) -> RegionRow:
        assert self.info is not None
        row = RegionRow(index, region, self.info)
        row.edited.connect(self._row_edited)
        row.chosen.connect(lambda r: self.select(r.index))
        row.remove_clicked.connect(lambda r: self.remove(r.index))
        self._rows.addWidget(row)
        self.rows.append(row)
        return row

    def add_region(self, rect: Rect | None = None) -> int | None:
        """Add a region over ``rect`` (image px; default: the middle of the canvas) and select
        it; returns its index, or None when there are already ``MAX_REGIONS``."""
        if len(self.rows) >= MAX_REGIONS or self.info is None:
            self.note.setText(f"At most {MAX_REGIONS} regions.")
            return None
        if rect is None:
            w, h = self.canvas_size()
            k = len(self.rows) % 4
            dx, dy = k * w // 16, k * h // 16
            rect = (w // 4 + dx, h // 4 + dy, min(w, 3 * w // 4 + dx), min(h, 3 * h // 4 + dy))
        extra = {} if self.info.text else dict(self.main_controls())
        row = self._append_row(len(self.rows), Region(rect=tuple(rect), feather=DEFAULT_FEATHER, extra=extra))
        self._announce()
        self.select(row.index)
        self._changed()
        if self.draw.isChecked():
            self.draw.setChecked(False)  # one rectangle per press of Draw, like a shape tool's single shot
        if row.prompt is not None:
            row.prompt.setFocus()
        return row.index

    def set_rect(self, index: int, rect: Rect) -> None:
        """The canvas moved or resized region ``index``."""
        self.rows[index].set_rect(rect)
        self._announce()
        self._changed()

    def remove(self, index: int) -> None:
        row = self.rows.pop(index)
        self._rows.removeWidget(row)
        row.deleteLater()
        for i, r in enumerate(self.rows):
            r.set_index(i)
        current = self.current
        self.current = None if current is None or current == index else current - (current > index)
        self._announce()
        if self.current != current:
            self.selected.emit(self.current)
        self._update_buttons()
        self._changed()

    def select(self, index: int | None) -> None:
        if index is not None and not 0 <= index < len(self.rows):
            index = None
        changed = index != self.current
        self.current = index
        for row in self.rows:
            row.set_selected(row.index == index)
        self._update_buttons()
        if changed:
            self.selected.emit(index)

    def _row_edited(self) -> None:
        self._announce()
        self._changed()

    def _announce(self) -> None:
        self.regions_changed.emit(self.regions(), tuple(row.caption() for row in self.rows))
        self._update_buttons()

    def _update_buttons(self) -> None:
        self.remove_button.setEnabled(self.current is not None)
        self.add.setEnabled(len(self.rows) < MAX_REGIONS)
        self.draw.setEnabled(len(self.rows) < MAX_REGIONS)
        if not self.rows:
            self.note.setText("Give part of the picture its own prompt: press Draw and drag a rectangle on the "
                              "canvas (or Shift+drag). The main prompt paints the rest.")
            self.note.setVisible(True)
        elif len(self.rows) >= MAX_REGIONS:
            self.note.setText(f"At most {MAX_REGIONS} regions.")
            self.note.setVisible(True)
        else:
            self.note.setVisible(False)

    # -- the form protocol -----------------------------------------------------------------------

    def values(self) -> dict[str, Any]:
        return {"regions": self.regions()}

    def show_values(self, v: FormValues) -> None:
        self.show_regions(v.regions)
