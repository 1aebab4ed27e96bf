"""The Refine selection… dialog: prompt, strength, feather and the output file.

It checks what it can say at once (the output's format and folder) and names the field; the
selection and the source are checked by ``engine.api.refine`` on the job pool.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QWidget,
)

from ...engine.core.regions import MAX_FEATHER
from ...engine.core.request import DEFAULT_REFINE_FEATHER, DEFAULT_REFINE_STRENGTH
from .output import add_output_rows, output_problem


class RefineDialog(QDialog):
    """``chosen(prompt, strength, feather, output)`` once Refine is pressed with valid values.
    ``what`` says what is selected; ``prompt`` (None: the model takes none) and ``output`` prefill."""

    chosen = Signal(str, float, int, str)

    def __init__(self, parent: QWidget | None, title: str, what: str, prompt: str | None, output: Path) -> None:
        super().__init__(parent)
        self.setObjectName("refine_dialog")
        self.setWindowTitle("Refine selection")
        form = QFormLayout(self)
        form.addRow(QLabel(f"<b>{title}</b><br>{what}"))
        self.prompt = QLineEdit(prompt or "")
        self.prompt.setObjectName("refine_prompt")
        self.prompt.setEnabled(prompt is not None)
        self.prompt.setToolTip("What the selection should show (the picture's own prompt to start with)"
                               if prompt is not None else "This model takes no prompt")
        form.addRow("Prompt", self.prompt)
        self.strength = QDoubleSpinBox()
        self.strength.setObjectName("refine_strength")
        self.strength.setRange(0.01, 1.0)  # the request's 0 < strength <= 1, in the steps it shows
        self.strength.setSingleStep(0.05)
        self.strength.setValue(DEFAULT_REFINE_STRENGTH)
        self.strength.setToolTip("How much of the selection is re-drawn: low keeps it, 1 draws anew")
        form.addRow("Strength", self.strength)
        self.feather = QSpinBox()
        self.feather.setObjectName("refine_feather")
        self.feather.setRange(0, MAX_FEATHER)
        self.feather.setSuffix(" px")
        self.feather.setValue(DEFAULT_REFINE_FEATHER)
        self.feather.setToolTip("The soft border centred on the selection's edge (image px); outside it the "
                                "picture stays bit for bit")
        form.addRow("Feather", self.feather)
        self.output, self.error, self.buttons = add_output_rows(
            self, form, "refine", "A new file: the source is never overwritten", "Refine", "Refine to")
        self.output.setText(str(output))
        self.output.textEdited.connect(lambda *_: self.error.setVisible(False))

    def problem(self) -> str | None:
        """What is wrong with the output, naming the field; None if nothing."""
        return output_problem(self.output.text(), "refined")

    def accept(self) -> None:
        problem = self.problem()
        if problem is not None:
            self.error.setText(problem)
            self.error.setVisible(True)
            return
        self.chosen.emit(self.prompt.text(), round(self.strength.value(), 2), self.feather.value(),
                         str(Path(self.output.text().strip()).expanduser()))
        super().accept()
