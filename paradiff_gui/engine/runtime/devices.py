"""Device and dtype resolution, with clear errors for combinations that cannot work."""

from __future__ import annotations

import os
import threading

import torch

from ..core.request import RequestError

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RequestError(
                "device", f"{name} is not available here (this torch {torch.__version__} sees no CUDA GPU); "
                "use auto or cpu"
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise RequestError("device", f"{name} does not exist; this machine has {count} CUDA GPU(s)")
    if name == "mps" and not _mps_available():
        raise RequestError("device", "mps (Apple GPU) is not available here; use auto or cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp16 on GPUs and fp32 on the CPU."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if name == "fp16" and device.type == "cpu":
        raise RequestError("dtype", "fp16 is not supported on the CPU; use fp32, bf16 or auto")
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]


# -- CPU threads ---------------------------------------------------------------------------------

_DEFAULT_TORCH_THREADS = torch.get_num_threads()
_cpu_threads: int | None = None


def set_cpu_threads(n: int | None) -> None:
    """Limit the model's CPU thread pools to ``n`` threads (None: all cores, the default).

    The desktop app uses it to keep a core free for the interface when a model runs on the
    CPU: with every core busy, the GUI thread waits for a time slice (stalls up to ~100 ms on
    2 cores). The model registry keys its cache on this limit, so a loaded backend is rebuilt
    with pools of the new size.
    """
    global _cpu_threads
    if n is not None and n < 1:
        raise ValueError(f"cpu threads must be at least 1, got {n}")
    if n == _cpu_threads:
        return
    _cpu_threads = n
    torch.set_num_threads(n or _DEFAULT_TORCH_THREADS)


def cpu_threads() -> int | None:
    """The limit set by :func:`set_cpu_threads` (None: no limit)."""
    return _cpu_threads


# -- OS priority of the compute pools ------------------------------------------------------------

def _comm(tid: int) -> str | None:
    try:
        with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def lower_pool_priority(niceness: int = 10) -> int:
    """Give the CPU threads that the calling thread's compute pools started (OpenMP, oneDNN, BLAS)
    a lower OS priority; the calling thread keeps its own. Returns how many were lowered.

    Why: on a CPU every core runs a model thread, and the interface waits for a time slice
    (stalls of 55–131 ms on 2 cores). Lowering the *calling* thread was tried and made it worse:
    it holds the GIL between ops, and the interface then waited for a preempted thread. The pool
    threads never hold the GIL, so lowering them only lets the interface (and the X server) run
    first when they need a core. Linux names a new thread after the thread that created it, so
    the pool is every other thread with the caller's name: give the caller a name of its own
    (Qt names a QThread after its objectName) before its first parallel op. Linux only; elsewhere
    (and for the main thread, whose name the whole process shares) nothing is changed.
    """
    me = threading.get_native_id()
    name = _comm(me)
    if name is None or me == os.getpid() or not hasattr(os, "setpriority"):
        return 0
    lowered = 0
    for entry in os.listdir("/proc/self/task"):
        tid = int(entry)
        if tid == me or _comm(tid) != name:
            continue
        try:
            os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), niceness))
            lowered += 1
        except OSError:  # the thread ended meanwhile
            continue
    return lowered
