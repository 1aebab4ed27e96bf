"""The starting-picture form: the picture an image-to-image run (File → Restyle…) starts from, so
Generate re-runs the restyle and a saved, opened or reused request keeps it.

Shown only while the panel's request has an ``init_image``: its path (elided, the whole path in
the tooltip), the strength, "keep large shapes" (the request's ``anchor``) and Clear. Whether the
file is still there is checked on the job pool by ``qt/restyle.py`` and told here with
:meth:`StartForm.set_found`; a missing file is said plainly, and :meth:`problem` makes the panel's
request refuse to run with the same words.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QGridLayout, QLabel, QPushButton

from ...engine.core.request import ANCHORS, DEFAULT_STRENGTH
from .base import Form
from .mapping import FormValues

PATH_WIDTH = 240  # px the path is elided to (the panel is narrow; the tooltip has it whole)
ANCHOR_TIP = ("Keep large shapes: the result shrunk N× equals the starting picture shrunk N×, so the layout and "
              "tones at that scale are kept exactly and only finer detail is re-drawn. Off: the strength alone "
              "decides how much changes. A restyle to ×2 or ×4 the size keeps its source with 2 or 4.")


def anchor_box(name: str) -> QComboBox:
    """The "keep large shapes" choice: off, or the request's anchors (shared with the Restyle dialog)."""
    box = QComboBox()
    box.setObjectName(name)
    box.addItem("Off", 0)
    for n in ANCHORS[1:]:
        box.addItem(f"at 1/{n} size", n)
    box.setToolTip(ANCHOR_TIP)
    return box


def strength_box(name: str) -> QDoubleSpinBox:
    """The strength field: the request's 0 < strength <= 1, in the steps it shows."""
    s = QDoubleSpinBox()
    s.setObjectName(name)
    s.setRange(0.01, 1.0)
    s.setSingleStep(0.05)
    s.setDecimals(2)
    s.setValue(DEFAULT_STRENGTH)
    s.setKeyboardTracking(False)
    s.setToolTip("How much of the starting picture is re-drawn: low keeps it, 1 draws anew from noise")
    return s


class StartForm(Form):
    def __init__(self) -> None:
        super().__init__("Starting picture")
        self.setObjectName("start_form")
        self.path: str | None = None
        self.found: bool | None = None  # None: not checked yet
        self._given: float | None = None  # the shown request's strength (None: the default)
        grid = QGridLayout(self)
        self.path_label = QLabel()
        self.path_label.setObjectName("start_path")
        self.path_label.setWordWrap(True)
        self.path_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.clear_button = QPushButton("Clear")
        self.clear_button.setObjectName("start_clear")
        self.clear_button.setToolTip("Forget the starting picture: Generate paints from noise again")
        self.strength = strength_box("start_strength")
        self.anchor = anchor_box("start_anchor")
        grid.addWidget(self.path_label, 0, 0, 1, 3)
        grid.addWidget(QLabel("Strength"), 1, 0)
        grid.addWidget(self.strength, 1, 1)
        grid.addWidget(self.clear_button, 1, 2)
        grid.addWidget(QLabel("Keep large shapes"), 2, 0)
        grid.addWidget(self.anchor, 2, 1, 1, 2)
        self.clear_button.clicked.connect(self.clear)
        self.strength.valueChanged.connect(self._changed)
        self.anchor.currentIndexChanged.connect(self._changed)
        self.setVisible(False)

    def values(self) -> dict[str, Any]:
        if self.path is None:
            return {"init_image": None, "strength": None, "anchor": 0}
        strength = round(self.strength.value(), 2)
        # A request without a strength comes back without one while the field shows its default.
        if self._given is None and strength == DEFAULT_STRENGTH:
            strength = None
        return {"init_image": self.path, "strength": strength, "anchor": self.anchor.currentData()}

    def show_values(self, v: FormValues) -> None:
        with self.showing():
            self.path, self.found, self._given = v.init_image, None, v.strength
            self.strength.setValue(DEFAULT_STRENGTH if v.strength is None else v.strength)
            self.anchor.setCurrentIndex(max(0, self.anchor.findData(v.anchor)))
        self._show_path()

    def set_found(self, path: str, found: bool) -> None:
        """The job pool's answer for ``path``: still there or not (ignored if the path moved on)."""
        if path != self.path or found == self.found:
            return
        self.found = found
        self._show_path()
        self._changed()  # the request's validity changed: the plan summary says so

    def problem(self) -> str | None:
        """What stops a run from this form: the starting picture is gone."""
        if self.path is not None and self.found is False:
            return f"Starting picture not found: {self.path} — choose it again or clear it"
        return None

    def clear(self) -> None:
        self.path, self.found, self._given = None, None, None
        self._show_path()
        self._changed()

    def _show_path(self) -> None:
        self.setVisible(self.path is not None)
        if self.path is None:
            self.path_label.clear()
            return
        problem = self.problem()
        if problem is not None:
            self.path_label.setText(problem)
            self.path_label.setStyleSheet("color: #e5534b")
        else:
            fm = self.path_label.fontMetrics()
            self.path_label.setText(fm.elidedText(self.path, Qt.TextElideMode.ElideMiddle, PATH_WIDTH))
            self.path_label.setStyleSheet("")
        self.path_label.setToolTip(self.path)
