"""The LoRA form: a list of LoRA files, each with a weight; added from a file dialog or from the
LoRAs found in the model folders (``engine.models.lora.find_loras``), removed one by one.

Each row keeps its request's ``LoraSpec`` whole (the sha256 a replayed recipe carries too), so a
shown request comes back exactly; only the weight is edited in place. Models that take no LoRAs
(the built-ins) grey the form, and their requests get none (``mapping.to_request``). The list,
the menu, the scan and the greying are the shared :class:`~.parts.PartsForm`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtWidgets import QDoubleSpinBox, QFileDialog, QHBoxLayout, QLabel

from ...engine.core.lora import MAX_LORA_WEIGHT, MAX_LORAS, MIN_LORA_WEIGHT, LoraSpec
from ...engine.core.modelinfo import ModelInfo
from .mapping import takes_loras
from .parts import PartRow, PartsForm

LORA_FILTER = "LoRA (*.safetensors)"


class LoraRow(PartRow):
    """One LoRA: its name (the path in the tooltip), its weight, a remove button."""

    def __init__(self, spec: LoraSpec) -> None:
        super().__init__(spec, "LoRA", "lora_remove")
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
        layout.addWidget(self.remove)
        self.weight.valueChanged.connect(lambda w: self.edited.emit({"weight": round(w, 2)}))


class LorasForm(PartsForm):
    field, limit, what = "loras", MAX_LORAS, "LoRA"
    found_name = "lora_found"

    def __init__(self) -> None:
        super().__init__("LoRA")
        self.add_file = self.add_button("Add file…", "lora_add", lambda: QFileDialog.getOpenFileName(
            self, "Add a LoRA", "", LORA_FILTER)[0])

    def loras(self) -> tuple[LoraSpec, ...]:
        return self.specs()

    def new_spec(self, path: str) -> LoraSpec:
        return LoraSpec(path, 1.0)

    def make_row(self, spec: LoraSpec) -> LoraRow:
        return LoraRow(spec)

    def finder(self) -> Callable[[], list[Path]]:
        from ...engine.models.lora import find_loras

        return find_loras

    def takes(self, info: ModelInfo) -> bool:
        return takes_loras(info)

    def refusal(self, info: ModelInfo) -> str:
        return f"{info.label} takes no LoRAs (SD 1.x/2.x, SDXL and FLUX.1 do)"
