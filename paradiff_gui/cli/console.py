"""What every command says on the terminal: the exit codes, argparse's refusals, the progress bar
and the one-line failures (``paradiff: invalid input: …``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class Parser(argparse.ArgumentParser):
    """argparse that exits with our 'invalid input' code and a one-line message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_INVALID, f"{self.prog}: error: {message}\n")


def say(message: str) -> None:
    """One line on stderr, where everything but a command's result goes (stdout stays for --json)."""
    print(message, file=sys.stderr)


def fail(code: int, message: str) -> int:
    """``paradiff: MESSAGE`` on stderr; returns ``code`` for the command to exit with."""
    say(f"paradiff: {message}")
    return code


def invalid(exc: Any) -> int:
    """A refused input (a ``RequestError``, which names its field and the allowed values): exit 2."""
    return fail(EXIT_INVALID, f"invalid input: {exc}")


def unavailable(exc: Any) -> int:
    """A model that cannot be loaded here (not found, not downloaded, not allowed): exit 3."""
    return fail(EXIT_MODEL, f"model unavailable: {exc}")


class Progress:
    """Engine events → a rich progress bar with ETA on stderr."""

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("eta"),
            TimeRemainingColumn(), TimeElapsedColumn(), console=self.console, disable=quiet,
        )
        self.steps = self.decode = None

    def __call__(self, event: Any) -> None:
        from ..engine.core import events as ev

        if isinstance(event, ev.Planned):
            if not self.quiet:
                self.console.print(f"[bold]{event.plan.describe()}[/] on {event.device} ({event.dtype})")
            self.progress.start()
            self.steps = self.progress.add_task("denoising", total=event.total_steps)
        elif isinstance(event, ev.Notice):
            self.console.print(f"note: {event.message}")
        elif isinstance(event, ev.StepFinished) and self.steps is not None:
            self.progress.update(self.steps, completed=event.step + 1, total=event.total)
        elif isinstance(event, ev.Decoding):
            if self.decode is None:
                self.decode = self.progress.add_task("decoding", total=event.total)
            self.progress.update(self.decode, completed=event.done, total=event.total)
        elif isinstance(event, ev.TERMINAL):
            self.progress.stop()


def wrote(path: Any, result: Any) -> None:
    """The line that ends every successful run: the file, its size and the time it took."""
    say(f"wrote {path} ({result.image.shape[1]}x{result.image.shape[0]}, {result.seconds:.1f} s)")
