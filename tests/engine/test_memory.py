"""Memory planning: footprints, --tile-batch auto, and refusing what cannot fit, before any work.

The GPU path is exercised on the CPU by telling the planner how much memory is free (the only
thing it asks CUDA); the per-view figures themselves are rules of thumb that only a GPU run can
check (benchmarks/bench_gpu.py prints estimate and measurement side by side).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from paradiff_gui.cli import main
from paradiff_gui.engine.api.requests import request_for
from paradiff_gui.engine.core.modelinfo import ModelInfo
from paradiff_gui.engine.core.request import GenerationRequest, RequestError
from paradiff_gui.engine.io.metadata import read_recipe
from paradiff_gui.engine.runtime import memory
from paradiff_gui.engine.runtime.memory import GiB, choose_tile_batch, footprint
from paradiff_gui.engine.sampling import sampler as sampler_module

SD15 = ModelInfo(id="sd15", label="SD1.5", weight_bytes=4_265_000_000, weight_dtype_bytes=4, unet_channels=320)


def test_footprint_of_an_sd15_8k_canvas():
    req = GenerationRequest(model="sd15", width=8192, height=8192, tile=512, overlap=128, guidance=7.5)
    fp = footprint(req, SD15, "fp16")
    assert fp.tiles == 21 * 21 and fp.views_per_tile == 2
    assert fp.weights == 4_265_000_000 // 2  # fp32 checkpoint, run in fp16
    assert fp.per_view == 80 * 320 * 64 * 64 * 2  # 0.21 GB a view
    assert fp.canvas == 8 * 4 * 1024 * 1024 * 4
    assert fp.decode == 1350 * 1024 * 1024 * 2  # one 1024² decode tile, not the 8K picture
    # 8192² fits a 24 GiB card at tile batch 16 (the target), by this estimate.
    assert fp.peak(16) < 24 * GiB * memory.MARGIN
    batch = choose_tile_batch(fp, 24 * GiB, "cuda")
    assert fp.peak(batch) <= 24 * GiB * memory.MARGIN < fp.peak(batch + 1)


def test_auto_on_a_cpu_is_a_small_batch_and_refusals_name_the_field():
    req = GenerationRequest(model="sd15", width=1024, height=1024, tile=512, overlap=128)
    fp = footprint(req, SD15, "fp16")
    assert choose_tile_batch(fp, None, "cpu") == min(fp.tiles, memory.CPU_AUTO_BATCH)
    with pytest.raises(RequestError) as e:
        memory.check_fits(fp, 64, 8 * GiB, "cuda")
    assert e.value.field == "tile_batch" and "needs ≈" in e.value.message and "8.0 GiB free" in e.value.message
    with pytest.raises(RequestError) as e:
        choose_tile_batch(fp, 1 * GiB, "cuda")  # not even the weights fit
    assert e.value.field == "size" and "smaller" in e.value.message


def test_tile_batch_accepts_auto_and_round_trips():
    req = request_for("builtin:terrain")
    assert req.tile_batch == "auto"
    assert GenerationRequest.from_json(req.to_json()) == req
    for bad in ("many", 0, 2000, True, 2.5):
        with pytest.raises(RequestError, match="tile_batch: must be auto or a whole number from 1 to 1024"):
            req.replace(tile_batch=bad)


def test_generate_picks_the_batch_from_free_memory_and_refuses_too_much(monkeypatch):
    from paradiff_gui.engine.sampling.sampler import _tile_batch

    class OnGpu:  # only what the planner reads from a loaded backend
        device = torch.device("cuda", 0)
        dtype = torch.float16
        scale, channels, native_tile = 8, 4, 512

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * GiB, 80 * GiB))
    monkeypatch.setattr(sampler_module, "describe_model", lambda _m: SD15)
    req = GenerationRequest(model="sd15", width=4096, height=4096, tile=512, overlap=128)
    plan = SD15.plan(req)
    notices: list = []
    batch = _tile_batch(req, OnGpu(), plan, notices.append)
    fp = dataclasses.replace(footprint(req, SD15, "fp16"), weights=0)
    assert fp.peak(batch) <= 10 * GiB * memory.MARGIN < fp.peak(batch + 1)
    assert "tile batch" in notices[0].message and "10.0 GiB free" in notices[0].message
    with pytest.raises(RequestError, match="tile_batch: needs"):
        _tile_batch(req.replace(tile_batch=200), OnGpu(), plan, notices.append)


def test_cli_tile_batch_auto_is_recorded(tmp_path, capsys):
    out = tmp_path / "t.png"
    assert main(["generate", "--size", "256x128", "--steps", "1", "--seed", "1", "--tile-batch", "auto",
                 "--quiet", "-o", str(out)]) == 0
    rec = read_recipe(out)
    assert rec["request"]["tile_batch"] == "auto" and rec["info"]["tile_batch"] == min(rec["info"]["tiles"], 8)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--tile-batch", "lots", "-o", str(out)])
    assert e.value.code == 2
    assert "--tile-batch: must be auto or a whole number from 1 to 1024, got 'lots'" in capsys.readouterr().err


def _benchmarks_importable() -> None:
    import sys

    folder = str(Path(__file__).resolve().parents[2] / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)


def test_terrain_view_estimate_covers_the_measured_activations_without_wasting_half():
    """builtin:terrain's per-view figure against the live tensor bytes of a real model call,
    counted tensor by tensor (CPU; the GPU adds attention workspaces, hence the headroom)."""
    _benchmarks_importable()
    from control_memory import LiveBytes  # live operator outputs, each storage counted while it lives

    from paradiff_gui.engine.models.info import describe_model
    from paradiff_gui.engine.models.terrain import TerrainDenoiser

    den = TerrainDenoiser(torch.device("cpu"), torch.float32)
    counter = LiveBytes()
    x = torch.randn(2, 1, 128, 128).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), counter:
        den.unet(x, torch.full((2,), 20.0), torch.full((2,), 0.3))
    fp = memory.footprint(request_for("builtin:terrain"), describe_model("builtin:terrain"), "fp32")
    measured_per_view = counter.peak / 2
    assert measured_per_view < fp.per_view < 2 * measured_per_view, (measured_per_view, fp.per_view)


def test_host_memory_is_planned_and_a_canvas_the_host_cannot_hold_is_refused(monkeypatch, tmp_path, capsys):
    from paradiff_gui.cli import main
    from paradiff_gui.engine.api.requests import request_for
    from paradiff_gui.engine.core.request import RequestError
    from paradiff_gui.engine.models.info import describe_model
    from paradiff_gui.engine.runtime import memory

    info = describe_model("builtin:terrain")
    small = memory.host_footprint(request_for("builtin:terrain", width=512, height=512), info, "cpu")
    huge = memory.host_footprint(request_for("builtin:terrain", width=65536, height=65536), info, "cpu")
    # 65536² on a CPU: the float32 canvases alone are tens of GiB; on a GPU the device part leaves.
    assert small.total < 1.5 * memory.GiB and huge.total > 200 * memory.GiB
    on_gpu = memory.host_footprint(request_for("builtin:terrain", width=65536, height=65536), info, "cuda")
    assert on_gpu.device == 0 and on_gpu.total == huge.total - huge.device
    memory.check_host_fits(small, 24 * memory.GiB)
    with pytest.raises(RequestError) as e:
        memory.check_host_fits(huge, 24 * memory.GiB)
    assert e.value.field == "size" and "GiB of host memory" in e.value.message
    assert "24.0 GiB available" in e.value.message
    # The CLI refuses it before any work: no model loaded (an event, not a time bound, which a busy
    # machine broke), nothing written, exit 2.
    monkeypatch.setattr(memory, "host_available", lambda: 24 * memory.GiB)
    _no_model_loads(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--size", "65536x65536", "--device", "cpu", "-o", "huge.png", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "invalid input: size: needs ≈ 264" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def _no_model_loads(monkeypatch) -> None:
    from paradiff_gui.engine.sampling import sampler

    def load(*_a, **_k):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(sampler, "load_denoiser", load)


def test_the_host_memory_budget_is_a_request_field_or_the_environment_checked_by_name(monkeypatch):
    from paradiff_gui.engine.api.requests import request_for
    from paradiff_gui.engine.core.request import GenerationRequest, RequestError
    from paradiff_gui.engine.runtime import memory

    for bad in (0.4, 0, -1, float("nan"), 1e9, True, "8"):
        with pytest.raises(RequestError) as e:
            request_for("builtin:terrain", host_memory=bad)
        assert e.value.field == "host_memory" and "from 0.5 to 65536" in e.value.message
    r = request_for("builtin:terrain", host_memory=2)
    assert r.host_memory == 2.0 and GenerationRequest.from_json(r.to_json()) == r  # in the recipe, replayed
    monkeypatch.delenv(memory.HOST_MEMORY_ENV, raising=False)
    assert memory.host_limit(request_for("builtin:terrain")) is None
    monkeypatch.setenv(memory.HOST_MEMORY_ENV, "3.5")
    assert memory.host_limit(request_for("builtin:terrain")) == int(3.5 * memory.GiB)
    assert memory.host_limit(r) == 2 * memory.GiB  # the request's own wins
    for bad in ("lots", "0.1", "nan"):
        monkeypatch.setenv(memory.HOST_MEMORY_ENV, bad)
        with pytest.raises(RequestError) as e:
            memory.host_limit(request_for("builtin:terrain"))
        assert e.value.field == "host_memory" and "$PARADIFF_HOST_MEMORY must be" in e.value.message


def test_a_budget_below_the_smallest_plan_is_refused_with_the_smallest_that_works(monkeypatch, tmp_path, capsys):
    from paradiff_gui.cli import main
    from paradiff_gui.engine.api.requests import request_for
    from paradiff_gui.engine.models.info import describe_model
    from paradiff_gui.engine.runtime import memory

    monkeypatch.setattr(memory, "host_available", lambda: 24 * memory.GiB)
    info = describe_model("builtin:terrain")
    request = request_for("builtin:terrain", width=2048, height=2048, host_memory=0.5)
    _, smallest, _ = memory.host_plan(request, info, "cpu", "fp32", memory.host_limit(request))
    assert smallest == memory.host_footprint(request, info, "cpu", tile_batch=1)
    said = math.ceil(smallest.total / memory.GiB * 10) / 10
    _no_model_loads(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--size", "2048x2048", "--device", "cpu", "--host-memory", "0.5", "-o", "x.png",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"invalid input: host_memory: the run needs ≈ {smallest.total / memory.GiB:.1f} GiB" in err
    assert f"the budget is 0.5 GiB; the smallest budget that would work is {said:.1f} GiB" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []
    # That budget is enough: the refusal is gone (the run itself is not needed to show it)...
    memory.check_host_fits(smallest, 24 * memory.GiB, int(said * memory.GiB), smallest)
    # ... unless a tile batch fixed by the person needs more: then that field is named.
    assert main(["generate", "--size", "2048x2048", "--device", "cpu", "--host-memory", f"{said}", "--tile-batch",
                 "8", "-o", "x.png", "--quiet"]) == 2
    assert "invalid input: tile_batch: the run needs" in capsys.readouterr().err
    # The environment says the same when the flag is absent; a malformed value is named.
    monkeypatch.setenv(memory.HOST_MEMORY_ENV, "0.5")
    assert main(["generate", "--size", "2048x2048", "--device", "cpu", "-o", "x.png", "--quiet"]) == 2
    assert "host_memory: the run needs" in capsys.readouterr().err
    monkeypatch.setenv(memory.HOST_MEMORY_ENV, "half")
    assert main(["generate", "--size", "2048x2048", "--device", "cpu", "-o", "x.png", "--quiet"]) == 2
    assert "invalid input: host_memory: $PARADIFF_HOST_MEMORY must be a number of GiB" in capsys.readouterr().err


def test_on_a_cpu_the_budget_picks_the_tile_batch(monkeypatch):
    from paradiff_gui.engine import events, generate
    from paradiff_gui.engine.api.requests import request_for
    from paradiff_gui.engine.models.info import describe_model
    from paradiff_gui.engine.runtime import memory

    monkeypatch.delenv(memory.HOST_MEMORY_ENV, raising=False)
    info = describe_model("builtin:terrain")
    base = request_for("builtin:terrain", width=384, height=384, steps=1, seed=2, device="cpu")
    one, two = (memory.host_footprint(base, info, "cpu", tile_batch=b).total for b in (1, 2))
    between = (one + two) / 2 / memory.GiB  # one tile a call fits, two do not
    seen = []
    tight = generate(base.replace(host_memory=between), seen.append)
    free = generate(base)
    assert tight.info["tile_batch"] == 1 and free.info["tile_batch"] == min(tight.info["tiles"], 8) > 1
    assert any(isinstance(e, events.Notice) and "host-memory budget" in e.message for e in seen)
    # The batch never changes the picture (up to float summation order: one 16-bit level).
    assert np.abs(tight.image.astype(int) - free.image.astype(int)).max() <= 1


def test_the_controlnet_share_of_a_view_covers_the_measured_one_without_wasting_half():
    """CONTROL_VIEW_SHARE against what an SD 1.5 ControlNet adds to a 512 px view's live tensors
    (real geometry on the meta device: nothing computed; benchmarks/control_memory.py)."""
    from paradiff_gui.engine.runtime import memory

    _benchmarks_importable()
    from control_memory import control_share

    measured = control_share(xl=False, side=512)
    assert 0.1 < measured <= memory.CONTROL_VIEW_SHARE < 2 * measured, measured
