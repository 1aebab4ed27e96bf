"""The exact tiled decode with its stage canvases spilled to a scratch disk (tiny VAE, CPU).

Tiny canvases spill here because the thresholds are lowered; what this proves is the mechanics
(the same picture, files gone on every path, the choice made up front), not the speed or the
memory of a real 8192² decode (benchmarks/bench_decode_memory.py measures that).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from tiny import tiny_sd

from paradiff_gui.engine.core.cancel import Cancelled
from paradiff_gui.engine.models.sd import vae as V

torch.manual_seed(0)
VAE = tiny_sd().vae


def _latent(h: int = 96, w: int = 160, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.randn(1, 4, 12, 20, generator=g), size=(h, w), mode="bicubic")


def _open_in(folder: Path) -> list[str]:
    """This process's open files in ``folder`` (as /proc shows them: unlinked ones end in "(deleted)")."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            out.append(target)
    return out


@pytest.fixture
def spill_everything(monkeypatch):
    """Every canvas spills, in bands of a few rows (so bands, halos and chunks never line up)."""
    monkeypatch.setattr(V, "SPILL_MIN_BYTES", 0)
    monkeypatch.setattr(V, "BAND_BYTES", 1 << 18)


@torch.no_grad()
@pytest.mark.parametrize("wrap", ["none", "xy"])
@pytest.mark.parametrize("recompute", [False, True])
def test_a_spilled_decode_is_the_in_memory_decode(tmp_path, spill_everything, wrap, recompute):
    z = _latent()
    kept = V.decode_synced(VAE, z, lambda d, n: None, convert=lambda a: a, wrap=wrap)
    seen: list[list[str]] = []

    def progress(done: int, total: int) -> None:
        # While it runs, the scratch files exist only as open, unlinked files: a killed process
        # leaves nothing behind in the folder.
        seen.append(_open_in(tmp_path))
        assert os.listdir(tmp_path) == []

    spilled = V.decode_synced(VAE, z, progress, convert=lambda a: a, wrap=wrap, spill=tmp_path, recompute=recompute)
    assert any(seen) and all(name.endswith("(deleted)") for names in seen for name in names)
    # Bands of a few rows change the convolutions' shapes, nothing else: float rounding.
    assert np.abs(spilled - kept).max() < 2e-4
    assert _open_in(tmp_path) == [] and os.listdir(tmp_path) == []


@torch.no_grad()
def test_the_spill_files_hold_the_canvas_exactly(tmp_path, monkeypatch):
    # With the in-memory bands (same tiles), spilling changes not one bit: the files store and
    # give back the canvases exactly.
    monkeypatch.setattr(V, "SPILL_MIN_BYTES", 0)
    z = _latent()
    kept = V.decode_synced(VAE, z, lambda d, n: None, convert=lambda a: a)
    assert np.array_equal(V.decode_synced(VAE, z, lambda d, n: None, convert=lambda a: a, spill=tmp_path), kept)


@torch.no_grad()
def test_a_spilled_encode_is_the_in_memory_encode(tmp_path, spill_everything):
    g = torch.Generator().manual_seed(2)
    img = torch.nn.functional.interpolate(torch.rand(1, 3, 24, 40, generator=g) * 2 - 1, size=(768, 1280),
                                          mode="bicubic").clamp(-1, 1)
    kept = V.encode_synced(VAE, img, lambda d, n: None)
    spilled = V.encode_synced(VAE, img, lambda d, n: None, spill=tmp_path)
    assert (spilled - kept).abs().max() < 1e-4
    assert _open_in(tmp_path) == []


@torch.no_grad()
def test_a_stopped_decode_closes_its_scratch_files(tmp_path, spill_everything):
    def stop_midway(done: int, total: int) -> None:
        if done == total // 2:
            assert _open_in(tmp_path)  # (the files are there to be closed)
            raise Cancelled()

    with pytest.raises(Cancelled):
        V.decode_synced(VAE, _latent(), stop_midway, spill=tmp_path)
    assert _open_in(tmp_path) == []


@pytest.mark.parametrize("wrap", ["none", "xy"])
@pytest.mark.parametrize("recompute", [False, True])
def test_files_close_behind_the_last_reader(tmp_path, monkeypatch, wrap, recompute):
    # Never the whole of every canvas at once: the disk's peak is what synced_disk_bytes says
    # (across a wrapped edge too, where the first rows are kept for the last band); with the
    # hidden canvases recomputed, less. (Bands of 1 MiB: small, yet never below SPILL_ROWS_MIN
    # rows, which would make them larger than BAND_BYTES.)
    monkeypatch.setattr(V, "SPILL_MIN_BYTES", 0)
    monkeypatch.setattr(V, "BAND_BYTES", 1 << 20)
    peak = [0]
    real_store = V._SpilledCanvas._store

    def store(self, y0, band):
        real_store(self, y0, band)
        used = sum(os.fstat(int(os.path.basename(p))).st_size for p in _fds_in(tmp_path))
        peak[0] = max(peak[0], used)

    V._SpilledCanvas._store = store
    try:
        with torch.no_grad():
            V.decode_synced(VAE, _latent(), lambda d, n: None, spill=tmp_path, wrap=wrap, recompute=recompute)
    finally:
        V._SpilledCanvas._store = real_store
    bound = V.synced_disk_bytes(VAE, 96, 160, torch.float32, recompute=recompute)
    assert 0 < peak[0] <= bound < V.synced_host_bytes(VAE, 96, 160, torch.float32)
    if recompute:
        assert bound < V.synced_disk_bytes(VAE, 96, 160, torch.float32)


def _fds_in(folder: Path) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder)):
                out.append(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return out


def test_sd15_stage_canvases_in_memory_and_on_disk():
    # SD1.5's VAE (its published config; shapes only, no weights) at fp16.
    with torch.device("meta"):
        sd15 = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    gb = 1e9
    assert round(V.synced_host_bytes(sd15, 512, 512, torch.float16) / gb, 1) == 17.2  # 4096²
    assert round(V.synced_host_bytes(sd15, 1024, 1024, torch.float16) / gb, 1) == 68.7  # 8192²
    # Spilled, the last block's first resnet holds its input (256 channels) and hidden canvas
    # (128) at 8192² on disk; host memory keeps two bands, and at the attention its keys and values
    # (512 channels each at 1024² latent px: 2 GiB, on the device).
    assert round((V.synced_disk_bytes(sd15, 1024, 1024, torch.float16) - 4 * V.BAND_BYTES) / gb, 1) == 51.5
    # Recomputing the hidden canvases instead: the upsampler's output (256 channels at 8192²).
    leaner = V.synced_disk_bytes(sd15, 1024, 1024, torch.float16, recompute=True)
    assert round((leaner - 4 * V.BAND_BYTES) / gb, 1) == 34.4
    assert V.synced_spill_host_bytes(sd15, 1024, 1024, torch.float16) == 2 * 2**30 + 2 * V.BAND_BYTES


def test_where_the_canvases_go_is_chosen_up_front(tmp_path, monkeypatch):
    # On a CPU (the tiny VAE here) the tiles' activations are host memory as well.
    tile = V.synced_tile_bytes(VAE, 96, 160, torch.float32)
    assert 0 < tile < V.synced_host_bytes(VAE, 96, 160, torch.float32)
    need = V.synced_host_bytes(VAE, 96, 160, torch.float32) + tile
    monkeypatch.setattr(V, "SPILL_MIN_BYTES", 0)
    monkeypatch.setattr(V, "BAND_BYTES", 1 << 18)
    monkeypatch.setattr(V, "SCRATCH_MARGIN", 0)
    spill_host = V.synced_spill_host_bytes(VAE, 96, 160, torch.float32) + tile
    disk = V.synced_disk_bytes(VAE, 96, 160, torch.float32)

    def choose(budget: int, free: int) -> V.StageStorage:
        monkeypatch.setattr(V, "host_budget", lambda: budget)
        monkeypatch.setattr(V, "disk_free", lambda folder: free)
        return V.stage_storage(VAE, 96, 160, torch.float32, folder=tmp_path)

    assert choose(need, 0).where == "memory"
    spilled = choose(need - 1, disk)
    assert spilled.where == "disk" and str(tmp_path) in spilled.describe("the exact tiled decode of 1280x768")
    leaner = V.synced_disk_bytes(VAE, 96, 160, torch.float32, recompute=True)
    tight = choose(need - 1, disk - 1)  # the disk holds the canvases only without the hidden ones
    assert tight.where == "disk" and tight.recompute and tight.disk == leaner and "twice" in tight.describe("it")
    assert not spilled.recompute
    assert choose(need - 1, leaner - 1).where == "none"  # the disk is too small
    assert choose(spill_host - 1, 10 * disk).where == "none"  # not even the bands fit
    assert "even with its canvases spilled" in choose(spill_host - 1, 10 * disk).describe("the exact tiled decode")
    said = choose(need - 1, leaner - 1).describe("the exact tiled decode of 1280x768")
    assert f"{need / 2**30:.1f} GiB of host memory" in said and "PARADIFF_SCRATCH" in said


def _in_memory(vae) -> int:
    """What the exact decode of a 1024x512 canvas needs in memory on a CPU: canvases and tiles."""
    return V.synced_host_bytes(vae, 64, 128, torch.float32) + V.synced_tile_bytes(vae, 64, 128, torch.float32)


def test_generate_spills_says_so_and_gives_the_same_picture(tmp_path, monkeypatch):
    from paradiff_gui.engine import GenerationRequest, events, generate
    from paradiff_gui.engine.models.sd.backend import SDDenoiser

    den = SDDenoiser(tiny_sd(), "tiny-sd", torch.device("cpu"), torch.float32)
    req = GenerationRequest(model="tiny", prompt="x", width=1024, height=512, tile=256, overlap=64, steps=1, seed=3,
                            device="cpu")
    kept = generate(req, denoiser=den)
    assert kept.info["decode"] == "tiled, whole-canvas GroupNorm"
    monkeypatch.setenv("PARADIFF_SCRATCH", str(tmp_path))
    monkeypatch.setattr(V, "SPILL_MIN_BYTES", 0)
    monkeypatch.setattr(V, "BAND_BYTES", 1 << 20)
    monkeypatch.setattr(V, "host_budget", lambda: _in_memory(den.vae) - 1)
    seen = []
    spilled = generate(req, seen.append, denoiser=den)
    notices = [i for i, e in enumerate(seen) if isinstance(e, events.Notice) and "spill to" in e.message]
    first_step = next(i for i, e in enumerate(seen) if isinstance(e, events.StepStarted))
    assert notices and notices[0] < first_step and str(tmp_path) in seen[notices[0]].message
    assert spilled.info["decode"] == "tiled, whole-canvas GroupNorm, stages spilled to disk"
    assert np.abs(spilled.image.astype(int) - kept.image.astype(int)).max() <= 1
    assert os.listdir(tmp_path) == [] and _open_in(tmp_path) == []


def test_a_cancel_during_a_long_decode_stops_it(tmp_path, monkeypatch):
    from paradiff_gui.engine import GenerationRequest, events, generate
    from paradiff_gui.engine.core.cancel import CancelToken
    from paradiff_gui.engine.models.sd.backend import SDDenoiser

    den = SDDenoiser(tiny_sd(), "tiny-sd", torch.device("cpu"), torch.float32)
    monkeypatch.setenv("PARADIFF_SCRATCH", str(tmp_path))
    monkeypatch.setattr(V, "SPILL_MIN_BYTES", 0)
    monkeypatch.setattr(V, "BAND_BYTES", 1 << 20)
    monkeypatch.setattr(V, "host_budget", lambda: _in_memory(den.vae) - 1)
    cancel = CancelToken()
    seen = []

    def on_event(e):
        seen.append(e)
        if isinstance(e, events.Decoding) and e.done == 3:
            cancel.cancel()

    with pytest.raises(Cancelled):
        generate(GenerationRequest(model="tiny", prompt="x", width=1024, height=512, tile=256, overlap=64, steps=1,
                                   seed=3, device="cpu"), on_event, cancel, denoiser=den)
    decoding = [e for e in seen if isinstance(e, events.Decoding)]
    assert decoding[-1].done == 3 < decoding[-1].total  # stopped at the next pass, not at the end
    assert not any(isinstance(e, events.Finished) for e in seen)
    assert _open_in(tmp_path) == []


def test_the_host_memory_budget_makes_the_decode_spill_and_the_picture_stays(tmp_path, monkeypatch):
    """The user's budget, not the machine, decides: with all the memory free, a budget that leaves
    the decode one byte less than its canvases need spills them (said up front), and the picture
    is the one kept in memory; a budget that leaves less than the spilled bands falls back to the
    per-tile decoder, said too."""
    from paradiff_gui.engine import GenerationRequest, events, generate
    from paradiff_gui.engine.core.plan import TilePlan
    from paradiff_gui.engine.models.sd.backend import SDDenoiser
    from paradiff_gui.engine.runtime import memory
    from paradiff_gui.engine.sampling.sampler import _loaded_info

    den = SDDenoiser(tiny_sd(), "tiny-sd", torch.device("cpu"), torch.float32)
    req = GenerationRequest(model="tiny", prompt="x", width=1024, height=512, tile=256, overlap=64, steps=1, seed=3,
                            device="cpu")
    monkeypatch.delenv(memory.HOST_MEMORY_ENV, raising=False)
    monkeypatch.setattr(memory, "host_available", lambda: 64 * memory.GiB)
    kept = generate(req, denoiser=den)
    assert kept.info["decode"] == "tiled, whole-canvas GroupNorm"
    monkeypatch.setenv("PARADIFF_SCRATCH", str(tmp_path))
    monkeypatch.setattr(V, "SPILL_MIN_BYTES", 0)
    monkeypatch.setattr(V, "BAND_BYTES", 1 << 20)
    # What the rest of the run holds while decoding: the budget minus this is the decode's room.
    plan = TilePlan.for_request(req, den.scale, den.native_tile)
    held = memory.host_plan(req, _loaded_info(req, den, plan), "cpu", "fp32", None)[0].held_while_decoding
    seen = []
    spilled = generate(req.replace(host_memory=(held + _in_memory(den.vae) - 1) / memory.GiB), seen.append,
                       denoiser=den)
    first_step = next(i for i, e in enumerate(seen) if isinstance(e, events.StepStarted))
    assert any(isinstance(e, events.Notice) and "spill to" in e.message for e in seen[:first_step])
    assert spilled.info["decode"] == "tiled, whole-canvas GroupNorm, stages spilled to disk"
    assert np.abs(spilled.image.astype(int) - kept.image.astype(int)).max() <= 1
    seen = []
    lean = generate(req.replace(host_memory=(held + (1 << 20)) / memory.GiB), seen.append, denoiser=den)
    assert lean.info["decode"].startswith("tiled, per-tile GroupNorm")
    first_step = next(i for i, e in enumerate(seen) if isinstance(e, events.StepStarted))
    assert any(isinstance(e, events.Notice) and "decoded tile by tile" in e.message for e in seen[:first_step])
