"""Autosave and recovery: every finished picture is written (with its recipe) to the one autosave
folder the CLI uses too (``engine.io.autosave``) the moment it arrives, and removed once
exported; what is left at the next start is offered back."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QMessageBox, QWidget

from ..engine.io import autosave as store
from ..engine.io import partials
from .dialogs import message_for
from .jobs import Jobs
from .widgets.inspector import Result

log = logging.getLogger(__name__)


class Autosaver(QObject):
    """Writes results to ``folder`` on the job pool; ``recoverable`` is what an earlier session left."""

    saved = Signal(str)  # path
    failed = Signal(str)  # message
    open_requested = Signal(str)  # an autosaved picture to open into History

    def __init__(self, jobs: Jobs, folder: Path | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.jobs = jobs
        self.folder = Path(folder) if folder is not None else store.autosave_dir()
        self.recoverable: list[Path] = store.pending(self.folder)
        self.box: QMessageBox | None = None
        # Temporary files that a write killed mid-way (an earlier session) left behind.
        jobs.submit(partials.sweep, lambda _removed: None,
                    lambda exc: log.warning("cleaning up interrupted writes failed", exc_info=exc))

    def save(self, result: Result) -> None:
        """Write ``result`` off the GUI thread; ``result.autosave`` names the file once written."""
        from ..engine.io.metadata import save_png

        folder, image, request, plan, info = self.folder, result.image, result.request, result.plan, result.info

        def write() -> str:
            folder.mkdir(parents=True, exist_ok=True)
            path = store.autosave_path(request.seed, folder)
            save_png(path, image, request, plan, info)
            return str(path)

        def done(path: str) -> None:
            result.autosave = path
            self.saved.emit(path)

        def failed(exc: BaseException) -> None:
            log.error("autosave failed", exc_info=exc)
            self.failed.emit(message_for(exc))

        self.jobs.submit(write, done, failed)

    @staticmethod
    def exported(result: Result) -> None:
        """``result`` was exported: its autosaved copy has done its job."""
        if result.autosave:
            Path(result.autosave).unlink(missing_ok=True)
            result.autosave = None

    def offer(self, parent: QWidget) -> None:
        """Ask whether to open, discard or keep the earlier session's pictures (not blocking)."""
        n = len(self.recoverable)
        box = QMessageBox(QMessageBox.Icon.Question, "Recover pictures",
                          f"{n} finished picture{'s' if n > 1 else ''} from an earlier session "
                          f"{'were' if n > 1 else 'was'} never exported. Open {'them' if n > 1 else 'it'}?",
                          QMessageBox.StandardButton.Open | QMessageBox.StandardButton.Discard
                          | QMessageBox.StandardButton.Ignore, parent)
        box.setObjectName("recover_box")
        box.setInformativeText(f"They are kept in {self.folder} until you export or discard them. "
                               "Ignore asks again next time.")
        box.button(QMessageBox.StandardButton.Ignore).setText("Later")
        box.setWindowModality(Qt.WindowModality.WindowModal)
        choices = {QMessageBox.StandardButton.Open: "open", QMessageBox.StandardButton.Discard: "discard"}
        box.buttonClicked.connect(lambda button: self.recover(choices.get(box.standardButton(button), "later")))
        box.open()
        self.box = box

    def recover(self, choice: str) -> None:
        """``open`` the earlier session's pictures, ``discard`` them, or leave them for ``later``."""
        files, self.recoverable = self.recoverable, []
        if choice == "open":
            for path in files:
                self.open_requested.emit(str(path))
        elif choice == "discard":
            for path in files:
                path.unlink(missing_ok=True)
        else:
            self.recoverable = files
