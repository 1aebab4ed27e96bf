"""Where local models live: the folders the catalogue scans, and where model parts are looked
for (tiny autoencoders for previews, models/sd/taesd.py). Its own module so that a backend can
read it without importing the catalogue (which imports the registry, which imports backends)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from platformdirs import user_data_path


def model_dirs() -> list[Path]:
    """Folders searched for local models: ``$PARADIFF_MODEL_PATH`` (os.pathsep-separated) and
    the user data folder's ``models``."""
    dirs = [Path(p).expanduser() for p in os.environ.get("PARADIFF_MODEL_PATH", "").split(os.pathsep) if p]
    dirs.append(user_data_path("paradiff", appauthor=False) / "models")
    return dirs


MAX_SEARCH_FILES = 10_000  # model folders are walked for parts (LoRAs, ControlNets); a runaway tree stops here


def walk_parts(folders: Sequence[Path] | None = None,
               is_part_folder: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """The ``.safetensors`` files under the model folders (sorted, at most MAX_SEARCH_FILES files
    looked at), and with ``is_part_folder`` the folders it accepts (not walked into). A diffusers
    pipeline folder (``model_index.json``) is skipped whole: its weights are its own."""
    seen = 0
    for top in model_dirs() if folders is None else folders:
        if not top.is_dir():
            continue
        for root, dirs, files in os.walk(top):
            here = Path(root)
            if "model_index.json" in files:
                dirs.clear()
                continue
            if is_part_folder is not None and "config.json" in files and is_part_folder(here):
                dirs.clear()
                yield here
                continue
            dirs.sort()
            for name in sorted(files):
                seen += 1
                if seen > MAX_SEARCH_FILES:
                    return
                if name.endswith(".safetensors"):
                    yield here / name
