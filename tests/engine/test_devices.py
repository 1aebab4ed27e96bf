"""The CPU pool's OS priority: the interface gets a core when it needs one (runtime.devices)."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import torch

from paradiff_gui.engine.runtime.devices import _comm, lower_pool_priority

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names and priorities: /proc")


@linux_only
def test_the_pool_threads_a_run_started_are_lowered_and_the_run_thread_is_not():
    out: dict = {}

    def run() -> None:
        me = threading.get_native_id()
        with open(f"/proc/self/task/{me}/comm", "w") as f:  # what Qt does for a named QThread
            f.write("paradiff-test")
        torch.set_num_threads(2)
        a = torch.randn(512, 512)
        for _ in range(20):  # parallel work: the OpenMP pool of this thread starts
            a = torch.tanh(a @ a)
        out["lowered"] = lower_pool_priority(10)
        pool = [int(t) for t in os.listdir("/proc/self/task") if int(t) != me and _comm(int(t)) == "paradiff-test"]
        out["pool_nice"] = [os.getpriority(os.PRIO_PROCESS, t) for t in pool]
        out["own_nice"] = os.getpriority(os.PRIO_PROCESS, me)

    threads = torch.get_num_threads()
    t = threading.Thread(target=run)
    t.start()
    t.join()
    torch.set_num_threads(threads)
    assert out["lowered"] >= 1 and out["pool_nice"] and all(n == 10 for n in out["pool_nice"])
    assert out["own_nice"] == os.getpriority(os.PRIO_PROCESS, os.getpid())  # it holds the GIL: not lowered


@linux_only
def test_the_main_thread_lowers_nothing():
    # Every thread the process started before naming its own shares the main thread's name.
    assert lower_pool_priority(10) == 0
