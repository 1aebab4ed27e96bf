"""Dark and light themes on the Fusion style, following the system's colour scheme.

Fusion looks the same everywhere and respects the palette, so one palette per scheme gives a
consistent, modern look on Linux, Windows and macOS; the app switches when the system does.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

ACCENT = QColor(64, 156, 255)

_STYLE = """
QGroupBox { font-weight: 600; border: 1px solid palette(mid); border-radius: 6px; margin-top: 10px;
            padding: 8px 6px 6px 6px; }
QGroupBox::title { subcontrol-origin: margin; left: 8px; padding: 0 4px; }
QLabel[role="note"] { color: palette(placeholder-text); }
QPushButton#generate { font-weight: 600; }
QPushButton#generate:enabled { background: palette(highlight); color: palette(highlighted-text);
                               border-radius: 5px; }
QDockWidget::title { padding: 4px 8px; font-weight: 600; }
"""


def _palette(dark: bool) -> QPalette:
    p = QPalette()
    if dark:
        window, base, alt, text, button, mid = "#202226", "#17181b", "#26282d", "#e6e6e6", "#2b2e33", "#3a3d44"
        disabled = "#7a7d85"
    else:
        window, base, alt, text, button, mid = "#f3f3f5", "#ffffff", "#ececef", "#1d1d1f", "#fbfbfc", "#c9cad0"
        disabled = "#9a9ba1"
    roles = {
        QPalette.ColorRole.Window: window,
        QPalette.ColorRole.WindowText: text,
        QPalette.ColorRole.Base: base,
        QPalette.ColorRole.AlternateBase: alt,
        QPalette.ColorRole.Text: text,
        QPalette.ColorRole.Button: button,
        QPalette.ColorRole.ButtonText: text,
        QPalette.ColorRole.ToolTipBase: base,
        QPalette.ColorRole.ToolTipText: text,
        QPalette.ColorRole.Mid: mid,
        QPalette.ColorRole.PlaceholderText: disabled,
        QPalette.ColorRole.BrightText: "#ff5555",
    }
    for role, colour in roles.items():
        p.setColor(role, QColor(colour))
    p.setColor(QPalette.ColorRole.Highlight, ACCENT)
    p.setColor(QPalette.ColorRole.HighlightedText, QColor("#ffffff"))
    p.setColor(QPalette.ColorRole.Link, ACCENT)
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(disabled))
    return p


def system_is_dark(app: QApplication) -> bool:
    return app.styleHints().colorScheme() == Qt.ColorScheme.Dark


def apply_theme(app: QApplication, theme: str = "system") -> None:
    """``theme``: "system" (follow it, live), "light" or "dark"."""
    app.setStyle("Fusion")
    dark = system_is_dark(app) if theme == "system" else theme == "dark"
    app.setPalette(_palette(dark))
    app.setStyleSheet(_STYLE)
    app.setProperty("paradiff_theme", "dark" if dark else "light")
    if theme == "system" and not app.property("paradiff_follows_system"):
        app.setProperty("paradiff_follows_system", True)
        app.styleHints().colorSchemeChanged.connect(lambda _s: apply_theme(app, "system"))
