from __future__ import annotations

import json

import pytest
from fake_engine import FakeEngine
from PySide6.QtCore import QSettings

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.qt.window import MainWindow


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def fake():
    return FakeEngine()


@pytest.fixture
def make_window(qtbot, settings, tmp_path):
    made = []

    def make(engine=None, **kw):
        kw.setdefault("autosave_dir", tmp_path / "autosave")
        w = MainWindow(engine=engine, settings=kw.pop("settings", settings), **kw)
        qtbot.addWidget(w)
        w.resize(1280, 800)
        w.show()
        made.append(w)
        return w

    yield make
    for w in made:
        if w.bridge.running:
            w.bridge.cancel()
            w.bridge.wait(10000)
        w.jobs.shutdown()


@pytest.fixture
def window(make_window, fake):
    w = make_window(fake)
    w.panel.set_request(request_for("builtin:terrain", width=256, height=256, steps=3, seed=11))
    return w


@pytest.fixture
def sd_like(tmp_path):
    """A diffusers folder with configs only: described like SD 1.x (text, guidance, 512 px tiles)
    without any weights, so forms tests stay fast."""
    folder = tmp_path / "sd-like"
    for part, config in (("unet", {"sample_size": 64, "block_out_channels": [320, 640, 1280, 1280]}),
                         ("vae", {"block_out_channels": [128, 256, 512, 512]})):
        (folder / part).mkdir(parents=True)
        (folder / part / "config.json").write_text(json.dumps(config))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return str(folder)


@pytest.fixture
def flux_like(tmp_path):
    """A FLUX.1-dev-like diffusers folder with configs only (guidance embedded, dynamic shift, a
    16-channel VAE), described without any weights."""
    folder = tmp_path / "flux-like"
    for part, name, config in (
            ("transformer", "config.json", {"guidance_embeds": True, "num_attention_heads": 24,
                                            "attention_head_dim": 128}),
            ("scheduler", "scheduler_config.json", {"_class_name": "FlowMatchEulerDiscreteScheduler",
                                                    "use_dynamic_shifting": True}),
            ("vae", "config.json", {"block_out_channels": [128, 256, 512, 512], "latent_channels": 16})):
        (folder / part).mkdir(parents=True)
        (folder / part / name).write_text(json.dumps(config))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    return str(folder)


@pytest.fixture
def panel(qtbot, monkeypatch, tmp_path):
    """The Generate panel with a catalogue of the built-in model only and empty model folders
    (the LoRA and ControlNet forms' tests; a module may define its own)."""
    from paradiff_gui.engine.models.catalogue import ModelEntry
    from paradiff_gui.qt.forms import model as model_form
    from paradiff_gui.qt.widgets.panel import GenerationPanel

    monkeypatch.setattr(model_form, "list_models", lambda: [ModelEntry("builtin:terrain", "builtin", "shipped")])
    monkeypatch.setenv("PARADIFF_MODEL_PATH", str(tmp_path / "none"))
    p = GenerationPanel()
    qtbot.addWidget(p)
    with qtbot.waitSignal(p.models_listed, timeout=5000):
        pass
    return p


@pytest.fixture
def canvas(qtbot):
    """A shown 600x500 canvas widget."""
    from paradiff_gui.qt.widgets.canvas import CanvasWidget

    c = CanvasWidget()
    qtbot.addWidget(c)
    c.resize(600, 500)
    c.show()
    qtbot.waitExposed(c)
    return c
