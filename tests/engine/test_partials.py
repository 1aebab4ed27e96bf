"""Temporary files of interrupted writes (engine.io.partials): a write killed mid-way leaves its
``.part`` file; the next start removes it — only files our notes name with our pattern, only old
ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from paradiff_gui.engine.io import partials
from paradiff_gui.engine.io.metadata import atomic_write


@pytest.fixture
def journal(tmp_path, monkeypatch):
    folder = tmp_path / "journal"
    monkeypatch.setenv("PARADIFF_PARTIALS_DIR", str(folder))
    return folder


def _age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


KILLED_WRITER = """
import sys, time
from paradiff_gui.engine.io.metadata import atomic_write

def write(f):
    f.write(b"half a picture")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)

atomic_write(sys.argv[1], write)
"""


def test_a_write_killed_midway_is_cleaned_up_at_the_next_start(journal, tmp_path):
    target = tmp_path / "out" / "picture.png"
    target.parent.mkdir()
    target.write_bytes(b"the older picture")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PARADIFF_PARTIALS_DIR": str(journal)})
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    (left,) = target.parent.glob(".picture.png.*.part")
    (note,) = journal.glob("*.note")
    assert partials.sweep() == []  # too young: another Paradiff may still be writing it
    assert left.exists()
    _age(note, partials.MIN_AGE_S + 1)
    assert partials.sweep() == [left.resolve()]
    assert not left.exists() and not note.exists()
    assert target.read_bytes() == b"the older picture"  # the target was never touched


def test_only_files_our_notes_name_with_our_pattern_are_removed(journal, tmp_path):
    journal.mkdir()
    foreign = tmp_path / ".other.png.abc.part"  # a .part no note names
    foreign.write_bytes(b"x")
    precious = tmp_path / "precious.png"  # a note naming a file that is not ours by name
    precious.write_bytes(b"x")
    note = journal / "a.note"
    note.write_text(str(precious))
    _age(note, partials.MIN_AGE_S + 1)
    assert partials.sweep() == []
    assert foreign.exists() and precious.exists() and not note.exists()


def test_a_finished_write_leaves_no_note_and_a_journal_that_cannot_be_written_costs_nothing(journal, tmp_path,
                                                                                               monkeypatch):
    atomic_write(tmp_path / "a.png", lambda f: f.write(b"a"))
    assert (tmp_path / "a.png").read_bytes() == b"a" and list(journal.glob("*.note")) == []
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("PARADIFF_PARTIALS_DIR", str(blocker / "journal"))
    atomic_write(tmp_path / "b.png", lambda f: f.write(b"b"))
    assert (tmp_path / "b.png").read_bytes() == b"b"
    assert partials.sweep() == []


def test_the_cli_cleans_up_when_it_starts(journal, tmp_path, capsys):
    from paradiff_gui.cli import main

    journal.mkdir()
    left = tmp_path / ".x.png.123.part"
    left.write_bytes(b"x")
    note = journal / "b.note"
    note.write_text(str(left))
    _age(note, partials.MIN_AGE_S + 1)
    assert main(["generate", "--steps", "0"]) == 2  # even a run refused for its input
    assert not left.exists()

