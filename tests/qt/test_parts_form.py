"""What the LoRA and ControlNet forms share (qt/forms/parts.py), checked on both: greyed with its
reason for a model that takes none (the list kept for later), the adders greyed once the list is
full, and a "from the model folders" menu whose text fits beside its buttons."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtWidgets import QStyle, QStyleOptionComboBox

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core.control import MAX_CONTROLS
from paradiff_gui.engine.core.lora import MAX_LORAS

# form attribute, request field, one part as request_for takes it, the most parts, the greyed reason
FORMS = {
    "lora": ("lora_form", "loras", ("/x/style.safetensors", 0.5), MAX_LORAS, "takes no LoRAs"),
    "control": ("control_form", "controls", {"model": "/cn/tile", "image": "/img/a.png"}, MAX_CONTROLS,
                "takes no ControlNets"),
}


@pytest.fixture(params=sorted(FORMS))
def kind(request):
    return FORMS[request.param]


def test_a_model_that_takes_none_greys_the_form_with_its_reason_and_keeps_the_list(panel, sd_like, kind):
    attr, field, part, _, reason = kind
    form = getattr(panel, attr)
    panel.set_request(request_for(sd_like, prompt="a castle", **{field: [part]}))
    parts = getattr(panel.request(), field)
    assert len(parts) == 1 and form.isEnabled() and form.toolTip() == ""
    panel.select_model("builtin:terrain", apply_defaults=True)
    assert not form.isEnabled() and reason in form.toolTip() and getattr(panel.request(), field) == ()
    assert form.specs() == parts  # kept for a model that takes them
    panel.select_model(sd_like, apply_defaults=True)
    assert form.isEnabled() and form.toolTip() == "" and getattr(panel.request(), field) == parts


def test_a_full_list_greys_the_adders(panel, sd_like, kind):
    attr, _, _, most, _ = kind
    form = getattr(panel, attr)
    panel.select_model(sd_like, apply_defaults=True)
    form.refresh_found([Path("/m/found.safetensors")])
    assert form.found.isEnabled() and all(b.isEnabled() for b in form.adders) and form.adders
    for i in range(most + 1):  # one more than it takes: refused
        form.add(f"/x/p{i}.safetensors")
    assert len(form.rows) == most
    assert not form.found.isEnabled() and not any(b.isEnabled() for b in form.adders)
    form.rows[0].remove.click()
    assert len(form.rows) == most - 1 and form.found.isEnabled() and all(b.isEnabled() for b in form.adders)


def _fits(combo) -> bool:
    opt = QStyleOptionComboBox()
    combo.initStyleOption(opt)
    field = combo.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, opt,
                                         QStyle.SubControl.SC_ComboBoxEditField, combo)
    return combo.fontMetrics().horizontalAdvance(combo.currentText()) <= field.width()


def test_the_menu_text_fits_and_its_tooltip_says_where_it_looked(panel, sd_like, qtbot, kind):
    attr = kind[0]
    form = getattr(panel, attr)
    panel.resize(panel.sizeHint())  # the app's dock is at least this wide
    panel.show()
    qtbot.waitExposed(panel)
    for model in (sd_like, "builtin:terrain"):  # greyed too
        panel.select_model(model, apply_defaults=True)
        form.refresh_found([])
        assert form.found.count() == 1 and not form.found.isEnabled()
        assert _fits(form.found), form.found.currentText()
        assert "No " in form.found.toolTip() and "$PARADIFF_MODEL_PATH" in form.found.toolTip()
        form.refresh_found([Path("/m/found.safetensors")])
        assert _fits(form.found), form.found.currentText()
        assert form.found.itemText(1) == "found" and form.found.itemData(1) == "/m/found.safetensors"
