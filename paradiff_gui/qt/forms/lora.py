"""The LoRA form: a list of LoRA files, each with a weight; added from a file dialog or from the
LoRAs found in the model folders (``engine.models.lora.find_loras``), removed one by one.

Each row keeps its request's ``LoraSpec`` whole (the sha256 a replayed recipe carries too), so a
shown request comes back exactly; only the weight is edited in place. Models that take no LoRAs
(the built-ins) grey the form, and their requests get none (``mapping.to_request``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ...engine.core.lora import MAX_LORA_WEIGHT, MAX_LORAS, MIN_LORA_WEIGHT, LoraSpec
from ...engine.core.modelinfo import ModelInfo
from ..jobs import Jobs
from .base import Form
from .mapping import FormValues, takes_loras

LORA_FILTER = "LoRA (*.safetensors)"


class LoraRow(QWidget):
    """One LoRA: its name (the path in the tooltip), its weight, a remove button."""

    def __init__(self, spec: LoraSpec, form: LorasForm) -> None:
        super().__init__()
        self.spec = spec
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.label = QLabel(spec.name)
        self.label.setToolTip(spec.path + (f"\nsha256 {spec.sha256}" if spec.sha256 else ""))
        layout.addWidget(self.label, 1)
        self.weight = QDoubleSpinBox()
        self.weight.setObjectName("lora_weight")
        self.weight.setRange(MIN_LORA_WEIGHT, MAX_LORA_WEIGHT)
        self.weight.setDecimals(2)
        self.weight.setSingleStep(0.05)
        self.weight.setKeyboardTracking(False)
        self.weight.setValue(spec.weight)
        self.weight.setToolTip("How strongly the LoRA changes the model: 1 as trained, 0 not at all, "
                               "negative values push away from what it learnt.")
        layout.addWidget(self.weight)
        self.remove = QToolButton()
        self.remove.setObjectName("lora_remove")
        self.remove.setText("✕")
        self.remove.setToolTip("Remove this LoRA")
        layout.addWidget(self.remove)
        self.weight.valueChanged.connect(lambda w: form._weight_changed(self, w))
        self.remove.clicked.connect(lambda: form.remove(form.rows.index(self)))


class LorasForm(Form):
    def __init__(self) -> None:
        super().__init__("LoRA")
        self.rows: list[LoraRow] = []
        self._jobs = Jobs(self, workers=1)  # the model folders are walked off the GUI thread
        outer = QVBoxLayout(self)
        self.list_layout = QVBoxLayout()
        outer.addLayout(self.list_layout)
        buttons = QHBoxLayout()
        self.found = QComboBox()
        self.found.setObjectName("lora_found")
        self.found.setToolTip("LoRAs found in the model folders ($PARADIFF_MODEL_PATH and the app's models folder)")
        self.found.activated.connect(self._add_found)
        buttons.addWidget(self.found, 1)
        self.add_file = QPushButton("Add file…")
        self.add_file.setObjectName("lora_add")
        self.add_file.clicked.connect(self._add_from_dialog)
        buttons.addWidget(self.add_file)
        outer.addLayout(buttons)
        self.refresh_found([])

    # -- the list ---------------------------------------------------------------------------------

    def loras(self) -> tuple[LoraSpec, ...]:
        return tuple(row.spec for row in self.rows)

    def add(self, path: str, weight: float = 1.0) -> None:
        if len(self.rows) >= MAX_LORAS:
            return
        self._append(LoraSpec(str(path), weight))
        self._changed()

    def remove(self, index: int) -> None:
        row = self.rows.pop(index)
        self.list_layout.removeWidget(row)
        row.deleteLater()
        self._update()
        self._changed()

    def _append(self, spec: LoraSpec) -> None:
        row = LoraRow(spec, self)
        self.rows.append(row)
        self.list_layout.addWidget(row)
        self._update()

    def _weight_changed(self, row: LoraRow, weight: float) -> None:
        row.spec = replace(row.spec, weight=round(weight, 2))
        self._changed()

    def _update(self) -> None:
        self.add_file.setEnabled(len(self.rows) < MAX_LORAS)
        self.found.setEnabled(len(self.rows) < MAX_LORAS and self.found.count() > 1)

    # -- adding -----------------------------------------------------------------------------------

    def scan(self) -> None:
        """Look for LoRAs in the model folders on a worker (headers only, no weights read), then list them."""
        from ...engine.models.lora import find_loras

        self._jobs.submit(find_loras, self.refresh_found)

    def refresh_found(self, paths: list[Path]) -> None:
        """List ``paths`` in the "from the model folders" menu."""
        self.found.clear()
        self.found.addItem("Add a LoRA from the model folders…" if paths else "No LoRAs in the model folders")
        for p in paths:
            self.found.addItem(p.stem, str(p))
            self.found.setItemData(self.found.count() - 1, str(p), 3)  # Qt.ToolTipRole: the whole path
        self._update()

    def _add_found(self, index: int) -> None:
        path = self.found.itemData(index)
        self.found.setCurrentIndex(0)
        if path:
            self.add(path)

    def _add_from_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Add a LoRA", "", LORA_FILTER)
        if path:
            self.add(path)

    # -- the form protocol ------------------------------------------------------------------------

    def set_model(self, info: ModelInfo) -> None:
        on = takes_loras(info)
        self.setEnabled(on)
        self.setToolTip("" if on else f"{info.label} takes no LoRAs (SD 1.x/2.x, SDXL and FLUX.1 do)")

    def values(self) -> dict[str, Any]:
        return {"loras": self.loras()}

    def show_values(self, v: FormValues) -> None:
        with self.showing():
            while self.rows:
                row = self.rows.pop()
                self.list_layout.removeWidget(row)
                row.deleteLater()
            for spec in v.loras:
                self._append(spec)
