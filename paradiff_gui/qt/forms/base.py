"""What every form shares: a group box that says when its values change, and the spin box style."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QGroupBox, QSpinBox, QWidget


class Form(QGroupBox):
    """A titled group of fields. ``changed`` fires when the person edits a value, not while
    :meth:`showing` values that came from a request (the panel emits once for the whole request)."""

    changed = Signal()

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self._showing = False

    def _changed(self, *_args: object) -> None:
        if not self._showing:
            self.changed.emit()

    @contextmanager
    def showing(self) -> Iterator[None]:
        """Set widgets without reacting to them (no ``changed``, no linked-field updates)."""
        before, self._showing = self._showing, True
        try:
            yield
        finally:
            self._showing = before


def spin(lo: int, hi: int, step: int, suffix: str, name: str) -> QSpinBox:
    """An integer field limited to ``lo..hi`` (the request's own limits, so it cannot hold a value
    the request would refuse for being out of range)."""
    s = QSpinBox()
    s.setObjectName(name)
    s.setRange(lo, hi)
    s.setSingleStep(step)
    s.setSuffix(suffix)
    s.setKeyboardTracking(False)  # typing "2048" is one change, not four
    return s
