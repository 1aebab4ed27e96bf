"""builtin:terrain on the real bundled weights (the torch module, on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from paradiff_gui.engine import RequestError, generate
from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core import events
from paradiff_gui.engine.io.metadata import load_request, save_png

SMALL = dict(width=256, height=256, steps=2, seed=4, device="cpu")


@pytest.fixture(scope="module")
def result():
    seen: list = []
    req = request_for("builtin:terrain", prompt="ignored", **SMALL)
    return generate(req, seen.append), seen


def test_real_weights_give_a_16_bit_heightmap_with_structure(result):
    res, _ = result
    img = res.image
    assert img.dtype == np.uint16 and img.shape == (256, 256)
    assert len(res.plan) == 9 and res.plan.tile_h == 128
    # Real terrain, not noise: neighbouring heights are far more alike than random pixels.
    f = img.astype(float)
    neighbour = np.abs(np.diff(f, axis=1)).mean()
    shuffled = np.abs(np.diff(np.random.default_rng(0).permutation(f.ravel()))).mean()
    assert f.std() > 50 and neighbour < 0.2 * shuffled


def test_prompt_is_ignored_with_a_notice(result):
    _, seen = result
    notes = [e.message for e in seen if isinstance(e, events.Notice)]
    assert any("prompt is ignored" in n for n in notes)


def test_png_is_16_bit_grayscale_and_replays(result, tmp_path):
    res, _ = result
    out = save_png(tmp_path / "h.png", res.image, res.request, res.plan, res.info)
    with Image.open(out) as im:
        assert im.mode == "I;16"
        assert np.array_equal(np.asarray(im), res.image)
    again = generate(load_request(out))
    assert np.array_equal(again.image, res.image)


def test_difficulty_changes_the_terrain_and_is_validated():
    a = generate(request_for("builtin:terrain", **{**SMALL, "width": 128, "height": 128}))
    b = generate(request_for("builtin:terrain", **{**SMALL, "width": 128, "height": 128},
                                             extra={"terrain_difficulty": 90}))
    assert not np.array_equal(a.image, b.image)
    with pytest.raises(RequestError, match=r"^terrain_difficulty: must be a whole number from 1 to 100"):
        generate(request_for("builtin:terrain", **SMALL, extra={"terrain_difficulty": 0}))


@pytest.mark.parametrize(
    ("changes", "needle"),
    [({"sampler": "dpmpp_2m"}, "^sampler: builtin:terrain supports lcm, euler, ddim"),
     ({"tile": 256}, "^tile: builtin:terrain works on 128 px tiles")],
)
def test_unsupported_settings_are_refused_clearly(changes, needle):
    with pytest.raises(RequestError, match=needle):
        generate(request_for("builtin:terrain", **{**SMALL, **changes}))


def test_synchronized_tiles_beat_independent_tiles_on_the_seam_ratio():
    from paradiff_gui.engine.analysis.seams import analyse

    for seed in (0, 1, 2):
        scores = {}
        for fusion in ("independent", "cosine"):
            res = generate(request_for("builtin:terrain", width=256, height=256, steps=3,
                                                       seed=seed, fusion=fusion, device="cpu"), previews=False)
            scores[fusion] = analyse(res.image, [res.plan.image_rect(t) for t in res.plan.tiles]).seam_ratio
        assert scores["cosine"] < 0.5 * scores["independent"], (seed, scores)


def test_cpu_thread_limit_reloads_the_model_and_runs_it_on_that_many_threads():
    import torch

    from paradiff_gui.engine import TilePlan
    from paradiff_gui.engine.models.registry import load_denoiser
    from paradiff_gui.engine.runtime import devices

    req = request_for("builtin:terrain")
    before = torch.get_num_threads()
    try:
        first = load_denoiser(req, torch.device("cpu"), torch.float32)
        devices.set_cpu_threads(1)
        assert torch.get_num_threads() == 1
        limited = load_denoiser(req, torch.device("cpu"), torch.float32)
        assert limited is not first  # backends are dropped so no pool keeps its old size
        x = torch.zeros(1, 1, 128, 128)
        seen = []
        hook = limited.unet.out.register_forward_hook(lambda *a: seen.append(torch.get_num_threads()))
        try:
            cond = limited.prepare(req, TilePlan.create(128, 128, overlap=0, tile=128))
            limited.predict(x, torch.tensor(80.0), [None], cond)
        finally:
            hook.remove()
        assert seen == [1]
    finally:
        devices.set_cpu_threads(None)
    assert torch.get_num_threads() == before


def test_compile_traces_the_whole_model_and_keeps_the_picture(monkeypatch):
    """--compile works for the built-in model: one graph (fullgraph, so no part silently runs
    uncompiled), the same heightmap, and no "compile is ignored" notice. Traced with aot_eager:
    inductor's C++ build takes ~2 minutes on 2 cores; its speed is measured by bench_terrain.py."""
    from paradiff_gui.engine.models import terrain

    monkeypatch.setattr(terrain, "COMPILE_BACKEND", "aot_eager")
    small = {**SMALL, "width": 128, "height": 128}
    plain = generate(request_for("builtin:terrain", **small), previews=False)
    seen: list = []
    compiled = generate(request_for("builtin:terrain", **small, compile=True), seen.append,
                        previews=False)
    assert not any("compile" in e.message for e in seen if isinstance(e, events.Notice))
    assert compiled.request.compile and np.abs(compiled.image.astype(int) - plain.image).max() <= 1
    import torch

    from paradiff_gui.engine.models.registry import load_denoiser

    den = load_denoiser(compiled.request, torch.device("cpu"), torch.float32)  # the one that ran (cached)
    assert isinstance(den.unet, torch._dynamo.eval_frame.OptimizedModule) and den.compiled


def test_bf16_generation_runs_and_says_so():
    seen: list = []
    res = generate(request_for("builtin:terrain", **{**SMALL, "width": 128, "height": 128},
                                               dtype="bf16"), seen.append, previews=False)
    planned = next(e for e in seen if isinstance(e, events.Planned))
    assert planned.dtype == "bf16" and res.info["dtype"] == "bf16"
    full = generate(request_for("builtin:terrain", **{**SMALL, "width": 128, "height": 128}),
                    previews=False)
    # bf16 keeps 8 bits of mantissa: the same terrain (measured r = 0.997), not the same rounding.
    assert np.corrcoef(res.image.ravel(), full.image.ravel())[0, 1] > 0.95
