"""Reliability of a run: out-of-memory in a tile batch, and memory over many runs.

Out-of-memory is injected at the model call (the edge of the engine: a real OOM needs a GPU);
what is checked is the engine's answer to it.
"""

from __future__ import annotations

import gc
import os
import resource

import pytest
import torch
from fakes import FieldDenoiser

from paradiff_gui.engine import GenerationRequest, RequestError, generate
from paradiff_gui.engine.core import events
from paradiff_gui.engine.io.metadata import read_recipe

REQ = GenerationRequest(model="test:field", width=256, height=192, tile=96, overlap=32, steps=3, seed=2, sampler="ddim",
                        device="cpu")


class TightDenoiser(FieldDenoiser):
    """Runs out of memory on batches larger than ``fits`` tiles."""

    def __init__(self, fits: int) -> None:
        super().__init__()
        self.fits = fits

    def predict(self, x, t, tiles, cond):
        if len(tiles) > self.fits:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(tiles)} tiles (fake)")
        return super().predict(x, t, tiles, cond)


def test_out_of_memory_halves_the_batch_and_finishes_the_same_picture():
    seen: list = []
    tight = TightDenoiser(fits=3)
    result = generate(REQ.replace(tile_batch=16), seen.append, denoiser=tight)
    reference = generate(REQ.replace(tile_batch=1), denoiser=FieldDenoiser())
    assert torch.equal(result.latents, reference.latents)
    notices = [e.message for e in seen if isinstance(e, events.Notice)]
    # 12 tiles (all of them, batch 16) -> 6 -> 3, each size said once.
    assert [n.split(":")[0] for n in notices] == ["out of memory at a batch of 12 tiles",
                                                  "out of memory at a batch of 6 tiles"]
    # After the first step the smaller batch sticks: no batch above 3 tiles is retried again.
    steps_started = [i for i, e in enumerate(seen) if isinstance(e, events.StepStarted)]
    later = [len(c) for c in tight.calls[len(tight.calls) // 2 :]]
    assert max(later) <= 3 and len(steps_started) == 3
    assert result.info["tile_batch"] == 3  # the batch it ended with (the request keeps what was asked)


def test_when_one_tile_does_not_fit_the_message_says_what_to_change():
    seen: list = []
    with pytest.raises(RequestError) as e:
        generate(REQ.replace(tile_batch=4), seen.append, denoiser=TightDenoiser(fits=0))
    assert e.value.field == "tile"
    assert "one tile (96x96 px) does not fit" in e.value.message and "smaller tiles" in e.value.message
    assert isinstance(seen[-1], events.Failed) and seen[-1].kind == "request"


def test_fifty_generations_do_not_grow_resident_memory(sd_folder):
    # The tiny SD model through the real loader, 50 times: resident memory after run 10 (caches
    # warm) and after run 50 must be within 5 %.
    req = GenerationRequest(model=str(sd_folder), prompt="a castle", width=128, height=128, steps=2, seed=1,
                            device="cpu", tile_batch=4)

    def rss_mb() -> float:
        gc.collect()
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    for _ in range(10):
        generate(req)
    warm = rss_mb()
    for i in range(40):
        generate(req.replace(seed=i))
    after = rss_mb()
    assert after <= warm * 1.05, f"resident memory grew from {warm:.0f} MB to {after:.0f} MB"


class _Trap:
    """Unpickling this creates a file: what a hostile checkpoint would do (harmlessly here)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_checkpoints_never_run_code(tmp_path, monkeypatch, capsys):
    import pickle

    from paradiff_gui.cli import main

    marker = tmp_path / "pwned"
    hostile = tmp_path / "model.ckpt"
    hostile.write_bytes(pickle.dumps({"state_dict": {"w": _Trap(str(marker))}}))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PARADIFF_ALLOW_PICKLE", raising=False)
    base = ["generate", "--model", str(hostile), "--size", "512x512", "--steps", "1", "--quiet",
            "-o", str(tmp_path / "o.png")]
    # Refused by default, with the way out named.
    assert main(base) == 3
    err = capsys.readouterr().err
    assert "pickle checkpoint" in err and "--allow-pickle" in err
    # Opted in: only tensors are unpickled (weights_only=True), so the trap is refused too.
    assert main([*base, "--allow-pickle"]) == 3
    err = capsys.readouterr().err
    assert "holds more than weights" in err and "Traceback" not in err
    assert not marker.exists()
    os.environ.pop("PARADIFF_ALLOW_PICKLE", None)  # the CLI set it for this process


def test_a_plain_pickle_checkpoint_is_converted_to_safetensors(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from paradiff_gui.engine.models.sd.backend import _pickle_to_safetensors

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    plain = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"a": torch.arange(4.0), "b": torch.ones(2, 2)}, "epoch": 3}, plain)
    out = _pickle_to_safetensors(plain)
    assert out.suffix == ".safetensors" and tmp_path / "cache" in out.parents
    loaded = load_file(str(out))
    assert torch.equal(loaded["a"], torch.arange(4.0)) and set(loaded) == {"a", "b"}


def test_a_process_killed_mid_export_leaves_the_older_file_intact(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "out.png"
    target.write_bytes(b"the older file")
    script = (
        "import numpy as np, sys\n"
        "from paradiff_gui.engine.io.export import save_image\n"
        "from paradiff_gui.engine.api.requests import request_for\n"
        "from paradiff_gui.engine.models.info import describe_model\n"
        "req = request_for('builtin:terrain', width=6144, height=6144)\n"
        "img = np.random.default_rng(0).integers(0, 255, (6144, 6144, 3), dtype=np.uint8)\n"
        "print('writing', flush=True)\n"
        "save_image(sys.argv[1], img, req, describe_model(req.model).plan(req), {})\n"
        "print('done', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.5)  # well inside the seconds a 113 MB noisy PNG takes to compress
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"the older file"
    parts = [p for p in tmp_path.iterdir() if p != target]
    assert all(p.name.startswith(".out.png.") and p.suffix == ".part" for p in parts)  # only the temp file


# Targets the kernel refuses even to root (the tests run as root, which ignores permission bits):
# a folder whose parent is a file, and sysfs, where no file may be created.
UNWRITABLE = ["file/out.png"] + (["/sys/paradiff-test.png"] if os.path.isdir("/sys/kernel") else [])


@pytest.mark.parametrize("target", UNWRITABLE)
def test_the_cli_keeps_a_picture_it_cannot_write(tmp_path, monkeypatch, capsys, target):
    from paradiff_gui.cli import main

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    (tmp_path / "file").write_text("x")
    code = main(["generate", "--size", "128x128", "--steps", "1", "--seed", "3", "--quiet",
                 "-o", str(tmp_path / target)])
    err = capsys.readouterr().err
    assert code == 1 and "could not write" in err and "the picture is saved as" in err
    kept = list((tmp_path / "data").rglob("*.png"))
    assert len(kept) == 1 and read_recipe(kept[0])["request"]["seed"] == 3
