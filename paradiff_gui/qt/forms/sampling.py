"""The sampling form: steps, guidance (for models that use it), sampler, and the seed with its
Random button and lock. Seeds are drawn by the engine's one seed policy (``draw_seed``)."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QPushButton

from ...engine.api.requests import draw_seed
from ...engine.core import request as rq
from ...engine.core.modelinfo import ModelInfo
from ...engine.core.request import SAMPLER_LABELS
from .base import Form, spin
from .mapping import FormValues


class SamplingForm(Form):
    def __init__(self) -> None:
        super().__init__("Sampling")
        layout = QFormLayout(self)
        self.steps = spin(1, rq.MAX_STEPS, 1, "", "steps")
        layout.addRow("Steps", self.steps)
        self.guidance = QDoubleSpinBox()
        self.guidance.setObjectName("guidance")
        self.guidance.setRange(rq.MIN_GUIDANCE, rq.MAX_GUIDANCE)
        self.guidance.setSingleStep(0.5)
        self.guidance.setDecimals(1)
        self.guidance_label = QLabel("Guidance")
        layout.addRow(self.guidance_label, self.guidance)
        self.sampler = QComboBox()
        self.sampler.setObjectName("sampler")
        layout.addRow("Sampler", self.sampler)
        seed_row = QHBoxLayout()
        # QSpinBox stops at 2³¹−1; seeds go to 2³²−1, which a double holds exactly.
        self.seed = QDoubleSpinBox()
        self.seed.setObjectName("seed")
        self.seed.setDecimals(0)
        self.seed.setRange(0, rq.MAX_SEED)
        self.seed_random = QPushButton("Random")
        self.seed_random.setObjectName("seed_random")
        self.seed_random.setToolTip("Draw a new random seed")
        self.seed_lock = QCheckBox("Lock")
        self.seed_lock.setObjectName("seed_lock")
        self.seed_lock.setToolTip("Keep this seed; unlocked, each Generate draws a new one")
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.seed_random)
        seed_row.addWidget(self.seed_lock)
        layout.addRow("Seed", seed_row)
        self.steps.valueChanged.connect(self._changed)
        self.guidance.valueChanged.connect(self._changed)
        self.seed.valueChanged.connect(self._changed)
        self.sampler.currentIndexChanged.connect(self._changed)
        self.seed_random.clicked.connect(self.randomise_seed)

    def set_model(self, info: ModelInfo) -> None:
        """Guidance only where it applies; the model's samplers, keeping the current one if it has it."""
        self.guidance.setVisible(info.guidance)
        self.guidance_label.setVisible(info.guidance)
        current = self.sampler.currentData()
        self.sampler.blockSignals(True)
        self.sampler.clear()
        for s in info.samplers:
            self.sampler.addItem(SAMPLER_LABELS.get(s, s), s)
        self.sampler.setCurrentIndex(max(0, self.sampler.findData(current)))
        self.sampler.blockSignals(False)

    def randomise_seed(self) -> None:
        self.seed.setValue(draw_seed())

    def prepare_run(self) -> None:
        """Before Generate: an unlocked seed is drawn anew, so each run differs."""
        if not self.seed_lock.isChecked():
            self.randomise_seed()

    def values(self) -> dict[str, Any]:
        return {"steps": self.steps.value(), "guidance": self.guidance.value(), "sampler": self.sampler.currentData(),
                "seed": int(self.seed.value())}

    def show_values(self, v: FormValues) -> None:
        with self.showing():
            self.steps.setValue(v.steps)
            self.guidance.setValue(v.guidance)
            self.sampler.setCurrentIndex(max(0, self.sampler.findData(v.sampler)))
            self.seed.setValue(v.seed)
