"""This session's pictures: the results, their memory budget, the one shown, and a token that
tells late background work whether it is still wanted.

Display pyramids, relief layers and seam scores are built on worker threads and arrive on the
GUI thread later, sometimes after the person has moved on (another picture in History, a new
run, relief toggled back). Every such job captures :attr:`Session.token` when it starts; the
token changes whenever what the view should show changes, and a job whose token is no longer
current is not shown.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from .widgets.inspector import Result

HISTORY_BYTES = 3 << 30  # full-resolution pictures kept in memory; older ones keep their thumbnail


class Session(QObject):
    """The results of this session, newest last, and the current one."""

    current_changed = Signal(object)  # Result | None

    def __init__(self, budget: int | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        # Read at construction (not import) so a test can shrink HISTORY_BYTES for one window.
        self.budget = HISTORY_BYTES if budget is None else budget
        self.results: list[Result] = []
        self.current: Result | None = None
        self.token = 0

    def bump(self) -> int:
        """Invalidate every job started so far (what the view should show has changed)."""
        self.token += 1
        return self.token

    def is_current(self, token: int) -> bool:
        return token == self.token

    def set_current(self, result: Result | None) -> int:
        """Make ``result`` the one shown; returns the new token for the jobs that fill it in."""
        self.current = result
        self.bump()
        self.current_changed.emit(result)
        return self.token

    def add(self, result: Result) -> list[Result]:
        """Keep ``result``; returns the older results whose full picture was dropped to stay
        within the budget (an 8K RGB is 192 MiB), newest ones kept."""
        self.results.append(result)
        dropped = []
        total = 0
        for r in reversed(self.results):
            total += r.nbytes
            if total > self.budget and r is not self.current and r is not result and r.image is not None:
                total -= r.nbytes
                r.image = None
                r.title += " (not in memory)"
                dropped.append(r)
        return dropped
