"""The size form: width × height with presets by long side and an optional locked ratio."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QVBoxLayout

from ...engine.core import request as rq
from .base import Form, spin
from .mapping import FormValues

SIZE_PRESETS = (("1K", 1024), ("2K", 2048), ("4K", 4096), ("8K", 8192), ("16K", 16384))


def round8(v: float) -> int:
    """The nearest size the request accepts (a multiple of 8 within its limits)."""
    return max(rq.MIN_SIZE, min(rq.MAX_SIZE, round(v / 8.0) * 8))


class SizeForm(Form):
    def __init__(self) -> None:
        super().__init__("Size")
        self._aspect = 1.0  # width / height, kept while the lock is on
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.preset = QComboBox()
        self.preset.setObjectName("size_preset")
        self.preset.addItem("Custom", None)
        for name, px in SIZE_PRESETS:
            self.preset.addItem(f"{name} ({px} px long side)", px)
        row.addWidget(self.preset, 1)
        layout.addLayout(row)
        row = QHBoxLayout()
        self.width_ = spin(rq.MIN_SIZE, rq.MAX_SIZE, 8, " px", "width")
        self.height_ = spin(rq.MIN_SIZE, rq.MAX_SIZE, 8, " px", "height")
        self.aspect_lock = QCheckBox("Keep ratio")
        self.aspect_lock.setObjectName("aspect_lock")
        self.aspect_lock.setToolTip("Changing the width changes the height with it, and back")
        row.addWidget(self.width_, 1)
        row.addWidget(QLabel("×"))
        row.addWidget(self.height_, 1)
        row.addWidget(self.aspect_lock)
        layout.addLayout(row)
        self.width_.valueChanged.connect(lambda v: self._edited("w", v))
        self.height_.valueChanged.connect(lambda v: self._edited("h", v))
        self.aspect_lock.toggled.connect(self._lock_toggled)
        self.preset.activated.connect(self._preset_chosen)

    def values(self) -> dict[str, Any]:
        return {"width": self.width_.value(), "height": self.height_.value()}

    def show_values(self, v: FormValues) -> None:
        with self.showing():
            self.width_.setValue(v.width)
            self.height_.setValue(v.height)
            self._aspect = v.width / v.height
            self._follow_preset()

    def _lock_toggled(self, on: bool) -> None:
        if on:
            self._aspect = self.width_.value() / max(1, self.height_.value())

    def _follow_preset(self) -> None:
        # The preset follows the long side (4096 x 2048 is "4K"), "Custom" otherwise.
        self.preset.setCurrentIndex(max(0, self.preset.findData(max(self.width_.value(), self.height_.value()))))

    def _edited(self, which: str, value: int) -> None:
        if self._showing:
            return
        if self.aspect_lock.isChecked():
            with self.showing():
                if which == "w":
                    self.height_.setValue(round8(value / self._aspect))
                else:
                    self.width_.setValue(round8(value * self._aspect))
        self._follow_preset()
        self.changed.emit()

    def _preset_chosen(self, index: int) -> None:
        side = self.preset.itemData(index)
        if side is None:
            return
        aspect = self.width_.value() / max(1, self.height_.value())
        with self.showing():
            if aspect >= 1:
                self.width_.setValue(side)
                self.height_.setValue(round8(side / aspect))
            else:
                self.height_.setValue(side)
                self.width_.setValue(round8(side * aspect))
        self.preset.setCurrentIndex(index)
        self.changed.emit()
