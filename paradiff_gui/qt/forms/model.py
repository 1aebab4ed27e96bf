"""The model picker: the catalogue in a combo box, described models cached, and no file I/O on the
GUI thread for what the person does.

- The catalogue scan (:func:`list_models`: model folders and the Hugging Face hub cache) runs on
  a worker thread (:meth:`ModelForm.refresh`); until it returns the combo holds the built-in
  models and whatever was already shown, all selectable.
- A model the person picks that is not yet described (a folder, a file, a hub id) is described
  on the worker too; the panel switches to it when the description arrives (:attr:`chosen`).
- Built-ins are described inline: their description is the registry's in-memory declaration.
- Callers that need a model in effect at once (``set_request``, ``add_model``: a loaded request,
  ``--model`` at start-up, tests) describe it inline through :meth:`info_for`; that reads a few
  small JSON configs, the same order of work as reading the request they came with.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QFileDialog, QFormLayout, QLabel

from ...engine.core.modelinfo import ModelInfo
from ...engine.models.catalogue import list_models
from ...engine.models.info import describe_model
from ...engine.models.registry import builtin_names
from ..jobs import Jobs
from .base import Form

ADD_FOLDER, ADD_FILE = "__add_folder__", "__add_file__"
_ACTIONS = 3  # separator, "Add a model folder…", "Add a .safetensors file…" at the end of the combo


def _scan(extra: list[str]) -> tuple[list[tuple[str, str]], dict[str, ModelInfo]]:
    """Worker thread: the catalogue as (id, label) pairs, and descriptions of ``extra`` models."""
    items = [(e.id, describe_model(e.id).label if e.kind == "builtin" else f"{e.id}  ({e.kind})")
             for e in list_models()]
    return items, {m: describe_model(m) for m in extra}


class ModelForm(Form):
    """``chosen(id)``: the person picked a model and its description is ready (the panel then
    selects it with the model's defaults). ``listed``: the catalogue scan has filled the combo."""

    chosen = Signal(str)
    listed = Signal()

    def __init__(self) -> None:
        super().__init__("Model")
        layout = QFormLayout(self)
        self.combo = QComboBox()
        self.combo.setObjectName("model")
        self.combo.setToolTip("Built-in models work offline; add a diffusers folder or a .safetensors file")
        layout.addRow(self.combo)
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.setProperty("role", "note")
        layout.addRow(self.note)
        self._jobs = Jobs(self, workers=1)  # one worker: scans and descriptions arrive in order
        self._infos: dict[str, ModelInfo] = {}
        self._scanned: set[str] = set()  # ids the last catalogue scan found
        self.current = ""  # the model in effect (the combo may show another while it is read)
        self.pending: str | None = None  # picked by the person, being described
        for name in builtin_names():
            self._insert(f"builtin:{name}")
        self.combo.insertSeparator(self.combo.count())
        self.combo.addItem("Add a model folder…", ADD_FOLDER)
        self.combo.addItem("Add a .safetensors file…", ADD_FILE)
        self.combo.activated.connect(self._activated)

    # -- descriptions ----------------------------------------------------------------------------

    def info_for(self, model: str) -> ModelInfo:
        """``model``'s description, cached (inline when new: see the module docstring)."""
        if model not in self._infos:
            self._infos[model] = describe_model(model)
        return self._infos[model]

    def _insert(self, model: str, label: str | None = None) -> None:
        if self.combo.findData(model) < 0:
            at = max(0, self.combo.count() - _ACTIONS) if self.combo.findData(ADD_FOLDER) >= 0 else self.combo.count()
            self.combo.insertItem(at, label or self.info_for(model).label, model)

    def show_model(self, model: str) -> ModelInfo:
        """Make ``model`` the one in effect and shown; a description still being read for an
        earlier pick is then not applied."""
        info = self.info_for(model)
        self._insert(model)
        self.combo.setCurrentIndex(self.combo.findData(model))
        self.current, self.pending = model, None
        notes = []
        if info.output == "height":
            notes.append("Makes 16-bit heightmaps")
        if not info.text:
            notes.append("not conditioned on text")
        if info.fixed_tile:
            notes.append(f"tiles are fixed at {info.native_tile} px")
        self._say("; ".join(notes) + ("." if notes else ""))
        return info

    def _say(self, text: str) -> None:
        self.note.setText(text)
        self.note.setVisible(bool(text))

    # -- the person's picks ----------------------------------------------------------------------

    def _activated(self, index: int) -> None:
        data = self.combo.itemData(index)
        if data == ADD_FOLDER:
            data = QFileDialog.getExistingDirectory(self, "Add a diffusers model folder")
        elif data == ADD_FILE:
            data, _ = QFileDialog.getOpenFileName(self, "Add a model file", "", "safetensors (*.safetensors)")
        if data:
            self.choose(data)
        else:
            self.combo.setCurrentIndex(max(0, self.combo.findData(self.current)))

    def choose(self, model: str) -> None:
        """The person picked ``model``: ``chosen`` now if it is described, else once the worker has
        described it (meanwhile the panel refuses to make a request: see ``pending``)."""
        if model in self._infos or model.startswith("builtin:"):
            self.chosen.emit(model)
            return
        self.pending = model
        self._insert(model, Path(model).name or model)
        self.combo.setCurrentIndex(self.combo.findData(model))
        self._say(f"Reading {Path(model).name or model}…")
        self._jobs.submit(lambda: describe_model(model), lambda info: self._described(info),
                          lambda exc: self._not_described(model, exc))

    def _described(self, info: ModelInfo) -> None:
        self._infos[info.id] = info
        i = self.combo.findData(info.id)
        if i >= 0:
            self.combo.setItemText(i, info.label)
        if self.pending == info.id:  # not overtaken by another pick or a loaded request
            self.chosen.emit(info.id)

    def _not_described(self, model: str, exc: BaseException) -> None:
        if self.pending == model:
            self.pending = None
            self.combo.setCurrentIndex(max(0, self.combo.findData(self.current)))
            self._say(f"Cannot read {model}: {exc}")

    # -- the catalogue -----------------------------------------------------------------------------

    def refresh(self, extra: list[str] | None = None) -> None:
        """Scan the catalogue on the worker and fill the combo when it returns (``listed``).
        ``extra`` models (the person's added ones) are listed at once and described there too."""
        extra = list(extra or [])
        for m in extra:
            self._insert(m, self._infos[m].label if m in self._infos else Path(m).name or m)
        self._jobs.submit(lambda: _scan(extra), self._listed)

    def _listed(self, result: tuple[list[tuple[str, str]], dict[str, ModelInfo]]) -> None:
        items, infos = result
        self._infos.update(infos)
        self._scanned = {m for m, _ in items}
        # Keep what is already listed but not found (added, or shown from a request), in order.
        kept = [(self.combo.itemData(i), self.combo.itemText(i)) for i in range(self.combo.count())
                if self.combo.itemData(i) not in (None, ADD_FOLDER, ADD_FILE)
                and self.combo.itemData(i) not in self._scanned]
        shown = self.combo.currentData()
        self.combo.blockSignals(True)
        self.combo.clear()
        for m, label in [*items, *kept]:
            self.combo.addItem(self._infos[m].label if m in infos else label, m)
        self.combo.insertSeparator(self.combo.count())
        self.combo.addItem("Add a model folder…", ADD_FOLDER)
        self.combo.addItem("Add a .safetensors file…", ADD_FILE)
        self.combo.setCurrentIndex(max(0, self.combo.findData(shown)))
        self.combo.blockSignals(False)
        self.listed.emit()

    def added(self) -> list[str]:
        """Listed models that neither ship with Paradiff nor were found by the last scan."""
        ids = [self.combo.itemData(i) for i in range(self.combo.count())]
        return [m for m in ids if m not in (None, ADD_FOLDER, ADD_FILE) and not m.startswith("builtin:")
                and m not in self._scanned]
