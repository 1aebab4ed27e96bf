"""The window with the real engine (tiny SD model, built-in terrain model), and the scripted
``paradiff-gui`` command in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core.request import GenerationRequest
from paradiff_gui.engine.io.metadata import read_recipe


def test_real_engine_on_a_tiny_sd_model(qtbot, make_window, sd_folder, tmp_path):
    w = make_window()  # the real engine
    w.panel.add_model(str(sd_folder))
    w.panel.set_request(GenerationRequest(model=str(sd_folder), prompt="a red castle", width=256, height=192,
                                          grid=(2, 2), overlap=16, steps=2, seed=5, device="cpu"))
    previews: list = []
    w.bridge.previews.connect(previews.extend)
    with qtbot.waitSignal(w.result_ready, timeout=120000) as blocker:
        assert w.generate()
    result = blocker.args[0]
    assert result.image.shape == (192, 256, 3) and result.image.dtype == np.uint8
    assert {p.tile for p in previews} == {0, 1, 2, 3}
    with qtbot.waitSignal(w.exported, timeout=20000):
        w.export(str(tmp_path / "castle.png"))
    assert read_recipe(tmp_path / "castle.png")["request"]["prompt"] == "a red castle"


def test_real_engine_on_the_builtin_terrain_model_and_cancel(qtbot, make_window):
    w = make_window()
    w.panel.set_request(request_for("builtin:terrain", width=256, height=128, steps=2, seed=3))
    with qtbot.waitSignal(w.result_ready, timeout=120000) as blocker:
        assert w.generate()
    assert blocker.args[0].image.dtype == np.uint16
    # A real cancel: stops within a tile batch and leaves the app ready.
    w.panel.set_request(w.panel.request().replace(steps=50, tile_batch=1))
    w.generate()
    qtbot.waitUntil(lambda: w.progress.maximum() == 50, timeout=60000)
    with qtbot.waitSignal(w.run_ended, timeout=30000) as ended:
        w.cancel()
    assert ended.args == ["cancelled"]
    qtbot.waitUntil(lambda: w.generate_button.isEnabled())


def _env(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QT_API="pyside6", HF_HUB_OFFLINE="1",
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"),
               XDG_DATA_HOME=str(tmp_path / "data"))
    env.pop("PARADIFF_ALLOW_DOWNLOAD", None)
    return env


def test_scripted_mode_runs_screenshots_exports_and_exits_zero(tmp_path):
    req = tmp_path / "r.json"
    req.write_text(request_for("builtin:terrain", width=128, height=128, steps=1, seed=2).to_json())
    shot, out = tmp_path / "shot.png", tmp_path / "out.png"
    proc = subprocess.run(
        [sys.executable, "-m", "paradiff_gui.qt.app", "--request", str(req), "--autorun", "--screenshot", str(shot),
         "--export", str(out), "--quit-when-done", "--stats", "--size", "1200x800"],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with Image.open(shot) as im:
        assert im.size[0] >= 1200 and im.size[1] >= 800
    assert read_recipe(out)["request"]["seed"] == 2
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["outcome"] == "finished" and stats["previews"] > 0
    logs = list((tmp_path / "state").rglob("paradiff-gui.log"))
    assert logs, "the GUI logs under the user's log directory"


def test_scripted_mode_reports_a_bad_request_on_stderr(tmp_path):
    req = tmp_path / "bad.json"
    req.write_text(json.dumps({"model": "builtin:terrain", "width": 100, "height": 128}))
    proc = subprocess.run([sys.executable, "-m", "paradiff_gui.qt.app", "--request", str(req), "--autorun",
                           "--quit-when-done"], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "width" in proc.stderr and "multiple of 8" in proc.stderr
    assert "Traceback" not in proc.stderr
