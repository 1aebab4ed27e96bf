"""Device and dtype resolution, with clear errors for combinations that cannot work."""

from __future__ import annotations

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
