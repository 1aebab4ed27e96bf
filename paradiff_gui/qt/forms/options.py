"""The model's own options (``ModelInfo.controls``, e.g. the terrain's difficulty) as spin boxes,
rebuilt whenever the model changes; the same table checks ``--set KEY=VALUE`` in the CLI."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QFormLayout, QLabel, QSpinBox

from ...engine.core.modelinfo import ModelInfo
from .base import Form, spin
from .mapping import FormValues


class OptionsForm(Form):
    def __init__(self) -> None:
        super().__init__("Model options")
        self._layout = QFormLayout(self)
        self.spins: dict[str, QSpinBox] = {}  # by extra key, in the model's order
        self._given: frozenset[str] = frozenset()
        self._carried: dict[str, Any] = {}

    def set_model(self, info: ModelInfo) -> None:
        """One spin box per control, at its default (the box hides when the model has none)."""
        for s in self.spins.values():
            self._layout.removeRow(s)
        self.spins = {}
        for key, label, lo, hi, default in info.controls:
            s = spin(lo, hi, 1, "", key)
            s.setValue(int(default))
            s.valueChanged.connect(self._changed)
            self._layout.addRow(QLabel(label), s)
            self.spins[key] = s
        # New boxes are not "named" by any request yet; extras without a control stay until the
        # next request is shown.
        self._given = frozenset()
        self.setVisible(bool(self.spins))

    def values(self) -> dict[str, Any]:
        return {"controls": {k: s.value() for k, s in self.spins.items()}, "given": self._given,
                "carried": dict(self._carried)}

    def show_values(self, v: FormValues) -> None:
        with self.showing():
            for key, s in self.spins.items():
                s.setValue(v.controls.get(key, s.value()))
        self._given, self._carried = v.given, dict(v.carried)
