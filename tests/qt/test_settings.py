"""Persisted settings: a restored window is never smaller than its panel needs; relief (the
default for heightmaps) and grey levels are one remembered click apart."""

from __future__ import annotations

from PySide6.QtWidgets import QMainWindow

from paradiff_gui.qt.settings import AppSettings
from paradiff_gui.qt.window import MIN_CANVAS


def test_a_window_saved_tiny_is_restored_at_least_as_large_as_its_panel_needs(qtbot, make_window, settings, fake):
    tiny = QMainWindow()  # a geometry from a small screen, or a window shrunk before docks existed
    qtbot.addWidget(tiny)
    tiny.resize(320, 200)
    settings.setValue("window/geometry", tiny.saveGeometry())
    w = make_window(fake)
    AppSettings(settings).restore_window(w, w._minimum_restored_size())
    # Both docks side by side with the panel unsqueezed, and a canvas worth looking at.
    needed = w.panel.sizeHint().width() + 24 + w.tabs.minimumSizeHint().width() + MIN_CANVAS.width()
    assert w.width() >= needed and w.height() >= MIN_CANVAS.height()


def test_heightmaps_show_in_relief_by_default_and_grey_levels_are_remembered(qtbot, make_window, settings, fake):
    from paradiff_gui.engine.api.requests import request_for

    w = make_window(fake)
    assert w.act_relief.isChecked()  # a first start: relief
    w.panel.set_request(request_for("builtin:terrain", width=256, height=256, steps=2, seed=3))
    previews: list = []
    w.bridge.previews.connect(previews.extend)
    with qtbot.waitSignal(w.result_ready, timeout=20000) as shown:
        w.generate()
    pixel = shown.args[0].layer.arrays[0][128, 128, :3]
    assert len(set(pixel.tolist())) > 1  # tinted relief, not a grey level (B = G = R)
    # The fake paints tile 0's preview grey (40, 40, 40); as relief it is tinted like the picture.
    tile0 = [p.rgb for p in previews if p.tile == 0][-1]
    assert len(set(tile0[0, 0].tolist())) > 1
    w.act_relief.trigger()  # one click: grey levels
    qtbot.waitUntil(lambda: len(set(w.current.layer.arrays[0][128, 128, :3].tolist())) == 1, timeout=20000)
    w.close()
    assert settings.value("view/relief", type=bool) is False
    w2 = make_window(fake)
    assert not w2.act_relief.isChecked() and not w2.relief
