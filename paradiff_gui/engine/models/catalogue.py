"""Finding the models Paradiff can use: built-ins, local folders/files, the hub cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .folders import model_dirs
from .registry import builtin_names

__all__ = ["ModelEntry", "list_models", "model_dirs"]


@dataclass(frozen=True)
class ModelEntry:
    id: str  # what to pass as request.model
    kind: str  # "builtin" | "folder" | "file" | "hub-cache"
    where: str  # human-readable location


def _local(folder: Path) -> list[ModelEntry]:
    if not folder.is_dir():
        return []
    found = []
    for p in sorted(folder.iterdir()):
        if p.is_dir() and (p / "model_index.json").is_file():
            found.append(ModelEntry(str(p), "folder", str(folder)))
        elif p.is_file() and p.suffix == ".safetensors":
            found.append(ModelEntry(str(p), "file", str(folder)))
    return found


def _hub_cache() -> list[ModelEntry]:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir()
    except CacheNotFound:
        return []
    found = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        if any(f.file_name == "model_index.json" for rev in repo.revisions for f in rev.files):
            found.append(ModelEntry(repo.repo_id, "hub-cache", str(repo.repo_path)))
    return found


def list_models() -> list[ModelEntry]:
    entries = [ModelEntry(f"builtin:{n}", "builtin", "shipped with Paradiff") for n in builtin_names()]
    for d in model_dirs():
        entries.extend(_local(d))
    entries.extend(_hub_cache())
    return entries
