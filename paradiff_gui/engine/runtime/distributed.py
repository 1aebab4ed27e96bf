"""One canvas over several GPUs (or processes, or machines) with ``torch.distributed``.

Every rank holds the same canvas and the same scheduler. Each step, rank r denoises the tiles
whose index ≡ r (mod world size); the ranks then add up their weighted prediction sums with one
all-reduce, and every rank takes the identical scheduler step. Noise comes from one CPU generator
seeded by the request, so all ranks draw the same numbers and stay in lockstep with no further
traffic. Rank 0 emits the events, decodes and writes the picture.

Per step, the all-reduce carries three canvas-sized float32 tensors (the weighted sum and the two
moments of the overlap consensus error) and a cancel flag: ``3·C·h·w·4 + 4`` bytes, e.g. 12.6 MB
for a 4096² SD canvas (512² latent px), 50 MB at 8192². See docs/ARCHITECTURE.md for the expected
efficiency.

Launch under ``torchrun`` (one process per GPU; the CLI picks ``cuda:$LOCAL_RANK``)::

    torchrun --nproc-per-node 4 -m paradiff_gui generate --model ... -o out.png
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint host0:29500 \\
        -m paradiff_gui generate ...

or, on one workstation, ``paradiff generate --devices cuda:0,cuda:1`` (which starts the processes
itself; ``--devices cpu,cpu`` runs two CPU processes with the gloo backend).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """This process's place in the group: ``rank`` of ``world``."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def mine(self, items: list) -> list:
        """The items (tiles) this rank computes: every world-th, starting at its rank."""
        return items[self.rank :: self.world] if self.active else items

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks, in place (a no-op alone)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def current() -> Shard:
    """The shard of this process: from an initialised default process group, else alone."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


def exchanged_bytes(channels: int, height: int, width: int) -> int:
    """Bytes each rank contributes to the all-reduce of one step (latent canvas size)."""
    return 3 * channels * height * width * 4 + 4


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: str) -> tuple[Shard, str]:
    """Join the process group torchrun describes in the environment.

    Returns the shard and the device this rank should use: ``cuda:$LOCAL_RANK`` when ``device``
    is auto or cuda (one GPU per process), else ``device`` unchanged.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return current(), f"cuda:{local}" if cuda else device


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def join(rank: int, world: int, port: int, device: str) -> Shard:
    """Join a local group of ``world`` processes (the ``--devices`` launcher's children)."""
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    return current()


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
