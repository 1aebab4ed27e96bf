"""The plan summary under the tile editor: tiles, overlap, model calls, time and memory.

It is rebuilt on every edit, and building it may touch the device (is CUDA there, how much of
its memory is free — the first such call creates a CUDA context, hundreds of ms) and lays out
the whole plan (an 8K canvas of small tiles is thousands of tiles). So it is built once per
edit, after the edits pause (``DEBOUNCE_MS``), on the job pool; each build carries a token and
a build overtaken by a newer edit is dropped when it arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from ..engine.core import request as rq
from ..engine.core.modelinfo import ModelInfo
from ..engine.core.plan import TilePlan
from .jobs import Jobs

DEBOUNCE_MS = 60  # a held arrow key sends an edit every ~30 ms: build once it settles

TOOLTIP = ("Overhead: tile pixels computed per canvas pixel. Time comes from your last run of this model on "
           "this device (or a built-in figure); memory counts the canvas buffers and weights, not activations.")


def fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


WRAP_TEXT = {"x": "left ↔ right", "y": "top ↔ bottom", "xy": "both ways"}


def _wrap_text(plan: TilePlan) -> str:
    return f" · seamless {WRAP_TEXT[plan.wrap]}" if plan.wrap != "none" else ""


def resolved_device(name: str) -> str:
    """The device type a request's ``device`` means here (``auto`` asks torch: worker threads only)."""
    if name != "auto":
        return name.split(":")[0]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Summary:
    """One build: the plan and its description, or the reason the request cannot run."""

    token: int
    request: rq.GenerationRequest | None  # None: the form itself holds no valid request
    plan: TilePlan | None = None
    html: str = ""
    error: str | None = None  # RequestError text ("field: message")
    device: str = "cpu"

    @property
    def tiles(self) -> list[tuple[int, int, int, int]]:
        return [self.plan.image_rect(t) for t in self.plan.tiles] if self.plan is not None else []


def _host_memory_text(host_bytes: int, limit: int | None) -> str:
    """The run's host-memory peak next to the device's, red when the machine or the person's
    budget (``limit``, bytes) cannot hold it (the engine then refuses the run before any work)."""
    from ..engine.runtime import memory

    available = memory.host_available()
    over = (available is not None and host_bytes > available * memory.HOST_MARGIN) \
        or (limit is not None and host_bytes > limit)
    colour = " style='color:#e5534b'" if over else ""
    room = f" of {fmt_bytes(available)} available" if available is not None else ""
    if limit is not None:
        room = f" of the {fmt_bytes(limit)} budget" + (f" ({fmt_bytes(available)} available)" if available else "")
    return f"<br><span{colour}>host ≈ {fmt_bytes(host_bytes)}{room}</span>"


def _gpu_memory_text(request: rq.GenerationRequest, info: ModelInfo) -> str:
    import torch

    from ..engine.runtime import memory

    fp = memory.footprint(request, info, "fp32" if request.dtype == "fp32" else "fp16")
    free = torch.cuda.mem_get_info()[0]
    try:
        batch = memory.choose_tile_batch(fp, free, "cuda") if request.tile_batch == "auto" else \
            int(request.tile_batch)
    except rq.RequestError as exc:
        return f"<span style='color:#e5534b'>{exc}</span>"
    colour = "" if fp.peak(batch) <= free * memory.MARGIN else " style='color:#e5534b'"
    return f"<span{colour}>GPU {fp.describe(batch)}, {fmt_bytes(free)} free</span>"


def summarise(token: int, request: rq.GenerationRequest, info: ModelInfo, speeds: dict[str, float]) -> Summary:
    """Build the plan, estimate and memory check of ``request`` (a worker thread: may query the
    device). ``speeds``: learnt seconds per model call by device type."""
    from ..engine.runtime.estimate import estimate
    from ..engine.runtime.memory import host_limit

    try:
        plan = info.plan(request)
        limit = host_limit(request)  # a malformed $PARADIFF_HOST_MEMORY is said here, by name
    except rq.RequestError as exc:
        return Summary(token, request, error=str(exc))
    device = resolved_device(request.device)
    est = estimate(request, info, speeds.get(device), device)
    rows_overlap, cols_overlap = plan.actual_overlap  # latent px, None along a single-tile axis
    overlaps = " · ".join(f"{axis} {o * plan.scale}" for axis, o in (("x", cols_overlap), ("y", rows_overlap))
                          if o is not None) or "none"
    time_text = f"≈ {fmt_seconds(est.seconds)}" if est.seconds is not None else "time known after a first run"
    mem = f"≈ {fmt_bytes(est.canvas_bytes)} canvas"
    if est.weight_bytes:
        mem += f" + {fmt_bytes(est.weight_bytes)} weights"
    if device == "cuda":
        mem = _gpu_memory_text(request, info)
    mem += _host_memory_text(est.host_bytes, limit)
    html = (f"<b>{len(plan)} tiles</b> ({plan.rows}×{plan.cols} of {plan.tile_w * plan.scale}×"
            f"{plan.tile_h * plan.scale} px) · overlap {overlaps} px{_wrap_text(plan)}<br>"
            f"overhead {plan.overhead:.2f}× · {est.total_views} model calls<br>{time_text} · {mem}")
    return Summary(token, request, plan, html, device=device)


class PlanSummary(QObject):
    """Debounced, off-thread builds of :class:`Summary`; ``ready`` carries the newest one only."""

    ready = Signal(object)  # Summary

    def __init__(self, jobs: Jobs, parent: QObject | None = None, debounce_ms: int = DEBOUNCE_MS) -> None:
        super().__init__(parent)
        self.jobs = jobs
        self.token = 0
        self.latest: Summary | None = None  # the newest build that arrived
        self._next: tuple[rq.GenerationRequest, ModelInfo, dict[str, float]] | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(debounce_ms)
        self._timer.timeout.connect(self._build)

    @property
    def pending(self) -> bool:
        """An edit is waiting for its build (or the build is under way)."""
        return self.latest is None or self.latest.token != self.token

    def request_update(self, request: rq.GenerationRequest, info: ModelInfo, speeds: dict[str, float],
                       now: bool = False) -> None:
        """Plan ``request`` once the edits pause (``now``: without waiting)."""
        self.token += 1
        self._next = (request, info, speeds)
        if now:
            self._timer.stop()
            self._build()
        else:
            self._timer.start()

    def request_update_failed(self, message: str) -> None:
        """The form holds no valid request (``message`` says why): said at once, and a build
        still under way is not shown."""
        self.token += 1
        self._next = None
        self._timer.stop()
        self._arrived(Summary(self.token, None, error=message))

    def _build(self) -> None:
        if self._next is None:
            return
        (request, info, speeds), self._next = self._next, None
        token = self.token
        self.jobs.submit(lambda: summarise(token, request, info, speeds), self._arrived)

    def _arrived(self, summary: Any) -> None:
        if summary.token != self.token:
            return  # a newer edit is on its way; showing this one would flicker back
        self.latest = summary
        self.ready.emit(summary)
