"""The coherence form: how tiles are fused, whether the grid moves each step, and the weight of
a first pass at the model's native size (global context)."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout

from ...engine.core import request as rq
from .base import Form
from .mapping import FormValues

FUSION_LABELS = {
    "cosine": "Cosine (smooth)",
    "gaussian": "Gaussian",
    "uniform": "Uniform average",
    "none": "None (nearest tile)",
    "independent": "Independent tiles (baseline)",
}


class CoherenceForm(Form):
    def __init__(self) -> None:
        super().__init__("Coherence")
        layout = QFormLayout(self)
        self.fusion = QComboBox()
        self.fusion.setObjectName("fusion")
        for f in rq.FUSIONS[::-1]:
            self.fusion.addItem(FUSION_LABELS[f], f)
        layout.addRow("Fusion", self.fusion)
        self.jitter = QCheckBox("Move the grid each step")
        self.jitter.setObjectName("jitter")
        layout.addRow("Jitter", self.jitter)
        self.global_context = QDoubleSpinBox()
        self.global_context.setObjectName("global_context")
        self.global_context.setRange(0.0, 1.0)  # the request's range: 0 (off) to 1
        self.global_context.setSingleStep(0.1)
        self.global_context.setDecimals(2)
        self.global_context.setSpecialValueText("Off")
        layout.addRow("Global context", self.global_context)
        self.fusion.currentIndexChanged.connect(self._changed)
        self.jitter.toggled.connect(self._changed)
        self.global_context.valueChanged.connect(self._changed)

    def values(self) -> dict[str, Any]:
        return {"fusion": self.fusion.currentData(), "jitter": self.jitter.isChecked(),
                "global_context": self.global_context.value()}

    def show_values(self, v: FormValues) -> None:
        with self.showing():
            self.fusion.setCurrentIndex(max(0, self.fusion.findData(v.fusion)))
            self.jitter.setChecked(v.jitter)
            self.global_context.setValue(v.global_context)
