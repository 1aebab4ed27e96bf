"""The window's docks and status bar, built onto it like Qt Designer's ``setupUi``.

- the Generate dock: the panel in a scroll area, the Generate and Cancel buttons below it
  (``generate_button``, ``cancel_button``);
- the Inspect dock: the seam inspector and History as tabs (``tabs``);
- the status bar: ``status_text``, then ``step_label``, ``memory_label``, ``progress`` and
  ``zoom_label`` on the right.
"""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDockWidget,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

log = logging.getLogger(__name__)


def _dock(w: Any, title: str, name: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
    dock = QDockWidget(title, w)
    dock.setObjectName(name)
    dock.setWidget(widget)
    dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable)
    w.addDockWidget(area, dock)
    return dock


def build_docks(w: Any) -> None:
    """The Generate dock (``w.panel``) on the left, the Inspect dock (``w.seams``, ``w.history``) on the right."""
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setWidget(w.panel)
    scroll.setMinimumWidth(w.panel.sizeHint().width() + 24)
    left = QWidget()
    lay = QVBoxLayout(left)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(scroll, 1)
    w.generate_button = QPushButton("Generate")
    w.generate_button.setObjectName("generate")
    w.generate_button.setDefault(True)
    w.generate_button.setToolTip("Generate (Ctrl+Enter)")
    w.generate_button.setMinimumHeight(36)
    w.cancel_button = QPushButton("Cancel")
    w.cancel_button.setObjectName("cancel")
    w.cancel_button.setToolTip("Stop after the current tile batch (Esc)")
    w.cancel_button.setEnabled(False)
    lay.addWidget(w.generate_button)
    lay.addWidget(w.cancel_button)
    _dock(w, "Generate", "generate_dock", left, Qt.DockWidgetArea.LeftDockWidgetArea)
    w.tabs = QTabWidget()
    w.tabs.addTab(w.seams, "Seams")
    w.tabs.addTab(w.history, "History")
    _dock(w, "Inspect", "inspect_dock", w.tabs, Qt.DockWidgetArea.RightDockWidgetArea)


def build_status(w: Any) -> None:
    """The status bar's labels and progress bar; the zoom label follows the canvas."""
    sb = w.statusBar()
    w.status_text = QLabel("Ready")
    w.status_text.setObjectName("status_text")
    w.progress = QProgressBar()
    w.progress.setObjectName("progress")
    w.progress.setMaximumWidth(220)
    w.progress.setTextVisible(True)
    w.progress.setVisible(False)
    w.step_label = QLabel()
    w.step_label.setObjectName("step_label")
    w.memory_label = QLabel()
    w.memory_label.setObjectName("memory_label")
    w.zoom_label = QLabel()
    w.zoom_label.setObjectName("zoom_label")
    sb.addWidget(w.status_text, 1)
    for label in (w.step_label, w.memory_label, w.progress, w.zoom_label):
        sb.addPermanentWidget(label)
    w.canvas.view_changed.connect(lambda: w.zoom_label.setText(f"{w.canvas.device_scale() * 100:.0f} %"))


def follow_run(w: Any) -> None:
    """The status bar follows ``w.runner``'s run (an upscale pass's status says which pass)."""
    r = w.runner

    def status(text: str) -> None:
        label = w.upscaler.label()
        w.status_text.setText(f"Upscale {label} · {text}" if label else text)

    def progress(value: int, maximum: int) -> None:
        w.progress.setRange(0, maximum)
        w.progress.setValue(value)
        w.progress.setVisible(True)

    def notice(message: str) -> None:
        log.info("notice: %s", message)
        w.statusBar().showMessage(message, 8000)

    r.status.connect(status)
    r.progress.connect(progress)
    r.step_text.connect(w.step_label.setText)
    r.memory_text.connect(w.memory_label.setText)
    r.notice.connect(notice)


__all__ = ["build_docks", "build_status", "follow_run"]
