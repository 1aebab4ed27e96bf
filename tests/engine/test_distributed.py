"""Several ranks, one canvas: torch.distributed with the gloo backend on the CPU.

Two processes must give the image of one (up to float summation order: the ranks' partial sums
are added in a different order than one process adds its tiles), for the synchronized loop, for
jitter, and for the independent baseline; a Ctrl-C reaches every rank and nothing is written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from paradiff_gui.cli import main
from paradiff_gui.engine.io.metadata import read_recipe
from paradiff_gui.engine.runtime.distributed import Shard, exchanged_bytes

BASE = ["--prompt", "a red castle", "--size", "256x192", "--grid", "2x3", "--overlap", "32", "--steps", "3",
        "--seed", "5", "--quiet"]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "paradiff_gui", "generate", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int16)


@pytest.mark.parametrize("extra", [["--jitter", "--global-context", "0.5", "--sampler", "euler_a"],
                                   ["--fusion", "independent"],
                                   ["--jitter", "--wrap", "x", "--region", "0,0,128,192:green fog|feather=32"]],
                         ids=["synchronized", "independent", "wrapped-regions"])
def test_two_gloo_ranks_give_the_image_of_one_process(sd_folder, tmp_path, extra, capsys):
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    assert main(["generate", "--model", str(sd_folder), *BASE, *extra, "--device", "cpu", "-o", str(one)]) == 0
    b = _run("--model", str(sd_folder), *BASE, *extra, "--devices", "cpu,cpu", "-o", str(two))
    assert b.returncode == 0, b.stderr
    assert b.stderr.count("wrote ") == 1  # rank 0 alone writes and speaks
    diff = np.abs(_pixels(one) - _pixels(two))
    assert diff.max() <= 1 and diff.mean() < 1e-3, (diff.max(), diff.mean())
    assert read_recipe(two)["info"]["ranks"] == 2
    assert read_recipe(two)["request"] == read_recipe(one)["request"]


def test_ctrl_c_reaches_every_rank_and_writes_nothing(sd_folder, tmp_path):
    out = tmp_path / "never.png"
    proc = subprocess.Popen(
        [sys.executable, "-m", "paradiff_gui", "generate", "--model", str(sd_folder), "--size", "512x512",
         "--tile", "128", "--steps", "300", "--seed", "1", "--devices", "cpu,cpu", "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline, seen = time.time() + 180, ""
    while "tiles of" not in seen and time.time() < deadline:  # rank 0's plan line: models loaded
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, seen + err
    assert "interrupted; nothing was written" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_shards_split_the_tiles_and_the_exchange_is_three_canvases():
    tiles = list(range(7))
    parts = [Shard(r, 3).mine(tiles) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert Shard().mine(tiles) == tiles and not Shard().active
    # SD at 4096²: a 512² latent canvas of 4 channels, float32, three canvases + a flag.
    assert exchanged_bytes(4, 512, 512) == 12_582_916


def test_bad_devices_are_refused_with_the_field_named(tmp_path):
    r = _run("--devices", "cuda:0", "-o", str(tmp_path / "x.png"))
    assert r.returncode == 2 and "devices: give two or more" in r.stderr
    r = _run("--devices", "gpu0,gpu1", "-o", str(tmp_path / "x.png"))
    assert r.returncode == 2 and "devices: each must be cpu or cuda:N" in r.stderr
