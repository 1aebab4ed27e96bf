"""``generate --devices D1,D2,...``: one process per device in a local process group, watched by
the launcher, so that a failing or killed rank ends the whole run with one plain line."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ..engine.core import request as rq
from .console import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, fail
from .write import generate_and_write

GROUP_GRACE_S = 3.0  # after one rank fails, the others get this long to stop on their own


def launch_local_group(args: argparse.Namespace, request: rq.GenerationRequest, out: Path) -> int:
    """``--devices``: one process per device, joined in a local process group; rank 0 writes.

    The launcher watches its ranks: when one fails or dies, the others are stopped (after
    ``GROUP_GRACE_S``, then killed), and one line says what happened — the failing rank's own
    message, or which rank died — instead of every rank's traceback or a collective's timeout."""
    import multiprocessing

    from ..engine.runtime import distributed

    port = distributed.free_port()
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    reports = ctx.SimpleQueue()  # (rank, exit code, message) of members that stop on an error
    procs = [ctx.Process(target=_group_member, args=(os.getpid(), rank, args.devices, port, request.to_json(),
                                                     str(out), args.relief, args.quiet or rank > 0, reports))
             for rank in range(len(args.devices))]
    for proc in procs:
        proc.start()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the members handle Ctrl-C themselves
    try:
        codes, first = _supervise(procs)
    finally:
        signal.signal(signal.SIGINT, previous)
    messages = []
    while not reports.empty():
        messages.append(reports.get())
    if not any(codes):
        return EXIT_OK
    if messages:  # the first rank that said why (the others stopped because of it)
        rank, code, message = messages[0]
        return fail(code, message)
    rank, code = first, codes[first]
    how = f"was killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exited with code {code}"
    return fail(EXIT_ERROR, f"rank {rank} ({args.devices[rank]}) {how}; the run stopped and nothing was written")


def _supervise(procs: list[Any]) -> tuple[list[int], int]:
    """Wait for every member; once one has failed, stop the rest (terminate, then kill). Returns
    the exit codes and the index of the first member that failed (0 when none did)."""
    from multiprocessing.connection import wait

    failed_at: float | None = None
    first = 0
    terminated = False
    while any(p.exitcode is None for p in procs):
        wait([p.sentinel for p in procs if p.exitcode is None], timeout=0.2)
        if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
            failed_at = time.monotonic()
            first = next(i for i, p in enumerate(procs) if p.exitcode not in (None, 0))
        if failed_at is not None:
            late = time.monotonic() - failed_at
            for p in procs:
                if p.exitcode is None and late > 2 * GROUP_GRACE_S:
                    p.kill()
                elif p.exitcode is None and late > GROUP_GRACE_S and not terminated:
                    p.terminate()
            terminated = terminated or late > GROUP_GRACE_S
    for p in procs:
        p.join()
    return [p.exitcode for p in procs], first


def _peer_failure(exc: BaseException) -> bool:
    """A collective that failed because another rank went away (its own error is reported by it,
    or by the launcher when it died)."""
    text = str(exc).lower()
    return any(k in text for k in ("connection closed by peer", "connection reset by peer", "broken pipe",
                                   "gloo", "nccl", "timed out", "socket"))


def _leave_with_the_launcher(launcher: int, poll_s: float = 0.5) -> None:
    """A member whose launcher is gone (killed, even with SIGKILL) stops too, instead of denoising on
    for nobody.

    The launcher hands its pid to each member, so a member that starts watching only after the
    launcher died (start-up and imports take seconds on a busy machine) sees at once that its parent
    is someone else, instead of recording the new parent as the one to watch. On Linux the kernel
    also signals the member the moment its parent dies (PR_SET_PDEATHSIG), set before the check so
    that no death falls between the two; elsewhere a daemon thread polls the parent pid."""
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != launcher:
        os._exit(EXIT_INTERRUPTED)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != launcher:
                os._exit(EXIT_INTERRUPTED)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def _group_member(launcher: int, rank: int, devices: list[str], port: int, request_json: str, out: str,
                  relief: str | None, quiet: bool, reports: Any) -> None:
    _leave_with_the_launcher(launcher)  # first: before torch's import, which takes seconds
    from ..engine.runtime import distributed

    request = rq.GenerationRequest.from_json(request_json).replace(device=devices[rank])
    args = argparse.Namespace(relief=relief, quiet=quiet)
    code = EXIT_ERROR
    try:
        shard = distributed.join(rank, len(devices), port, devices[rank])
        try:
            code = generate_and_write(args, request, Path(out), shard,
                                      report=lambda c, m: reports.put((rank, c, m)))
        finally:
            distributed.leave()
    except Exception as exc:  # every failure ends as one line from the launcher
        if not _peer_failure(exc):
            reports.put((rank, EXIT_ERROR, f"error on rank {rank} ({devices[rank]}): {type(exc).__name__}: {exc}; "
                                           "the run stopped and nothing was written"))
    # The work is done and the picture written (atomically, fsynced): leave without the
    # interpreter's teardown, where a background thread of the collective library aborted the
    # process once in a fresh-clone test run ("terminate called without an active exception",
    # exit -6 after "wrote ..."), turning a finished run into a failure.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


