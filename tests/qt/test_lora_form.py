"""The LoRA form: rows in and out of the request, add (model folders, file dialog), weight, remove.
What it shares with the ControlNet form (greying, the limit, the menu) is tested in test_parts_form.py."""

from __future__ import annotations

from PySide6.QtWidgets import QFileDialog

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core.lora import LoraSpec
from paradiff_gui.engine.models.info import describe_model
from paradiff_gui.qt.forms.mapping import from_request, to_request

SHA = "ab" * 32


def test_the_mapping_and_the_panel_round_trip_loras(panel, sd_like):
    req = request_for(sd_like, prompt="a castle", seed=3, tile=512, overlap=128,
                      loras=[("/loras/style.safetensors", 0.75), {"path": "/loras/ink.safetensors", "weight": -1.5,
                                                                   "sha256": SHA}])
    info = describe_model(sd_like)
    assert to_request(info, from_request(info, req)) == req
    panel.set_request(req)
    assert [r.label.text() for r in panel.lora_form.rows] == ["style", "ink"]
    assert panel.request() == req


def test_add_weigh_remove(panel, sd_like, qtbot, monkeypatch, tmp_path):
    panel.set_request(request_for(sd_like, prompt="a castle", seed=3))
    form = panel.lora_form
    found = tmp_path / "models" / "found.safetensors"
    form.refresh_found([found])
    with qtbot.waitSignal(panel.changed):
        form.found.activated.emit(1)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: ("/x/picked.safetensors", ""))
    with qtbot.waitSignal(panel.changed):
        form.add_file.click()
    with qtbot.waitSignal(panel.changed):
        form.rows[1].weight.setValue(0.4)
    assert panel.request().loras == (LoraSpec(str(found), 1.0), LoraSpec("/x/picked.safetensors", 0.4))
    with qtbot.waitSignal(panel.changed):
        form.rows[0].remove.click()
    assert panel.request().loras == (LoraSpec("/x/picked.safetensors", 0.4),)


def test_the_loras_in_the_model_folders_are_listed_and_nothing_else(panel, qtbot, monkeypatch, tmp_path):
    import torch
    from safetensors.torch import save_file

    models = tmp_path / "models"
    (models / "sd" / "unet").mkdir(parents=True)
    (models / "sd" / "model_index.json").write_text("{}")  # a diffusers model: not walked into
    save_file({"a.lora_A.weight": torch.zeros(1, 2)}, str(models / "sd" / "unet" / "inside.safetensors"))
    (models / "loras").mkdir()
    save_file({"x.lora_down.weight": torch.zeros(1, 2), "x.lora_up.weight": torch.zeros(2, 1)},
              str(models / "loras" / "ink.safetensors"))
    save_file({"conv.weight": torch.zeros(2)}, str(models / "checkpoint.safetensors"))
    monkeypatch.setenv("PARADIFF_MODEL_PATH", str(models))
    form = panel.lora_form
    form.scan()
    qtbot.waitUntil(lambda: form.found.count() == 2, timeout=5000)
    assert form.found.itemText(1) == "ink" and form.found.itemData(1) == str(models / "loras" / "ink.safetensors")
