"""The app's log file: where it is and how it rotates (the Help menu opens the folder)."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from platformdirs import user_log_path


def log_dir() -> Path:
    return user_log_path("paradiff", appauthor=False, ensure_exists=True)


def setup_logging() -> Path:
    path = log_dir() / "paradiff-gui.log"
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=2 << 20, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path
