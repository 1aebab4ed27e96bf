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

PROBE = 8  # latent px a side of the decode that measures what a preview costs


class PreviewBudget:
    """Which tiles of a batch get a preview, so that previews take at most ``share`` of the run.

    The budget is ``share × (time since the first batch)``; what previews have cost so far is
    measured. A preview's cost grows with its latent pixels, so it is kept per latent pixel, and
    the first measure comes from a :data:`PROBE`-sized corner of one tile (:meth:`measured`):
    a whole tile's decode, the first one included, runs only once the budget covers it. (A first
    whole decode to find out would, on a CPU, be a whole model call's worth of time before the
    budget has earned any.) Within the budget, tiles take turns: a tile is due only while it has
    had no more previews than any other tile seen so far (so the budget waits for the tiles that
    need it most instead of refreshing the same batch over and over).
    """

    def __init__(self, share: float, clock=time.perf_counter) -> None:
        self.share, self.clock = share, clock
        self.started: float | None = None
        self.spent = 0.0  # s
        self.per_px: float | None = None  # s per latent px of a preview, as last measured; None: not yet
        self.made: dict[int, int] = {}  # tile index → previews made of it

    @property
    def needs_probe(self) -> bool:
        """Nothing measured yet: the caller decodes a :data:`PROBE`-sized corner and says :meth:`measured`."""
        return self.per_px is None

    def due(self, tiles: list[int], pixels: int) -> list[int]:
        """Positions in ``tiles`` (tile indices of a batch, ``pixels`` latent px each) to preview now."""
        now = self.clock()
        if self.started is None:
            self.started = now
        for i in tiles:
            self.made.setdefault(i, 0)
        if self.per_px is None:
            return []
        fewest = min(self.made.values())
        ready = [k for k, i in enumerate(tiles) if self.made[i] == fewest]
        room = self.share * (now - self.started) - self.spent
        return ready[: max(0, int(room // (self.per_px * pixels)))]

    def measured(self, pixels: int, seconds: float) -> None:
        """A probe of ``pixels`` latent px (shown to no one) took ``seconds``. Its fixed costs
        are spread over its few pixels, so a tile's first cost is overestimated, never under."""
        self.spent += seconds
        self.per_px = max(seconds / pixels, 1e-12)

    def paid(self, tiles: list[int], pixels: int, seconds: float) -> None:
        """``tiles`` (tile indices, ``pixels`` latent px each) were previewed in ``seconds``."""
        self.spent += seconds
        if tiles:
            self.per_px = max(seconds / (len(tiles) * pixels), 1e-12)
        for i in tiles:
            self.made[i] += 1
