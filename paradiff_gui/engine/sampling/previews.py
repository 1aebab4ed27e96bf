"""How much of a run live previews may take, when they are costly.

The linear preview map costs next to nothing and runs on every batch. A tiny-autoencoder decode
(models/sd/taesd.py) costs, on a CPU, about as much as the model call it follows, and previews run
on the loop's thread between model calls: unthrottled they would slow every step. So a backend
whose previews are costly says so (``den.preview_budget``: a share of the run's wall time), and
the loop decodes only the tiles this budget pays for — the tiles whose preview is oldest first, so
every tile is refreshed in turn and none is left behind. The tiles it does not pay for get the
linear map instead, so every tile still shows every step's progress — except that a tile keeps a
tiny-autoencoder preview for :data:`STALE_STEPS` steps before the linear map may replace it (a
sharp tile does not turn blurry at the next step; it gives way only once the picture has moved on).
On a GPU a decode is queued, not waited for (host time ≈ its launch), so there every tile is
decoded at every step and the linear map never runs.
"""

from __future__ import annotations

import time

PROBE = 8  # latent px a side of the decode that measures what a preview costs
# Steps a tile keeps its tiny-autoencoder preview before the linear map may show a newer state:
# fewer and a sharp tile flickers back to blurry at once; more and it shows a stale picture while
# its neighbours move on (early steps change a tile a lot).
STALE_STEPS = 3


class PreviewBudget:
    """Which tiles of a batch get a preview, so that previews take at most ``share`` of the run.

    The budget is ``share × (time since the first batch)``; what previews have cost so far is
    measured. A preview's cost grows with its latent pixels, so it is kept per latent pixel, and
    the first measure comes from a :data:`PROBE`-sized corner of one tile (:meth:`measured`):
    a whole tile's decode, the first one included, runs only once the budget covers it. (A first
    whole decode to find out would, on a CPU, be a whole model call's worth of time before the
    budget has earned any.) Within the budget, tiles take turns: a tile is due only while it has
    had no more previews than any other tile seen so far (so the budget waits for the tiles that
    need it most instead of refreshing the same batch over and over). The tiles not due are
    :meth:`filled` by the linear map, unless their tiny preview is fresher than :data:`STALE_STEPS`.
    """

    def __init__(self, share: float, clock=time.perf_counter) -> None:
        self.share, self.clock = share, clock
        self.started: float | None = None
        self.spent = 0.0  # s
        self.per_px: float | None = None  # s per latent px of a preview, as last measured; None: not yet
        self.made: dict[int, int] = {}  # tile index → previews made of it
        self.last: dict[int, int] = {}  # tile index → step of its latest preview

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

    def filled(self, tiles: list[int], step: int, due: list[int]) -> list[int]:
        """Positions in ``tiles`` to preview through the linear map at ``step``: those not ``due``
        a costly preview whose last one (if any) is at least :data:`STALE_STEPS` steps old."""
        return [k for k, i in enumerate(tiles)
                if k not in due and step - self.last.get(i, step - STALE_STEPS) >= STALE_STEPS]

    def measured(self, pixels: int, seconds: float) -> None:
        """A probe of ``pixels`` latent px (shown to no one) took ``seconds``. Its fixed costs
        are spread over its few pixels, so a tile's first cost is overestimated, never under."""
        self.spent += seconds
        self.per_px = max(seconds / pixels, 1e-12)

    def paid(self, tiles: list[int], pixels: int, seconds: float, step: int) -> None:
        """``tiles`` (tile indices, ``pixels`` latent px each) were previewed in ``seconds`` at ``step``."""
        self.spent += seconds
        if tiles:
            self.per_px = max(seconds / (len(tiles) * pixels), 1e-12)
        for i in tiles:
            self.made[i] += 1
            self.last[i] = step
