"""The app removes the temporary files of writes killed in an earlier session (engine.io.partials)
when it starts, on a worker thread."""

from __future__ import annotations

import os
import threading
import time

from paradiff_gui.engine.io import partials
from paradiff_gui.qt.autosave import Autosaver
from paradiff_gui.qt.jobs import Jobs


def test_the_app_cleans_up_on_a_worker_when_it_starts(tmp_path, qtbot, monkeypatch):
    journal = tmp_path / "journal"
    monkeypatch.setenv("PARADIFF_PARTIALS_DIR", str(journal))
    journal.mkdir()
    left = tmp_path / ".y.png.456.part"
    left.write_bytes(b"y")
    note = journal / "c.note"
    note.write_text(str(left))
    old = time.time() - partials.MIN_AGE_S - 1
    os.utime(note, (old, old))
    threads = []
    real = partials.sweep
    monkeypatch.setattr(partials, "sweep", lambda: threads.append(threading.current_thread()) or real())
    jobs = Jobs()
    try:
        Autosaver(jobs, tmp_path / "autosave")
        qtbot.waitUntil(lambda: not left.exists(), timeout=5000)
        assert threads and threads[0] is not threading.main_thread()
    finally:
        jobs.shutdown()
