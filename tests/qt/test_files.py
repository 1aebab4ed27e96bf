"""File actions: dialog filters from the one list of formats; an opened picture keeps (and
exports) the plan of its own recipe; the app and the CLI share one autosave folder; --size."""

from __future__ import annotations

import numpy as np

from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core.plan import TilePlan
from paradiff_gui.engine.io.export import FORMATS
from paradiff_gui.engine.io.metadata import read_recipe, save_png
from paradiff_gui.engine.models.info import describe_model
from paradiff_gui.qt import files


def test_dialog_filters_and_drops_follow_the_format_list():
    assert tuple(f.file_filter for f in FORMATS.values()) == files.EXPORT_FILTERS
    for f in FORMATS.values():
        for ext in f.extensions:
            assert f"*{ext}" in files.IMAGE_FILTER and f"*{ext}" in files.REQUEST_FILTER
            assert files.FileActions.droppable(f"x{ext.upper()}")
    assert files.FileActions.droppable("r.json") and not files.FileActions.droppable("notes.txt")


def test_an_opened_picture_exports_the_plan_it_was_made_with(qtbot, window, tmp_path):
    req = request_for("builtin:terrain", width=384, height=256, seed=3)
    # Made with other tiles than today's model plan (an older default): 2 x 2 tiles, 32 px overlap.
    made_with = TilePlan.create(256, 384, overlap=32, grid=(2, 2))
    assert made_with.to_dict() != describe_model(req.model).plan(req).to_dict()
    image = (np.random.default_rng(0).random((256, 384)) * 60000).astype(np.uint16)
    save_png(tmp_path / "old.png", image, req, made_with, {"model_name": "terrain"})
    with qtbot.waitSignal(window.result_ready, timeout=20000) as opened:
        window.open_image(str(tmp_path / "old.png"))
    assert opened.args[0].tiles == [made_with.image_rect(t) for t in made_with.tiles]
    with qtbot.waitSignal(window.exported, timeout=20000):
        window.export(str(tmp_path / "again.tif"))
    assert read_recipe(tmp_path / "again.tif")["plan"] == made_with.to_dict()


def test_the_app_autosaves_where_the_cli_does(qtbot, make_window, fake, tmp_path, monkeypatch):
    from paradiff_gui.engine.io import autosave

    monkeypatch.setenv("PARADIFF_AUTOSAVE_DIR", str(tmp_path / "shared"))
    w = make_window(fake, autosave_dir=None)
    assert w.autosave_dir == autosave.autosave_dir() == tmp_path / "shared"
    w.panel.set_request(request_for("builtin:terrain", width=128, height=128, steps=1, seed=4))
    with qtbot.waitSignal(w.autosaved, timeout=20000) as saved:
        w.generate()
    assert autosave.pending() == [tmp_path / "shared" / saved.args[0].rsplit("/", 1)[-1]]


def test_a_bad_window_size_is_a_plain_error(capsys):
    from paradiff_gui.qt.app import main

    assert main(["--size", "1600by1000"]) == 2
    err = capsys.readouterr().err
    assert "--size" in err and "WIDTHxHEIGHT" in err and "Traceback" not in err
