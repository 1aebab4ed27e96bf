"""What the Upscale…, Refine selection… and Restyle… dialogs share: the output file (a line edit
with Browse…), the line that says what is wrong with a value, OK/Cancel, and the output's check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
)

from ...engine.core.request import RequestError
from ...engine.io.export import FORMATS, format_for

EXPORT_FILTERS = ";;".join(f.file_filter for f in FORMATS.values())


def add_output_rows(dialog: QDialog, form: QFormLayout, name: str, tip: str, ok_text: str, browse_title: str,
                    browsed: Callable[[], None] = lambda: None) -> tuple[QLineEdit, QLabel, QDialogButtonBox]:
    """The Output row (``{name}_output``, Browse… calls ``browsed`` after a file is picked), the error
    line (``{name}_error``, hidden) and OK (``ok_text``)/Cancel, added to ``form``."""
    output = QLineEdit()
    output.setObjectName(f"{name}_output")
    output.setToolTip(tip)
    browse = QPushButton("Browse…")

    def pick() -> None:
        path, _ = QFileDialog.getSaveFileName(dialog, browse_title, output.text(), EXPORT_FILTERS)
        if path:
            output.setText(path)
            browsed()

    browse.clicked.connect(pick)
    row = QHBoxLayout()
    row.addWidget(output, 1)
    row.addWidget(browse)
    form.addRow("Output", row)
    error = QLabel()
    error.setObjectName(f"{name}_error")
    error.setStyleSheet("color: #e5534b")
    error.setWordWrap(True)
    error.setVisible(False)
    form.addRow(error)
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
    buttons.button(QDialogButtonBox.StandardButton.Ok).setText(ok_text)
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    form.addRow(buttons)
    return output, error, buttons


def output_problem(text: str, what: str) -> str | None:
    """What is wrong with an output file's name, naming the field; None if nothing. ``what``: the
    picture written there ("upscaled", "refined"…)."""
    text = text.strip()
    if not text:
        return f"output: give the file the {what} picture is written to (.png, .tif, .webp or .jpg)"
    try:
        format_for(text)
    except RequestError as exc:
        return f"output: {exc.message}"
    folder = Path(text).expanduser().parent
    if not folder.is_dir():
        return f"output: the folder {folder} does not exist"
    return None
