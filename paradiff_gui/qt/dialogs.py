"""Messages to the person: errors in plain words (details in the log), never blocking the loop."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QWidget

from ..engine.core import request as rq

FAILURE_TITLES = {"request": "This request cannot run", "model": "The model is not available"}


def message_for(exc: BaseException) -> str:
    """An exception as one line a person can act on (a RequestError names its field)."""
    if isinstance(exc, rq.RequestError):
        return str(exc)
    if isinstance(exc, OSError):
        name = f"{exc.filename}: " if exc.filename else ""
        return f"{name}{exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def error_box(parent: QWidget, title: str, message: str) -> QMessageBox:
    """A window-modal warning, opened with ``open()`` — not ``exec()``: the event loop (and a
    running generation) keep going while it is up."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, parent)
    box.setObjectName("error_box")
    box.setInformativeText("Details are in the log (Help → Open the log folder).")
    box.setWindowModality(Qt.WindowModality.WindowModal)
    box.open()
    return box
