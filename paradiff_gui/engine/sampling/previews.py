"""How much of a run live previews may take, when they are costly.

The linear preview map costs next to nothing and runs on every batch. A tiny-autoencoder decode
(models/sd/taesd.py) costs, on a CPU, about as much as the model call it follows, and previews run
on the loop's thread between model calls: unthrottled they would slow every step. So a backend
whose previews are costly says so (``den.preview_budget``: a share of the run's wall time), and
the loop decodes only the tiles this budget pays for — the tiles whose preview is oldest first, so
every tile is refreshed in turn and none is left behind; a tile not decoded keeps its last preview
in the app. On a GPU a decode is queued, not waited for (host time ≈ its launch), so there every
tile is decoded at every step.
"""

from __future__ import annotations

import time


class PreviewBudget:
    """Which tiles of a batch get a preview, so that previews take at most ``share`` of the run.

    The budget is ``share × (time since the first batch)``; what previews have cost so far is
    measured. Within it, tiles take turns: a tile is due only while it has had no more previews
    than any other tile seen so far (so the budget waits for the tiles that need it most instead of
    refreshing the same batch over and over).
    """

    def __init__(self, share: float, clock=time.perf_counter) -> None:
        self.share, self.clock = share, clock
        self.started: float | None = None
        self.spent = 0.0  # s
        self.per_tile = 0.0  # s, the last measured cost of one tile's preview
        self.made: dict[int, int] = {}  # tile index → previews made of it

    def due(self, tiles: list[int]) -> list[int]:
        """Positions in ``tiles`` (tile indices of a batch) to preview now."""
        now = self.clock()
        if self.started is None:
            self.started = now
        for i in tiles:
            self.made.setdefault(i, 0)
        fewest = min(self.made.values())
        ready = [k for k, i in enumerate(tiles) if self.made[i] == fewest]
        if self.per_tile == 0.0:  # nothing measured yet: one tile measures the cost
            return ready[:1]
        room = self.share * (now - self.started) - self.spent
        return ready[: max(0, int(room // self.per_tile))]

    def paid(self, tiles: list[int], seconds: float) -> None:
        """``tiles`` (tile indices) were previewed in ``seconds``."""
        self.spent += seconds
        if tiles:
            self.per_tile = max(seconds / len(tiles), 1e-9)
        for i in tiles:
            self.made[i] += 1
