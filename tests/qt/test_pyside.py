"""The Qt binding itself: a regression of PySide6 6.12.0 would abort long generations."""

from __future__ import annotations

import sys

from PySide6.QtCore import QObject, Signal


class _Emitter(QObject):
    event = Signal(object)


def test_emitting_signals_keeps_pythons_reference_counts(qapp):
    # PySide6 6.12.0's emit() dropped a reference to True on every call; one long run emits
    # thousands of events and Python then aborts ("deallocating True or False") mid-run or at exit.
    e = _Emitter()
    e.event.connect(lambda _v: None)
    before = sys.getrefcount(True), sys.getrefcount(None)
    for _ in range(200):
        e.event.emit(None)
    assert (sys.getrefcount(True), sys.getrefcount(None)) == before
