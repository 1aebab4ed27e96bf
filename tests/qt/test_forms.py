"""The panel's forms one by one, and the mapping between form values and the request."""

from __future__ import annotations

import pytest

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core import request as rq
from paradiff_gui.engine.core.modelinfo import ModelInfo
from paradiff_gui.engine.models.catalogue import ModelEntry
from paradiff_gui.engine.models.info import describe_model
from paradiff_gui.qt.forms import model as model_form
from paradiff_gui.qt.forms import sampling
from paradiff_gui.qt.forms.mapping import from_request, to_request
from paradiff_gui.qt.forms.options import OptionsForm
from paradiff_gui.qt.widgets.panel import GenerationPanel

TERRAIN = "builtin:terrain"


@pytest.fixture
def panel(qtbot, monkeypatch):
    # A catalogue of the built-in model only, so the result does not depend on this machine's caches.
    monkeypatch.setattr(model_form, "list_models", lambda: [ModelEntry(TERRAIN, "builtin", "shipped")])
    p = GenerationPanel()
    qtbot.addWidget(p)
    with qtbot.waitSignal(p.models_listed, timeout=5000):
        pass
    return p


def requests(sd_like: str) -> list[rq.GenerationRequest]:
    return [
        request_for(TERRAIN, width=384, height=256, overlap=32, steps=5, seed=4_000_000_000, fusion="gaussian",
                    jitter=True, global_context=0.25, tile_batch=4, device="cpu", dtype="fp32", host_memory=6.5,
                    preview="linear", extra={"terrain_difficulty": 70, "from_elsewhere": "kept"}),
        request_for(sd_like, prompt="a castle", negative_prompt="blur", width=1024, height=512, grid=(2, 3),
                    overlap=64, steps=7, guidance=5.5, sampler="euler_a", seed=9, fusion="uniform",
                    dtype="fp16", device="cuda:1", bridges="full", bridge_width=64, bridge_step="same",
                    preview="taesd"),
        request_for(sd_like, prompt="a harbour", width=1536, height=768, tile=640, overlap=160, guidance=9.0,
                    sampler="unipc", seed=0, fusion="independent", global_context=1.0),
    ]


# -- mapping ---------------------------------------------------------------------------------------


def test_the_mapping_round_trips_requests_of_text_and_non_text_models(sd_like):
    for req in requests(sd_like):
        info = describe_model(req.model)
        assert to_request(info, from_request(info, req)) == req


def test_the_panel_round_trips_requests_through_its_forms(panel, sd_like):
    for req in requests(sd_like):
        panel.set_request(req)
        assert panel.info.id == req.model
        assert panel.request() == req


def test_fields_a_model_does_not_use_are_left_at_their_neutral_value(sd_like):
    info = describe_model(TERRAIN)
    v = from_request(describe_model(sd_like), request_for(sd_like, prompt="a castle", guidance=8.0))
    req = to_request(info, v)
    assert (req.prompt, req.negative_prompt, req.guidance) == ("", "", 1.0)


def test_a_model_option_at_its_default_is_kept_only_if_the_request_named_it():
    info = describe_model(TERRAIN)
    default = info.controls[0][4]
    named = request_for(TERRAIN, extra={"terrain_difficulty": default})
    assert to_request(info, from_request(info, named)).extra == {"terrain_difficulty": default}
    assert to_request(info, from_request(info, request_for(TERRAIN))).extra == {}


def test_model_options_are_checked_against_the_model_like_the_cli_does():
    info = describe_model(TERRAIN)
    v = from_request(info, request_for(TERRAIN))
    v.controls["terrain_difficulty"] = 500
    with pytest.raises(rq.RequestError, match="terrain_difficulty"):
        to_request(info, v)
    v.controls = {"no_such_option": 1}
    with pytest.raises(rq.RequestError, match="no_such_option"):
        to_request(info, v)


def test_a_loaded_option_out_of_range_is_refused_not_clamped():
    # Shown at the nearest limit, it would silently make another picture than the recipe's.
    info = describe_model(TERRAIN)
    with pytest.raises(rq.RequestError, match=r"terrain_difficulty: must be from 1 to 100, got 500"):
        from_request(info, request_for(TERRAIN, extra={"terrain_difficulty": 500}))
    assert from_request(info, request_for(TERRAIN, extra={"terrain_difficulty": 100})).controls == {
        "terrain_difficulty": 100}


# -- limits ----------------------------------------------------------------------------------------


def test_the_host_memory_budget_is_offered_with_none_as_its_lowest_value(panel):
    f = panel.performance_form
    panel.set_request(request_for(TERRAIN, host_memory=3.0))
    assert f.host_memory.value() == 3.0 and panel.request().host_memory == 3.0
    f.host_memory.setValue(0)
    assert f.host_memory.text() == "All available" and panel.request().host_memory is None
    f.host_memory.setValue(0.3)  # below the request's least: refused by name, never raised silently
    with pytest.raises(rq.RequestError, match=r"host_memory: must be a number of GiB from 0\.5"):
        panel.request()


def test_the_preview_choice_is_offered_and_a_recipe_keeps_it(panel, sd_like):
    f = panel.performance_form.preview
    assert [f.itemText(i) for i in range(f.count())] == ["Automatic", "Linear map", "Tiny autoencoder"]
    assert [f.itemData(i) for i in range(f.count())] == list(rq.PREVIEWS)
    assert panel.request().preview == "auto"
    for choice in rq.PREVIEWS:  # a recipe's choice is shown, and comes back in the request
        panel.set_request(request_for(sd_like, prompt="a castle", preview=choice))
        assert f.currentData() == choice and panel.request().preview == choice
    f.setCurrentIndex(f.findData("linear"))  # and the person's choice goes into the request
    assert panel.request().preview == "linear"


def test_positions_are_offered_to_diffusion_transformers_alone(panel, flux_like):
    f, t, m = panel.coherence_form, panel.tiles_form, panel.sampling_form
    flux = request_for(flux_like, prompt="a harbour", width=2048, height=1024, tile=1024, overlap=256,
                       positions="canvas")
    panel.set_request(flux)
    assert f.positions.isEnabled() and f.positions.currentData() == "canvas"
    assert panel.request() == flux
    assert t.tile.singleStep() == 16  # whole 2x2 patches of the 16-channel latent
    assert [m.sampler.itemData(i) for i in range(m.sampler.count())] == ["euler"]  # dynamic shift: no Heun
    panel.set_request(request_for(TERRAIN))
    assert not f.positions.isEnabled() and panel.request().positions == "local"
    assert t.tile.singleStep() == rq.SIZE_MULTIPLE


def test_a_transformer_is_offered_the_bridges_it_can_take_and_they_place_tiles_on_the_canvas(panel, flux_like):
    f = panel.coherence_form
    panel.set_request(request_for(flux_like, prompt="a harbour", width=2048, height=1024, tile=1024, overlap=256))
    offered = {f.bridges.itemData(i) for i in range(f.bridges.count()) if f.bridges.model().item(i).isEnabled()}
    assert offered == {"off", "attention", "full"}  # no convolutions or group norms span its tiles
    assert f.positions.isEnabled() and panel.request().positions == "local"
    f.bridges.setCurrentIndex(f.bridges.findData("attention"))
    assert not f.positions.isEnabled() and "canvas positions" in f.positions.toolTip()
    req = panel.request()
    assert req.bridges == "attention" and req.positions == "canvas"
    f.bridges.setCurrentIndex(f.bridges.findData("off"))
    assert f.positions.isEnabled()
    # The UNets keep every bridge; positions mean nothing to them.
    panel.set_request(request_for(TERRAIN, bridges="halos"))
    assert all(f.bridges.model().item(i).isEnabled() for i in range(f.bridges.count()))
    assert panel.request().bridges == "halos" and not f.positions.isEnabled()


def test_no_field_can_hold_a_value_outside_the_request_limits(panel, sd_like):
    panel.set_request(request_for(sd_like))
    s, t, m, c, f = panel.size_form, panel.tiles_form, panel.sampling_form, panel.coherence_form, \
        panel.performance_form
    t.by_grid.setChecked(True)
    limits = [(s.width_, rq.MIN_SIZE, rq.MAX_SIZE), (s.height_, rq.MIN_SIZE, rq.MAX_SIZE),
              (t.tile, rq.MIN_TILE, rq.MAX_TILE), (t.rows, 1, rq.MAX_GRID), (t.cols, 1, rq.MAX_GRID),
              (t.overlap, 0, rq.MAX_OVERLAP), (m.steps, 1, rq.MAX_STEPS),
              (m.guidance, rq.MIN_GUIDANCE, rq.MAX_GUIDANCE), (m.seed, 0, rq.MAX_SEED),
              (c.global_context, 0.0, 1.0), (f.tile_batch, 0, rq.MAX_TILE_BATCH),
              (f.host_memory, 0.0, rq.MAX_HOST_MEMORY)]
    for end in (0, 1):  # every field at its lowest, then at its highest
        for widget, lo, hi in limits:
            widget.setValue(hi + 10**9 if end else lo - 10**9)
            assert widget.value() == (hi if end else lo), widget.objectName()
        panel.request()  # and the request those extremes make is valid
    assert {m.sampler.itemData(i) for i in range(m.sampler.count())} <= set(rq.SAMPLERS)
    assert [c.fusion.itemData(i) for i in range(c.fusion.count())] == list(rq.FUSIONS[::-1])
    assert [f.dtype.itemText(i) for i in range(f.dtype.count())] == list(rq.DTYPES)


# -- model-dependent forms ---------------------------------------------------------------------------


def test_the_options_form_is_rebuilt_when_the_model_changes(panel, sd_like):
    o = panel.options_form
    panel.select_model(TERRAIN)
    assert list(o.spins) == ["terrain_difficulty"]
    assert (o.spins["terrain_difficulty"].minimum(), o.spins["terrain_difficulty"].maximum()) == (1, 100)
    o.spins["terrain_difficulty"].setValue(70)
    panel.select_model(sd_like)
    assert o.spins == {} and not o.isVisibleTo(panel)
    panel.select_model(TERRAIN)
    assert o.spins["terrain_difficulty"].value() == 35 and o.isVisibleTo(panel)  # a fresh box, at the default


def test_the_options_form_builds_one_box_per_control_with_its_range_and_default(qtbot):
    o = OptionsForm()
    qtbot.addWidget(o)
    o.set_model(ModelInfo(id="x", label="x", controls=(("a", "Alpha", 0, 9, 4), ("b", "Beta", -5, 5, -1))))
    assert [(k, s.minimum(), s.maximum(), s.value()) for k, s in o.spins.items()] == [
        ("a", 0, 9, 4), ("b", -5, 5, -1)]
    assert o.spins["a"].objectName() == "a"


def test_the_sampling_and_prompt_forms_follow_the_model(panel, sd_like):
    m = panel.sampling_form
    panel.set_request(request_for(sd_like, sampler="euler"))
    assert m.guidance.isVisibleTo(panel) and panel.prompt_form.isVisibleTo(panel)
    assert [m.sampler.itemData(i) for i in range(m.sampler.count())] == list(describe_model(sd_like).samplers)
    panel.select_model(TERRAIN)
    assert not m.guidance.isVisibleTo(panel) and not panel.prompt_form.isVisibleTo(panel)
    assert [m.sampler.itemData(i) for i in range(m.sampler.count())] == list(describe_model(TERRAIN).samplers)
    assert m.sampler.currentData() == "euler"  # kept: the terrain model has it too
    panel.set_request(request_for(sd_like, sampler="heun"))
    panel.select_model(TERRAIN)
    assert m.sampler.currentData() == "lcm"  # the terrain model has no Heun: its first sampler


def test_a_fixed_tile_model_locks_the_tile_editor(panel, sd_like):
    t = panel.tiles_form
    panel.set_request(request_for(sd_like, grid=(2, 2)))
    assert t.by_grid.isEnabled() and t.rows.isEnabled() and not t.tile.isEnabled()
    panel.select_model(TERRAIN)  # tiles fixed at 128 px
    assert t.by_tile.isChecked() and not t.by_grid.isEnabled() and not t.tile.isEnabled()


# -- the other forms ---------------------------------------------------------------------------------


def test_random_and_each_unlocked_run_draw_seeds_by_the_engine_policy(panel, monkeypatch):
    drawn = iter([11, 22, 33])
    monkeypatch.setattr(sampling, "draw_seed", lambda: next(drawn))
    panel.sampling_form.seed_random.click()
    assert panel.request().seed == 11
    panel.seed_lock.setChecked(False)
    panel.prepare_run()
    assert panel.request().seed == 22
    panel.seed_lock.setChecked(True)
    panel.prepare_run()
    assert panel.request().seed == 22


def test_the_tile_editor_plans_a_picture_without_a_recipe(panel, sd_like):
    panel.set_request(request_for(sd_like, grid=(2, 3), overlap=32))
    plan = panel.editor_plan(600, 400)
    assert (plan.rows, plan.cols) == (2, 3) and plan.image_size == (600, 400)
    panel.set_request(request_for(sd_like, tile=256, overlap=64))
    plan = panel.editor_plan(600, 400)
    assert (plan.tile_w, plan.tile_h) == (256, 256) and min(plan.actual_overlap) >= 64
    panel.tiles_form.overlap.setValue(256)  # not less than the tile: no plan
    assert panel.editor_plan(600, 400) is None


def test_the_plan_fills_the_derived_half_of_the_editor_without_a_change(panel, qtbot):
    t = panel.tiles_form
    panel.set_request(request_for(TERRAIN, width=512, height=256))
    plan = panel.info.plan(panel.request())
    t.rows.setValue(1)
    with qtbot.assertNotEmitted(panel.changed):
        panel.show_plan(plan)
    assert (t.rows.value(), t.cols.value()) == (plan.rows, plan.cols) == (3, 7)


def test_a_shown_request_keeps_its_size_under_the_ratio_lock_and_moves_the_preset(panel):
    s = panel.size_form
    s.aspect_lock.setChecked(True)  # locked at 1:1
    panel.set_request(request_for(TERRAIN, width=4096, height=2048))
    assert (s.width_.value(), s.height_.value()) == (4096, 2048)
    assert s.preset.currentData() == 4096  # "4K": the long side
    s.width_.setValue(2048)  # the lock now keeps the shown 2:1
    assert s.height_.value() == 1024 and s.preset.currentData() == 2048
    s.width_.setValue(1000)
    assert s.preset.currentData() is None  # "Custom"


def test_showing_a_request_is_one_change(panel, sd_like):
    seen = []
    panel.changed.connect(lambda: seen.append(1))
    for req in requests(sd_like):  # every field differs from the one before
        panel.set_request(req)
    assert seen == [1, 1, 1]


def test_keeping_a_core_free_is_a_preference_not_part_of_the_request(panel, qtbot):
    before = panel.request()
    with qtbot.assertNotEmitted(panel.changed):
        panel.spare_core.setChecked(not panel.spare_core.isChecked())
    assert panel.request() == before
    panel.set_request(before)
    assert panel.spare_core.isChecked()  # a shown request leaves it as it was


def test_the_bridge_width_is_offered_only_to_attention_bridges(panel, sd_like):
    panel.set_request(request_for(sd_like, width=1024, height=1024))
    c = panel.coherence_form
    assert c.bridges.currentData() == "off" and not c.bridge_width.isEnabled()
    c.bridges.setCurrentIndex(c.bridges.findData("attention"))
    assert c.bridge_width.isEnabled()
    c.bridge_width.setValue(48)
    assert (panel.request().bridges, panel.request().bridge_width) == ("attention", 48)
    c.bridges.setCurrentIndex(c.bridges.findData("norms"))  # greyed: the width is not sent
    assert not c.bridge_width.isEnabled() and panel.request().bridge_width == 0
    assert [c.bridges.itemData(i) for i in range(c.bridges.count())] == list(rq.BRIDGES)


def test_bridge_values_are_offered_with_bridges_and_say_what_same_step_costs(panel, sd_like):
    panel.set_request(request_for(sd_like, width=1024, height=1024))
    c = panel.coherence_form
    assert not c.bridge_step.isEnabled() and panel.request().bridge_step == "previous"
    c.bridges.setCurrentIndex(c.bridges.findData("norms"))
    assert c.bridge_step.isEnabled()
    c.bridge_step.setCurrentIndex(c.bridge_step.findData("same"))
    assert (panel.request().bridges, panel.request().bridge_step) == ("norms", "same")
    tip = c.bridge_step.toolTip()
    assert "every tile of a step runs in one call" in tip and "memory of all the tiles" in tip
    c.bridges.setCurrentIndex(c.bridges.findData("off"))  # greyed: not sent
    assert not c.bridge_step.isEnabled() and panel.request().bridge_step == "previous"
