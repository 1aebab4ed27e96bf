"""Where local models live: the folders the catalogue scans, and where model parts are looked
for (tiny autoencoders for previews, models/sd/taesd.py). Its own module so that a backend can
read it without importing the catalogue (which imports the registry, which imports backends)."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_data_path


def model_dirs() -> list[Path]:
    """Folders searched for local models: ``$PARADIFF_MODEL_PATH`` (os.pathsep-separated) and
    the user data folder's ``models``."""
    dirs = [Path(p).expanduser() for p in os.environ.get("PARADIFF_MODEL_PATH", "").split(os.pathsep) if p]
    dirs.append(user_data_path("paradiff", appauthor=False) / "models")
    return dirs
