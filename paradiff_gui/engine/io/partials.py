"""Temporary files of interrupted writes, removed at the next start.

Every atomic write (``metadata.atomic_write``) writes to ``.NAME.XXXX.part`` beside its target
and renames it into place; on an error it removes it. A process killed mid-write (``kill -9``, a
crash, power loss) can't: its ``.part`` file stays. So each write leaves a note in the journal
folder while it runs — the temporary file's path — and removes the note when it is done. At the
next start :func:`sweep` removes what old notes name: only files Paradiff wrote (named by a note,
with our pattern), only old ones (a note younger than ``min_age_s`` may belong to another
Paradiff still writing).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from platformdirs import user_data_path

log = logging.getLogger(__name__)

PART_RE = re.compile(r"^\..+\.part$")
MIN_AGE_S = 3600.0


def journal_dir() -> Path:
    """``$PARADIFF_PARTIALS_DIR`` if set, else the user data folder's ``partial-writes``."""
    env = os.environ.get("PARADIFF_PARTIALS_DIR")
    return Path(env).expanduser() if env else user_data_path("paradiff", appauthor=False) / "partial-writes"


@contextlib.contextmanager
def noted(tmp: str | os.PathLike[str]) -> Iterator[None]:
    """A note naming ``tmp`` in the journal for the block. A journal that can't be written costs
    only the clean-up after a kill, never the write itself."""
    note = None
    try:
        folder = journal_dir()
        folder.mkdir(parents=True, exist_ok=True)
        note = folder / f"{uuid.uuid4().hex}.note"
        note.write_text(str(Path(tmp).resolve()), encoding="utf-8")
    except OSError as exc:
        log.debug("no journal note for %s: %s", tmp, exc)
        note = None
    try:
        yield
    finally:
        if note is not None:
            with contextlib.suppress(OSError):
                note.unlink()


def sweep(min_age_s: float = MIN_AGE_S, now: float | None = None) -> list[Path]:
    """Remove the temporary files that old notes name (and the notes); return the files removed."""
    folder = journal_dir()
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for note in sorted(folder.glob("*.note")):
        try:
            if now - note.stat().st_mtime < min_age_s:
                continue
            target = Path(note.read_text(encoding="utf-8").strip())
            if PART_RE.match(target.name) and target.is_file():
                target.unlink()
                removed.append(target)
            note.unlink()
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("could not clean up after %s: %s", note, exc)
    if removed:
        log.info("removed %d temporary file(s) of interrupted writes: %s", len(removed),
                 ", ".join(str(p) for p in removed))
    return removed
