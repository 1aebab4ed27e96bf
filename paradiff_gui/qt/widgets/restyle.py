"""The Restyle… dialog: the picture to start from, the prompt, strength, size, "keep large shapes"
and the output file.

It says at once what it can without reading a file (a field left empty, the output's format);
the picture itself is read and checked by the engine's own rules on the job pool
(``qt/restyle.py``), which tells the dialog its size with :meth:`RestyleDialog.set_source_size`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QWidget,
)

from ...engine.core import request as rq
from ...engine.io.export import FORMATS
from ..forms.start import anchor_box, strength_box
from .output import add_output_rows, output_problem

SIZES = (1, 2, 4)  # keep, ×2, ×4
DEFAULT_ANCHORS = {1: 0, 2: 2, 4: 4}  # a restyle to k× the size keeps its source with anchor k (none at 1×)
IMAGE_FILTER = "Images (" + " ".join(f"*{e}" for f in FORMATS.values() for e in f.extensions) + ")"


def restyle_size(width: int, height: int, scale: int) -> tuple[int, int]:
    """The canvas of a restyle to ``scale``× a ``width`` × ``height`` picture (the engine's rounding)."""
    return rq.canvas_size(width, height, scale)


@dataclass(frozen=True)
class RestyleChoice:
    """What the dialog asks for; ``prompt`` None: the model takes no text (the panel's is kept)."""

    source: str
    prompt: str | None
    strength: float
    scale: int  # 1 (keep), 2 or 4
    anchor: int  # 0: off (request.anchor)
    output: str


class RestyleDialog(QDialog):
    """``chosen(RestyleChoice)`` once Restyle is pressed with the fields filled in;
    ``source_changed(path)`` when another picture is chosen (its size is read on the job pool).

    ``current`` is the current picture's file (None: it has none); ``default_output(source, scale)``
    names the output until the person edits it."""

    chosen = Signal(object)
    source_changed = Signal(str)

    def __init__(self, parent: QWidget | None, current: str | None, prompt: str | None,
                 default_output: Callable[[str, int], Path]) -> None:
        super().__init__(parent)
        self.setObjectName("restyle_dialog")
        self.setWindowTitle("Restyle")
        self.setMinimumWidth(520)
        self.default_output = default_output
        self.source_size: tuple[int, int] | None = None
        self._named = self._anchored = False  # the person chose these: they no longer follow the rest
        form = QFormLayout(self)
        self.source = QLineEdit()
        self.source.setObjectName("restyle_source")
        self.source.setPlaceholderText("A picture: PNG, TIFF, WebP or JPEG, colour or a 16-bit heightmap")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_source)
        self.use_current = QPushButton("Current picture")
        self.use_current.setObjectName("restyle_current")
        self.use_current.setEnabled(current is not None)
        self.use_current.setToolTip("The picture on the canvas, from its file" if current else
                                    "The current picture has no file: export it first, or browse for one")
        self.use_current.clicked.connect(lambda: self._set_source(current or ""))
        row = QHBoxLayout()
        row.addWidget(self.source, 1)
        row.addWidget(browse)
        row.addWidget(self.use_current)
        form.addRow("Picture", row)
        self.takes_text = prompt is not None
        self.prompt = QPlainTextEdit(prompt or "", self)
        self.prompt.setObjectName("restyle_prompt")
        self.prompt.setFixedHeight(64)
        self.prompt.setPlaceholderText("What the picture becomes, e.g. an oil painting, thick brush strokes")
        if self.takes_text:
            form.addRow("Prompt", self.prompt)
        else:
            self.prompt.setVisible(False)  # the model takes no text
        self.strength = strength_box("restyle_strength")
        form.addRow("Strength", self.strength)
        self.scale = QComboBox()
        self.scale.setObjectName("restyle_scale")
        for k in SIZES:
            self.scale.addItem("Keep the size" if k == 1 else f"×{k}", k)
        self.size_label = QLabel()
        self.size_label.setObjectName("restyle_size")
        row = QHBoxLayout()
        row.addWidget(self.scale)
        row.addWidget(self.size_label, 1)
        form.addRow("Size", row)
        self.anchor = anchor_box("restyle_anchor")
        form.addRow("Keep large shapes", self.anchor)
        self.output, self.error, self.buttons = add_output_rows(
            self, form, "restyle", "The restyled picture's file, with its recipe; the source is never written",
            "Restyle", "Restyle to", self._output_named)
        self.scale.currentIndexChanged.connect(self._follow)
        self.anchor.activated.connect(self._anchor_chosen)
        self.output.textEdited.connect(self._output_named)
        self.source.editingFinished.connect(lambda: self._set_source(self.source.text()))
        self._follow()
        if current is not None:
            self._set_source(current)

    # -- what the fields follow -------------------------------------------------------------------

    def _set_source(self, path: str) -> None:
        path = path.strip()
        if self.source.text() != path:
            self.source.setText(path)
        self.source_size = None
        self._follow()
        if path:
            self.source_changed.emit(path)

    def set_source_size(self, path: str, size: tuple[int, int] | None) -> None:
        """The picture's size, read from its header on the job pool (None: unreadable; the run says why)."""
        if path == self.source.text().strip():
            self.source_size = size
            self._follow()

    def _anchor_chosen(self, *_args: object) -> None:
        self._anchored = True

    def _output_named(self, *_args: object) -> None:
        self._named = True
        self.error.setVisible(False)

    def _follow(self, *_args: object) -> None:
        k = self.scale.currentData()
        if not self._anchored:
            self.anchor.setCurrentIndex(self.anchor.findData(DEFAULT_ANCHORS[k]))
        if self.source_size is not None:
            w, h = restyle_size(*self.source_size, k)
            self.size_label.setText(f"{self.source_size[0]}×{self.source_size[1]} → {w}×{h} px")
        else:
            self.size_label.setText("")
        src = self.source.text().strip()
        if not self._named and src:
            self.output.setText(str(self.default_output(src, k)))
        self.error.setVisible(False)

    def _browse_source(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Restyle a picture", self.source.text(), IMAGE_FILTER)
        if path:
            self._set_source(path)

    # -- the answer ---------------------------------------------------------------------------------

    def problem(self) -> str | None:
        """What is wrong with the fields, naming the field (the picture's own checks follow on the pool)."""
        if not self.source.text().strip():
            return "init_image: choose the picture to restyle (Browse…, or Current picture)"
        return output_problem(self.output.text(), "restyled")

    def show_problem(self, message: str) -> None:
        self.error.setText(message)
        self.error.setVisible(True)

    def choice(self) -> RestyleChoice:
        return RestyleChoice(self.source.text().strip(),
                             self.prompt.toPlainText() if self.takes_text else None,
                             round(self.strength.value(), 2), self.scale.currentData(),
                             self.anchor.currentData(), str(Path(self.output.text().strip()).expanduser()))

    def accept(self) -> None:
        problem = self.problem()
        if problem is not None:
            self.show_problem(problem)
            return
        self.chosen.emit(self.choice())
        super().accept()
