"""The front ends' shared paths: building a request (engine.api.requests), opening a picture for
inspection (engine.api.inspect), the stored tile plan (TilePlan.from_dict) and the autosave folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from paradiff_gui.engine.analysis.seams import analyse
from paradiff_gui.engine.api.inspect import open_picture, score
from paradiff_gui.engine.api.requests import build_request, draw_seed, model_controls, parse_settings, request_for
from paradiff_gui.engine.core.plan import TilePlan
from paradiff_gui.engine.core.request import MAX_SEED, GenerationRequest, RequestError
from paradiff_gui.engine.io import autosave
from paradiff_gui.engine.io.export import save_image
from paradiff_gui.engine.models.info import describe_model

TERRAIN = "builtin:terrain"


def test_a_new_request_starts_from_the_models_defaults_and_draws_a_seed():
    a = build_request({"width": 256, "height": 256}, model=TERRAIN)
    b = build_request({"width": 256, "height": 256}, model=TERRAIN)
    assert (a.steps, a.sampler, a.overlap) == (8, "lcm", 64)  # builtin:terrain's own defaults
    assert 0 <= a.seed <= MAX_SEED and a.seed != b.seed  # 1 chance in 4e9 of a false failure
    assert build_request({"seed": 7}, model=TERRAIN).seed == 7


def test_a_replayed_request_keeps_its_seed_and_options_under_the_given_fields():
    base = request_for(TERRAIN, seed=123, extra={"terrain_difficulty": 80})
    again = build_request({"steps": 3}, base=base)
    assert (again.seed, again.steps, again.extra) == (123, 3, {"terrain_difficulty": 80})
    assert build_request({}, {"terrain_difficulty": "20"}, base=base).extra == {"terrain_difficulty": 20}


def test_model_controls_follow_the_models_own_table():
    info = describe_model(TERRAIN)
    assert model_controls(info, {"terrain_difficulty": "60"}) == {"terrain_difficulty": 60}
    with pytest.raises(RequestError, match=r"terrain_difficulty: must be from 1 to 100, got 101"):
        model_controls(info, {"terrain_difficulty": 101})
    with pytest.raises(RequestError, match=r"^steepness: is not an option of builtin:terrain"):
        model_controls(info, {"steepness": 3})
    with pytest.raises(RequestError, match="set: must be KEY=VALUE"):
        parse_settings(["terrain_difficulty"])
    assert parse_settings(["a=1", " b = 2 "]) == {"a": "1", "b": "2"}


def test_a_stored_requests_options_are_checked_strictly():
    from paradiff_gui.engine.api.requests import check_options

    ok = request_for(TERRAIN, extra={"terrain_difficulty": 60, "other_backend_option": "x"})
    assert check_options(ok) is ok
    for bad, needle in ((500, "must be from 1 to 100, got 500"), ("60", "must be a whole number from 1 to 100"),
                        (True, "must be a whole number")):
        with pytest.raises(RequestError, match=f"^terrain_difficulty: {needle}"):
            check_options(request_for(TERRAIN, extra={"terrain_difficulty": bad}))


def test_draw_seed_ignores_the_global_random_state():
    import random

    random.seed(0)
    first = draw_seed()
    random.seed(0)
    assert draw_seed() != first


def _picture(tmp_path, request: GenerationRequest, name="p.png", plan: TilePlan | None = None):
    plan = plan or describe_model(request.model).plan(request)
    image = np.random.default_rng(0).integers(0, 65535, (request.height, request.width), dtype=np.uint16)
    return save_image(tmp_path / name, image, request, plan, {"seconds": 1.0}), plan


def test_an_opened_picture_keeps_the_tiles_it_was_made_with(tmp_path):
    # A picture made by a version that planned differently (here: a 2x4 grid with 16 px overlap
    # for a request that today plans 128-px tiles with 64 px overlap): the plan comes from the
    # recipe, not from the request run through today's planner.
    req = request_for(TERRAIN, width=384, height=256, seed=1)
    made_with = TilePlan.create(256, 384, overlap=16, grid=(2, 4))
    path, _ = _picture(tmp_path, req, plan=made_with)
    picture = open_picture(path)
    assert picture.source == "metadata" and picture.request == req and picture.info == {"seconds": 1.0}
    assert picture.plan == made_with  # every tile, the overlap, the scale
    assert picture.plan != describe_model(TERRAIN).plan(req)
    stored = [made_with.image_rect(t) for t in made_with.tiles]
    assert score(picture) == analyse(picture.image, stored)  # scored along the stored tiles


def test_a_given_plan_wins_and_a_foreign_image_has_none(tmp_path):
    path, _ = _picture(tmp_path, request_for(TERRAIN, width=256, height=256, seed=1))
    assert open_picture(path, grid=(2, 2), overlap=32).plan.rows == 2
    Image.new("RGB", (200, 120)).save(tmp_path / "foreign.png")
    foreign = open_picture(tmp_path / "foreign.png")
    assert foreign.plan is None and foreign.request is None and foreign.tiles == []
    with pytest.raises(RequestError, match=r"^plan: the image has no Paradiff metadata"):
        score(foreign)


def test_a_recipe_from_another_version_still_gives_its_plan(tmp_path):
    import json

    from PIL import PngImagePlugin

    req = request_for(TERRAIN, width=256, height=256, seed=1)
    plan = describe_model(TERRAIN).plan(req)
    data = {"version": "9.0", "request": {**req.to_dict(), "a_future_field": 1}, "plan": plan.to_dict(), "info": {}}
    meta = PngImagePlugin.PngInfo()
    meta.add_itxt("paradiff", json.dumps(data))
    Image.new("L", (256, 256)).save(tmp_path / "future.png", pnginfo=meta)
    picture = open_picture(tmp_path / "future.png")
    assert picture.request is None and picture.plan == plan and picture.source == "metadata"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"rows": 1, "cols": 1, "scale": 1}, "needs rows, cols, scale and tiles"),
        ({"rows": 2, "cols": 1, "scale": 1, "tiles": [[0, 0, 64, 64]]}, "tiles do not make 2x1"),
        ({"rows": 1, "cols": 1, "scale": 8, "tiles": [[0, 0, 60, 64]]}, "not on the 8-px latent grid"),
        ({"rows": 1, "cols": 1, "scale": 1, "tiles": [[0, 0, 64, 999]]}, "outside the 64x64 image"),
    ],
)
def test_a_broken_stored_plan_is_named(data, needle):
    with pytest.raises(RequestError, match=needle):
        TilePlan.from_dict(data, 64, 64)


def test_autosave_has_one_folder_and_never_reuses_a_name(tmp_path, monkeypatch):
    monkeypatch.setenv("PARADIFF_AUTOSAVE_DIR", str(tmp_path / "auto"))
    assert autosave.autosave_dir() == tmp_path / "auto"
    assert autosave.pending() == []
    first = autosave.autosave_path(5)
    first.parent.mkdir()
    first.write_bytes(b"x")
    second = autosave.autosave_path(5)
    assert second != first and second.name.endswith("-seed5-2.png") and second.parent == first.parent
    assert autosave.pending() == [first]


def test_upscale_through_the_python_api_writes_each_pass(tmp_path):
    import numpy as np
    import pytest

    from paradiff_gui import engine
    from paradiff_gui.engine.io.metadata import load_request, save_png

    first = engine.generate(engine.request_for(width=128, height=128, seed=2, device="cpu"), previews=False)
    src = tmp_path / "t.png"
    save_png(src, first.image, first.request, first.plan, first.info)
    passes = engine.upscale_passes(src, 4, strength=0.5)
    assert [(p.factor, p.request.width, p.request.height) for p in passes] == [(2, 256, 256), (4, 512, 512)]
    assert [p.output.name for p in passes] == ["t-x2.png", "t-x4.png"]
    assert passes[1].request.init_image == str(passes[0].output) and passes[0].request.seed == 2
    assert passes[0].request.steps == 8  # the source's recipe
    results = engine.upscale(src, 2, strength=0.5)
    assert len(results) == 1 and results[0].image.shape == (256, 256)
    written = load_request(tmp_path / "t-x2.png")
    assert written.init_image == str(src) and written.strength == 0.5
    # The large shapes stay: averaged down to 32², the result follows its source, not another terrain.
    def shapes(a):
        k = a.shape[0] // 32
        return a.astype(float).reshape(32, k, 32, k).mean(axis=(1, 3)).ravel()

    other = engine.generate(engine.request_for(width=128, height=128, seed=3, device="cpu"), previews=False)
    kept = np.corrcoef(shapes(results[0].image), shapes(first.image))[0, 1]  # 0.93 measured
    assert kept > 0.85 and kept > np.corrcoef(shapes(results[0].image), shapes(other.image))[0, 1] + 0.4
    with pytest.raises(engine.RequestError) as e:
        engine.upscale_passes(src, 3)
    assert e.value.field == "scale"
