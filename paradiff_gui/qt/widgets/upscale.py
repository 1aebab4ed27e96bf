"""The Upscale… dialog: scale (×2, ×4, ×8: progressive ×2 passes), strength, and the output file.

It checks what it can say at once (the output's format and folder, the size against the
request's limit) and names the field and the allowed values; the passes themselves are laid out
by ``engine.api.upscale`` on the job pool.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QWidget,
)

from ...engine.api.upscale import DEFAULT_UPSCALE_STRENGTH, SCALES
from ...engine.core import request as rq
from .output import add_output_rows, output_problem


class UpscaleDialog(QDialog):
    """``chosen(scale, strength, output)`` once OK is pressed with valid values.

    ``size`` is the source picture's (width, height) in image px; ``default_output(scale)`` names
    the file an upscale by ``scale`` goes to until the person edits it."""

    chosen = Signal(int, float, str)

    def __init__(self, parent: QWidget | None, title: str, size: tuple[int, int],
                 default_output: Callable[[int], Path]) -> None:
        super().__init__(parent)
        self.setObjectName("upscale_dialog")
        self.setWindowTitle("Upscale")
        self.source_size = size
        self.default_output = default_output
        self._named = False  # the person typed or chose an output: it no longer follows the scale
        form = QFormLayout(self)
        form.addRow(QLabel(f"<b>{title}</b> ({size[0]}×{size[1]} px)"))
        self.scale = QComboBox()
        self.scale.setObjectName("upscale_scale")
        for k in SCALES:
            self.scale.addItem(f"×{k}", k)
        self.scale.setToolTip("Each ×2 is one image-to-image pass on the one before; every pass's picture is kept")
        self.size_label = QLabel()
        self.size_label.setObjectName("upscale_size")
        row = QHBoxLayout()
        row.addWidget(self.scale)
        row.addWidget(self.size_label, 1)
        form.addRow("Scale", row)
        self.strength = QDoubleSpinBox()
        self.strength.setObjectName("upscale_strength")
        self.strength.setRange(0.01, 1.0)  # the request's 0 < strength <= 1, in the steps it shows
        self.strength.setSingleStep(0.05)
        self.strength.setDecimals(2)
        self.strength.setValue(DEFAULT_UPSCALE_STRENGTH)
        self.strength.setToolTip("How much of each pass is re-drawn: low keeps the picture, 1 draws anew")
        form.addRow("Strength", self.strength)
        self.output, self.error, self.buttons = add_output_rows(
            self, form, "upscale", "The last pass's file; the passes before it are written beside it (NAME-x2.png…)",
            "Upscale", "Upscale to", self._edited)
        self.scale.currentIndexChanged.connect(self._scale_changed)
        self.output.textEdited.connect(self._edited)
        self._scale_changed()

    def _edited(self, *_args: object) -> None:
        self._named = True
        self.error.setVisible(False)

    def _scale_changed(self, *_args: object) -> None:
        k = self.scale.currentData()
        w, h = self.source_size
        self.size_label.setText(f"→ {w * k}×{h * k} px, {SCALES.index(k) + 1} pass{'es' if k > 2 else ''}")
        if not self._named:
            self.output.setText(str(self.default_output(k)))
        self.error.setVisible(False)

    def problem(self) -> str | None:
        """What is wrong with the values, naming the field and what is allowed; None if nothing."""
        k = self.scale.currentData()
        w, h = self.source_size
        if max(w, h) * k > rq.MAX_SIZE:
            return f"scale: ×{k} makes {w * k}×{h * k} px; each side may be at most {rq.MAX_SIZE} px"
        return output_problem(self.output.text(), "upscaled")

    def accept(self) -> None:
        problem = self.problem()
        if problem is not None:
            self.error.setText(problem)
            self.error.setVisible(True)
            return
        self.chosen.emit(self.scale.currentData(), round(self.strength.value(), 2),
                         str(Path(self.output.text().strip()).expanduser()))
        super().accept()
