"""Device and dtype resolution, with clear errors for combinations that cannot work."""

from __future__ import annotations

import torch

from .request import RequestError

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
