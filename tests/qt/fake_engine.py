"""A scriptable fake engine for GUI tests: ``generate``-shaped, emits real engine events.

It knows the real tile plan (the built-in terrain model's geometry), paints each tile's
preview a colour that encodes the tile index, honours cancel between batches, and can be told
to fail, stall, or flood previews. What it cannot prove: anything about model quality or the
real engine's timing; the end-to-end tests cover those.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from paradiff_gui.engine.core import events as ev
from paradiff_gui.engine.core.cancel import Cancelled
from paradiff_gui.engine.core.request import RequestError
from paradiff_gui.engine.models.info import describe_model


def tile_colour(index: int) -> tuple[int, int, int]:
    """A distinct RGB per tile index (so a test can tell which preview landed where)."""
    return (40 + (index * 53) % 200, 40 + (index * 97) % 200, 40 + (index * 31) % 200)


@dataclass
class FakeEngine:
    batch_seconds: float = 0.0  # time per tile batch
    previews_per_batch: int = 1  # >1 floods the bridge with repeated previews
    fail_at_step: int | None = None
    fail_message: str = "CUDA out of memory while running a tile batch (fake)"
    raise_plain: bool = False  # raise without emitting Failed (a broken backend)
    calls: list = field(default_factory=list)
    knowns: list = field(default_factory=list)  # each run's ``known`` (a refine's kept picture), else None
    batch_seen: threading.Event = field(default_factory=threading.Event)

    def __call__(self, request, on_event, cancel, known=None):
        self.calls.append(request)
        self.knowns.append(known)
        try:
            plan = describe_model(request.model).plan(request)
        except RequestError as exc:
            on_event(ev.Failed(str(exc), "request"))
            raise
        started = time.perf_counter()
        on_event(ev.Planned(request, plan, request.steps, "cpu", "fp32"))
        step = 0
        try:
            for step in range(request.steps):
                on_event(ev.StepStarted(step, request.steps, 1.0 - step / request.steps, plan))
                if self.fail_at_step == step:
                    if self.raise_plain:
                        raise RuntimeError(self.fail_message)
                    on_event(ev.Failed(self.fail_message, "runtime"))
                    raise RuntimeError(self.fail_message)
                t0 = time.perf_counter()
                batch = 4 if request.tile_batch == "auto" else request.tile_batch
                for b0 in range(0, len(plan), batch):
                    cancel.check()
                    tiles = plan.tiles[b0 : b0 + batch]
                    on_event(ev.BatchStarted(step, tuple(t.index for t in tiles)))
                    self.batch_seen.set()
                    if self.batch_seconds:
                        time.sleep(self.batch_seconds)
                    for _ in range(self.previews_per_batch):
                        for t in tiles:
                            rgb = np.empty((16, 16, 3), np.uint8)
                            rgb[...] = tile_colour(t.index)
                            on_event(ev.TilePreview(step, t.index, rgb, plan.image_rect(t)))
                on_event(ev.StepFinished(step, request.steps, time.perf_counter() - t0, 0.01))
            cancel.check()
        except Cancelled:
            on_event(ev.Cancelled(step))
            raise
        h, w = request.height, request.width
        yy, xx = np.mgrid[0:h, 0:w]
        image = ((np.sin(xx / 17.0) + np.cos(yy / 23.0) + 2) * 16000).astype(np.uint16)
        info = {"model_name": "fake", "device": "cpu", "dtype": "fp32", "tiles": len(plan)}
        on_event(ev.Finished(image, request, plan, time.perf_counter() - started, info))
