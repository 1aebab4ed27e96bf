"""Cooperative cancellation: ``cancel()`` sets a flag, the loop checks it between tile batches."""

from __future__ import annotations

import threading


class Cancelled(Exception):
    """The generation was cancelled; nothing after the cancel point (no decode) ran."""


class CancelToken:
    """Thread-safe flag shared by whoever may cancel (GUI, Ctrl-C handler) and the loop."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if ``cancel()`` was called."""
        if self._event.is_set():
            raise Cancelled("cancelled")
