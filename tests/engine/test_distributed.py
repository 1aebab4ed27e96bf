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
import torch
from PIL import Image

from paradiff_gui.cli import main
from paradiff_gui.engine.io.metadata import read_recipe
from paradiff_gui.engine.runtime.distributed import Shard, exchanged_bytes

BASE = ["--prompt", "a red castle", "--size", "256x192", "--grid", "2x3", "--overlap", "32", "--steps", "3",
        "--seed", "5", "--quiet"]


def _run(*args: str, timeout: int = 300, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_vars}
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


@pytest.fixture(scope="module")
def dit_folders(tmp_path_factory):
    from tiny import save
    from tiny_dit import tiny_flux, tiny_sd3

    root = tmp_path_factory.mktemp("dit-models")
    return {"flux": save(tiny_flux(guidance_embeds=True), root / "tiny-flux-dev"),
            "sd3": save(tiny_sd3(), root / "tiny-sd3")}


@pytest.mark.parametrize(("kind", "guidance"), [("flux", "3.5"), ("sd3", "5")])
def test_two_gloo_ranks_give_a_transformers_image_of_one_process(dit_folders, tmp_path, kind, guidance):
    """FLUX and SD3 across two ranks: jitter, canvas positions (each tile its own) and a region's
    own prompt, on 12 tiles split 6 and 6. Measured: latents within 2.4e-7 (float32 summation order), pixels"""
    args = ["--model", str(dit_folders[kind]), "--prompt", "a red castle", "--size", "192x128", "--tile", "64",
            "--overlap", "16", "--steps", "2", "--seed", "5", "--sampler", "euler", "--guidance", guidance,
            "--jitter", "--positions", "canvas", "--region", "96,0,192,128:green fog|feather=16", "--quiet"]
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    # One thread a process: these models' matrices are tiny, and two ranks of two threads each on a
    # busy 2-core machine wait for each other (this test took 130 s so, 40 s with one thread).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["generate", *args, "--device", "cpu", "-o", str(one)]) == 0
    finally:
        torch.set_num_threads(threads)
    b = _run(*args, "--devices", "cpu,cpu", "-o", str(two), OMP_NUM_THREADS="1")
    assert b.returncode == 0, b.stderr
    assert b.stderr.count("wrote ") == 1  # rank 0 alone writes and speaks
    diff = np.abs(_pixels(one) - _pixels(two))
    assert diff.max() <= 1 and diff.mean() < 1e-3, (diff.max(), diff.mean())
    assert read_recipe(two)["info"]["ranks"] == 2 and read_recipe(two)["info"]["tiles"] >= 4
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


FAULTS = str(__import__("pathlib").Path(__file__).parent / "faults")  # sitecustomize: a failing rank 1
TERRAIN = ["--size", "256x256", "--steps", "2", "--seed", "3", "--quiet"]


@pytest.mark.parametrize(("fault", "code", "line"), [
    ("error", 1, "paradiff: error on rank 1 (cpu): RuntimeError: injected failure on rank 1; the run stopped and "
                 "nothing was written"),
    ("oom", 2, "paradiff: invalid input: tile: one tile (128x128 px) does not fit in the memory of cpu"),
])
def test_a_failure_on_one_rank_ends_every_rank_with_one_message(tmp_path, fault, code, line):
    out = tmp_path / "f.png"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PARADIFF_TEST_FAULT": fault,
           "PYTHONPATH": os.pathsep.join([FAULTS, os.environ.get("PYTHONPATH", "")])}
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "paradiff_gui", "generate", *TERRAIN, "--devices", "cpu,cpu",
                        "-o", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == code, r.stderr
    assert r.stderr.count("paradiff: ") == 1 and line in r.stderr, r.stderr  # said once, by the launcher
    assert "Traceback" not in r.stderr and "gloo" not in r.stderr.lower()
    assert time.monotonic() - started < 60  # not the collective's timeout (30 min)
    assert list(tmp_path.iterdir()) == [], "nothing written"


def _members(launcher: int) -> list[int]:
    """The launcher's spawned members, in start order (rank order)."""
    kids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == launcher and b"spawn_main" in cmd and b"resource_tracker" not in cmd:
            kids.append(int(entry))
    return sorted(kids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("when", ["as_soon_as_members_exist", "while_they_denoise"])
def test_members_stop_when_the_launcher_is_killed(tmp_path, when):
    """A member must stop whenever its launcher dies: before the member has even finished starting
    (the race of a member that read its parent's pid only after its imports, and so watched init),
    and mid-run (both members past their first model call: waited for, not slept for)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if when == "while_they_denoise":
        env.update(PARADIFF_TEST_FAULT="mark", PARADIFF_TEST_MARKS=str(marks),
                   PYTHONPATH=os.pathsep.join([FAULTS, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "paradiff_gui", "generate", "--size", "256x256", "--steps", "300",
                             "--seed", "1", "--quiet", "--devices", "cpu,cpu", "-o", str(tmp_path / "k.png")],
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120  # a bound on a hang, not on speed: start-up is slow on a busy machine
    while len(_members(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = _members(proc.pid)
    assert len(members) == 2
    if when == "while_they_denoise":
        while len(list(marks.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(m.name for m in marks.iterdir()) == ["rank0", "rank1"]
    proc.kill()  # SIGKILL: the launcher runs no clean-up of its own
    proc.wait()
    killed = time.monotonic()
    # An orphan that missed its launcher's death never stops (300 steps are many minutes); one that
    # saw it is gone within its start-up or one poll. 60 s only keeps a slow machine from a false alarm.
    while any(_alive(m) for m in members) and time.monotonic() - killed < 60:
        time.sleep(0.2)
    assert not any(_alive(m) for m in members), "orphaned members kept running"
    assert not (tmp_path / "k.png").exists()


def test_a_rank_killed_mid_run_ends_the_run_with_one_plain_line(tmp_path):
    folder, marks = tmp_path / "out", tmp_path / "marks"
    folder.mkdir()
    marks.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PARADIFF_TEST_FAULT": "mark", "PARADIFF_TEST_MARKS": str(marks),
           "PYTHONPATH": os.pathsep.join([FAULTS, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "paradiff_gui", "generate", "--size", "256x256", "--steps", "300",
                             "--seed", "1", "--quiet", "--devices", "cpu,cpu", "-o", str(folder / "k.png")],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120  # a bound on a hang, not on speed
    while len(list(marks.iterdir())) < 2 and time.monotonic() < deadline:  # both ranks joined and denoising
        time.sleep(0.1)
    assert proc.poll() is None and len(list(marks.iterdir())) == 2
    ranks = _members(proc.pid)
    os.kill(ranks[1], signal.SIGKILL)
    killed = time.monotonic()
    _, err = proc.communicate(timeout=60)
    # The launcher stops the survivor itself (terminate after GROUP_GRACE_S = 3 s, kill after 6 s);
    # 10 s tells that from the collective's own timeout (30 min).
    assert time.monotonic() - killed < 10, "every rank ends within 10 s"
    assert proc.returncode == 1
    assert "paradiff: rank 1 (cpu) was killed by signal 9 (SIGKILL); the run stopped and nothing was written" in err
    assert "Traceback" not in err and "GLHF" not in err and err.count("paradiff: ") == 1, err
    assert list(folder.iterdir()) == [], "nothing written"
