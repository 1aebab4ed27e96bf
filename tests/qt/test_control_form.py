"""The ControlNet form: rows in and out of the request, add (model folders, dialogs), edit, remove,
errors named by field. What it shares with the LoRA form (greying, the limit, the menu) is tested
in test_parts_form.py."""

from __future__ import annotations

import json

import pytest
from PySide6.QtWidgets import QFileDialog

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core.control import Control
from paradiff_gui.engine.core.request import RequestError
from paradiff_gui.engine.models.info import describe_model
from paradiff_gui.qt.forms.mapping import from_request, to_request


def test_the_mapping_and_the_panel_round_trip_controls(panel, sd_like):
    req = request_for(sd_like, prompt="a castle", seed=3, tile=512, overlap=128, controls=[
        {"model": "/cn/tile", "image": "/img/source.png", "weight": 0.6, "start": 0.1, "end": 0.9,
         "preprocessor": "tile", "downscale": 4},
        {"model": "/cn/depth.safetensors", "image": "/img/depth.png"},  # preprocessor unset: stays unset
    ])
    info = describe_model(sd_like)
    assert to_request(info, from_request(info, req)) == req
    panel.set_request(req)
    rows = panel.control_form.rows
    assert [r.label.text() for r in rows] == ["tile", "depth"]
    assert (rows[0].weight.value(), rows[0].start.value(), rows[0].end.value()) == (0.6, 0.1, 0.9)
    assert rows[1].pre.currentText() == "none" and rows[1].image.text() == "depth.png"
    assert panel.request() == req
    assert panel.request().to_dict()["controls"] == req.to_dict()["controls"]


def test_add_edit_remove(panel, sd_like, qtbot, monkeypatch, tmp_path):
    panel.set_request(request_for(sd_like, prompt="a castle", seed=3))
    form = panel.control_form
    found = tmp_path / "models" / "cn-canny"
    form.refresh_found([found])
    with qtbot.waitSignal(panel.changed):
        form.found.activated.emit(1)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: ("/x/cn-tile.safetensors", ""))
    with qtbot.waitSignal(panel.changed):
        form.add_file.click()
    row = form.rows[1]
    # No image yet, and the panel has no init image: the row and the request both name the field.
    assert not row.error.isHidden() and row.error.text().startswith("image:")
    with pytest.raises(RequestError, match=r"controls\[0\]\.image"):
        panel.request()
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: ("/img/edges.png", ""))
    with qtbot.waitSignal(panel.changed):
        form.rows[0].image.click()
    with qtbot.waitSignal(panel.changed):
        form.rows[0].pre.activated.emit(form.rows[0].pre.findText("canny"))
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: ("/img/source.png", ""))
    with qtbot.waitSignal(panel.changed):
        row.image.click()
    with qtbot.waitSignal(panel.changed):
        row.weight.setValue(1.5)
    with qtbot.waitSignal(panel.changed):
        row.start.setValue(0.2)
    with qtbot.waitSignal(panel.changed):
        row.end.setValue(0.8)
    assert form.rows[0].image.text() == "edges.png" and row.error.isHidden()
    assert panel.request().controls == (
        Control(str(found), "/img/edges.png", preprocessor="canny"),
        Control("/x/cn-tile.safetensors", "/img/source.png", 1.5, 0.2, 0.8, "tile"),
    )
    # start ≥ end: named under the row and by the request.
    with qtbot.waitSignal(panel.changed):
        row.start.setValue(0.9)
    assert row.error.text().startswith("start:")
    with pytest.raises(RequestError, match=r"controls\[1\]\.start"):
        panel.request()
    row.start.setValue(0.2)
    with qtbot.waitSignal(panel.changed):
        form.rows[0].remove.click()
    assert panel.request().controls == (Control("/x/cn-tile.safetensors", "/img/source.png", 1.5, 0.2, 0.8, "tile"),)


def test_the_controlnets_in_the_model_folders_are_listed_and_nothing_else(panel, qtbot, monkeypatch, tmp_path):
    import torch
    from safetensors.torch import save_file

    models = tmp_path / "models"
    (models / "sd" / "controlnet").mkdir(parents=True)
    (models / "sd" / "model_index.json").write_text("{}")  # a pipeline: not walked into
    (models / "sd" / "controlnet" / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
    (models / "cn-depth").mkdir()
    (models / "cn-depth" / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
    (models / "vae").mkdir()
    (models / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    save_file({"control_model.input_hint_block.0.weight": torch.zeros(2)}, str(models / "cn-canny.safetensors"))
    save_file({"conv.weight": torch.zeros(2)}, str(models / "checkpoint.safetensors"))
    monkeypatch.setenv("PARADIFF_MODEL_PATH", str(models))
    form = panel.control_form
    form.scan()
    qtbot.waitUntil(lambda: form.found.count() == 3, timeout=5000)
    listed = {form.found.itemText(i): form.found.itemData(i) for i in (1, 2)}
    assert listed == {"cn-depth": str(models / "cn-depth"), "cn-canny": str(models / "cn-canny.safetensors")}


def test_long_names_do_not_widen_the_panel(panel, sd_like):
    long = "x" * 200
    panel.set_request(request_for(sd_like, controls=[{"model": f"/cn/{long}.safetensors", "image": f"/{long}.png"}]))
    assert panel.control_form.minimumSizeHint().width() <= panel.sampling_form.minimumSizeHint().width()


def test_view_control_image_draws_the_first_control_image_over_the_canvas(qtbot, window, sd_like, tmp_path):
    from PIL import Image
    from PySide6.QtCore import QPointF
    from PySide6.QtGui import QColor

    red = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(red)
    window.panel.set_request(request_for(sd_like, prompt="a castle", width=512, height=512,
                                         controls=[{"model": "/cn/tile", "image": str(red)}]))
    canvas = window.canvas
    qtbot.waitUntil(lambda: canvas.image_w == 512, timeout=5000)

    def centre() -> tuple[int, int, int]:
        img = canvas.grab().toImage()
        p = canvas.to_widget(QPointF(256, 256)) * img.devicePixelRatio()
        c = QColor(img.pixel(int(p.x()), int(p.y())))
        return c.red(), c.green(), c.blue()

    before = centre()
    assert canvas.control is None  # nothing read while the view is off
    window.act_control.setChecked(True)
    qtbot.waitUntil(lambda: canvas.control is not None, timeout=5000)
    r, g, b = centre()
    assert r > g + 60 and g < before[1] - 60 and b < before[2] - 60  # half red over what was there
    window.act_control.setChecked(False)
    assert centre() == before
    # A control without an image: nothing to draw.
    window.act_control.setChecked(True)
    window.panel.control_form.rows[0].spec = Control("/cn/tile", None)
    window.panel.changed.emit()
    assert canvas.control is None


def test_a_union_controlnet_row_shows_its_modes_and_names_a_missing_one(panel, sd_like, qtbot, tmp_path):
    union = tmp_path / "union-six"
    union.mkdir()  # controlnet-union-sdxl-1.0 knows six kinds of map (ProMax eight)
    (union / "config.json").write_text(json.dumps({"_class_name": "ControlNetUnionModel", "num_control_type": 6}))
    plain = tmp_path / "cn-depth"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
    panel.set_request(request_for(sd_like, prompt="a castle", seed=3, controls=[
        {"model": str(plain), "image": "/img/depth.png"},
        {"model": str(union), "image": "/img/depth.png", "mode": "depth"}]))
    form = panel.control_form
    a, b = form.rows
    assert a.mode.isHidden() and not b.mode.isHidden()
    assert [b.mode.itemText(i) for i in range(b.mode.count())] == ["auto", "openpose", "depth", "hed", "canny",
                                                                   "normal", "segment"]
    assert b.mode.currentText() == "depth" and b.error.isHidden()
    # auto with a ready-made map: the row names the field as the engine would.
    with qtbot.waitSignal(panel.changed):
        b.mode.activated.emit(0)
    assert b.spec.mode is None and b.error.text().startswith("mode: union-six is a union ControlNet: say which kind")
    # tile implies tile, which this model does not know.
    with qtbot.waitSignal(panel.changed):
        b.pre.activated.emit(b.pre.findText("tile"))
    assert "knows 6 kinds of map (openpose, depth, hed, canny, normal, segment), not tile" in b.error.text()
    with qtbot.waitSignal(panel.changed):
        b.mode.activated.emit(b.mode.findText("segment"))
    assert b.error.isHidden() and panel.request().controls[1].mode == "segment"
    panel.set_request(request_for(sd_like, controls=[{"model": str(plain), "image": "/x.png", "mode": "depth"}]))
    assert form.rows[0].error.text().startswith("mode: cn-depth is a single-condition ControlNet, which takes no mode")
def test_flux_takes_controlnets_and_sd3_is_greyed_with_its_reason(panel, flux_like, tmp_path):
    sd3 = tmp_path / "sd3-like"
    for part, name, config in (
            ("transformer", "config.json", {"num_attention_heads": 24, "attention_head_dim": 64, "sample_size": 128}),
            ("scheduler", "scheduler_config.json", {"_class_name": "FlowMatchEulerDiscreteScheduler"}),
            ("vae", "config.json", {"block_out_channels": [128, 256, 512, 512], "latent_channels": 16})):
        (sd3 / part).mkdir(parents=True)
        (sd3 / part / name).write_text(json.dumps(config))
    (sd3 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    control = Control("/cn/flux-canny.safetensors", "/img/edges.png", 0.7, 0.0, 0.6, "canny")
    panel.set_request(request_for(flux_like, prompt="a castle", controls=[control]))
    form = panel.control_form
    assert form.isEnabled() and form.toolTip() == ""
    assert panel.request().controls == (control,)
    panel.select_model(str(sd3), apply_defaults=True)
    assert not form.isEnabled() and panel.request().controls == ()
    assert form.toolTip() == ("sd3-like (SD3): Paradiff runs no SD3 ControlNets yet (SD 1.x/2.x, SDXL and FLUX.1 "
                              "models take them)")
    panel.select_model(flux_like, apply_defaults=True)
    assert form.isEnabled() and panel.request().controls == (control,)
