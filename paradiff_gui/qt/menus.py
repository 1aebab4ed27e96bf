"""The window's actions, menus and toolbar: texts, shortcuts, icons, tips and the slots they call.

Built onto the window the way Qt Designer's ``setupUi`` builds a form: :func:`build_menus` sets
the ``act_*`` attributes tests and scripts use and ``menus`` (title → QMenu), where a new mode adds
its own entries with :func:`add_action` instead of growing the window.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence
from PySide6.QtWidgets import QMainWindow, QMessageBox, QStyle, QToolBar

from ..engine.io.export import FORMATS


def add_action(window: QMainWindow, text: str, slot: Any, shortcut: Any = None, icon: Any = None, tip: str = "",
               checkable: bool = False) -> QAction:
    """A window-wide action (its shortcut works wherever the focus is) calling ``slot``."""
    a = QAction(text, window)
    if shortcut is not None:
        a.setShortcuts(shortcut if isinstance(shortcut, list) else [QKeySequence(shortcut)])
    if icon is not None:
        a.setIcon(window.style().standardIcon(icon))
    if tip:
        a.setToolTip(tip)
        a.setStatusTip(tip)
    a.setCheckable(checkable)
    (a.toggled if checkable else a.triggered).connect(slot)
    window.addAction(a)
    return a


def build_menus(w: Any) -> None:
    """The actions, menu bar and toolbar of ``w`` (the MainWindow, its parts already built)."""
    sp = QStyle.StandardPixmap
    act = add_action
    w.act_generate = act(w, "&Generate", w.generate, [QKeySequence("Ctrl+Return"), QKeySequence("Ctrl+Enter")],
                         sp.SP_MediaPlay, "Generate the image (Ctrl+Enter)")
    w.act_cancel = act(w, "&Cancel", w.cancel, QKeySequence(Qt.Key.Key_Escape), sp.SP_MediaStop,
                       "Stop after the current tile batch (Esc)")
    w.act_cancel.setEnabled(False)
    w.act_open = act(w, "&Open image…", w.files.open_image_dialog, QKeySequence.StandardKey.Open,
                     sp.SP_DialogOpenButton, "Open an image to inspect its seams")
    w.act_open_request = act(w, "Open &request…", w.files.open_request_dialog, "Ctrl+Shift+O",
                             tip="Load settings from a request .json or a Paradiff image")
    w.act_save_request = act(w, "&Save request…", lambda: w.files.save_request_dialog(w.panel.request),
                             "Ctrl+Shift+S", tip="Save the current settings as a .json request")
    w.act_export = act(w, "&Export…", lambda: w.files.export_dialog(w.current), "Ctrl+E", sp.SP_DialogSaveButton,
                       "Export the picture (" + ", ".join(f.name.upper() for f in FORMATS.values())
                       + ") with its recipe")
    w.act_export.setEnabled(False)
    w.act_upscale = act(w, "&Upscale…", w.upscale_dialog, "Ctrl+U", sp.SP_ArrowUp,
                        "Upscale the picture ×2, ×4 or ×8 in image-to-image passes, each one kept (Ctrl+U)")
    w.act_upscale.setEnabled(False)
    w.act_quit = act(w, "&Quit", w.close, QKeySequence.StandardKey.Quit)
    c = w.canvas
    w.act_fit = act(w, "&Fit", c.fit, "Ctrl+0", tip="Fit the picture in the window (Ctrl+0)")
    w.act_actual = act(w, "&100 %", c.actual_size, "Ctrl+1", tip="One image pixel per screen pixel (Ctrl+1)")
    w.act_zoom_in = act(w, "Zoom &in", lambda: c.zoom_by(1.25), QKeySequence.StandardKey.ZoomIn)
    w.act_zoom_out = act(w, "Zoom &out", lambda: c.zoom_by(0.8), QKeySequence.StandardKey.ZoomOut)
    w.act_relief = act(w, "Shaded &relief", w.results.set_relief, "Ctrl+R", checkable=True,
                       tip="Show heightmaps as shaded relief; off: grey levels (Ctrl+R)")
    w.act_tiled = act(w, "Show &2×2", w.results.set_tiled, "Ctrl+T", checkable=True,
                      tip="Show the picture four times, 2×2, to check that it tiles seamlessly (Ctrl+T)")
    w.act_control = act(w, "&Control image", w.overlay.set_shown, "Ctrl+K", checkable=True,
                        tip="Draw the first ControlNet's control image over the canvas, half-transparent, where "
                            "each tile will take its crop (Ctrl+K)")
    w.act_logs = act(w, "Open the &log folder", _open_logs)
    w.act_about = act(w, "&About Paradiff", lambda: _about(w))
    w.menus = {}
    for title, actions in (
            ("&File", (w.act_open, w.act_open_request, w.act_save_request, w.act_export, None, w.act_quit)),
            ("&View", (w.act_fit, w.act_actual, w.act_zoom_in, w.act_zoom_out, None, w.act_relief, w.act_tiled,
                       w.act_control)),
            ("&Generate", (w.act_generate, w.act_cancel, None, w.act_upscale, w.act_refine)),
            ("&Select", w.refining.actions),
            ("&Help", (w.act_logs, w.act_about))):
        m = w.menus[title.replace("&", "")] = w.menuBar().addMenu(title)
        for a in actions:
            m.addSeparator() if a is None else m.addAction(a)
    tb = QToolBar("Main")
    tb.setObjectName("main_toolbar")
    tb.setMovable(False)
    tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
    for a in (w.act_generate, w.act_cancel, None, w.act_open, w.act_export, w.act_upscale, None,
              w.act_fit, w.act_actual, w.act_tiled):
        tb.addSeparator() if a is None else tb.addAction(a)
    w.toolbar = tb
    w.addToolBar(tb)
    w.addToolBar(w.refining.toolbar)  # Rectangle, Brush, its size, Mask…, Clear, Refine… (qt/refine.py)


def _open_logs() -> None:
    from .logs import log_dir

    QDesktopServices.openUrl(QUrl.fromLocalFile(str(log_dir())))


def _about(parent: QMainWindow) -> None:
    from .. import __version__

    QMessageBox.about(parent, "About Paradiff",
                      f"<b>Paradiff {__version__}</b><p>Synchronized tiled diffusion for very large images.</p>")


__all__ = ["add_action", "build_menus"]
