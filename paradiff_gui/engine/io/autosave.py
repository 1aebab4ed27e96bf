"""The autosave folder: where finished pictures wait (with their recipes) until they are exported.

The app writes every finished picture here and offers what is left back at the next start; the
CLI keeps a picture here when it cannot write ``-o``. One folder, one naming rule.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from platformdirs import user_data_path


def autosave_dir() -> Path:
    """``$PARADIFF_AUTOSAVE_DIR`` if set, else the user data folder's ``autosave``."""
    env = os.environ.get("PARADIFF_AUTOSAVE_DIR")
    return Path(env).expanduser() if env else user_data_path("paradiff", appauthor=False) / "autosave"


def autosave_path(seed: int, folder: Path | None = None) -> Path:
    """A new, unused ``<date>-<time>-seed<N>[-k].png`` in ``folder`` (default :func:`autosave_dir`)."""
    folder = folder or autosave_dir()
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}"
    path, n = folder / f"{stem}.png", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.png"
    return path


def pending(folder: Path | None = None) -> list[Path]:
    """The autosaved pictures not yet exported or discarded, oldest first."""
    folder = folder or autosave_dir()
    return sorted(folder.glob("*.png")) if folder.is_dir() else []
