"""What the LoRA and ControlNet forms share: a list of model parts, each a row keeping its
request's spec whole, added from the parts found in the model folders (walked on a worker) or from
dialogs, removed one by one, the whole form greyed with its reason for models that take none.

A form says what differs as class attributes (``field``: its name in :class:`FormValues` and the
request values; ``limit``; the texts of the "from the model folders" menu) and a few methods
(``new_spec``, ``make_row``, ``finder``, ``takes``, ``refusal``). A row is a :class:`PartRow`: it
builds its own fields and says what they edit through ``edited``; the form replaces those fields
in the row's spec (``dataclasses.replace``), so a field the form has no widget for survives. A new
field on a row (a ControlNet's mode, say) is one widget and one ``edited.emit({...})`` in the row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QFrame, QHBoxLayout, QPushButton, QToolButton, QVBoxLayout

from ...engine.core.modelinfo import ModelInfo
from ..jobs import Jobs
from .base import Form
from .mapping import FormValues

FOLDERS = "$PARADIFF_MODEL_PATH and the app's models folder"  # where the finders look (models/folders.py)


def part_name(path: str | Path) -> str:
    """What a row or the menu calls a part: a file's stem, a folder's name."""
    p = Path(path)
    return (p.stem if p.suffix == ".safetensors" else p.name) or str(path)


class PartRow(QFrame):
    """One part of a :class:`PartsForm`: ``spec`` is the request's own, ``remove`` its remove button.
    A subclass lays out its fields and emits ``edited`` with the fields they change."""

    edited = Signal(dict)  # spec field → new value

    def __init__(self, spec: Any, what: str, remove_name: str) -> None:
        super().__init__()
        self.spec = spec
        self.remove = QToolButton()
        self.remove.setObjectName(remove_name)
        self.remove.setText("✕")
        self.remove.setToolTip(f"Remove this {what}")

    def check(self, index: int) -> None:
        """Show what the request would say about this part, as ``index``-th of its list (nothing by default)."""


class PartsForm(Form):
    """A list of model parts (see the module's docstring for what a subclass fills in)."""

    field: ClassVar[str]  # "loras", "controlnets": FormValues' field and the values' key
    limit: ClassVar[int]  # the most parts a request takes
    what: ClassVar[str]  # "LoRA", "ControlNet": one part, in texts
    found_name: ClassVar[str]  # the menu's object name
    # The menu's first item, with and without parts found: short, for the menu shares its line with
    # buttons and a longer text is clipped (its tooltip says what it lists and where it looked).
    some_found: ClassVar[str] = "Model folders…"
    none_found: ClassVar[str] = "None found"

    def __init__(self, title: str) -> None:
        super().__init__(title)
        self.rows: list[PartRow] = []
        self.adders: list[QPushButton] = []  # greyed once the list is full
        self._jobs = Jobs(self, workers=1)  # the model folders are walked off the GUI thread
        outer = QVBoxLayout(self)
        self.list_layout = QVBoxLayout()
        outer.addLayout(self.list_layout)
        self.buttons = QHBoxLayout()
        self.found = QComboBox()
        self.found.setObjectName(self.found_name)
        # As wide as the line leaves it, not as its longest entry (a found part's name can be long).
        self.found.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.found.setMinimumContentsLength(8)
        self.found.activated.connect(self._add_found)
        self.buttons.addWidget(self.found, 1)
        outer.addLayout(self.buttons)
        self.refresh_found([])  # until the first scan

    # -- what a subclass says ---------------------------------------------------------------------

    def new_spec(self, path: str) -> Any:
        """The spec of a part added from ``path`` (a menu entry or a dialog)."""
        raise NotImplementedError

    def make_row(self, spec: Any) -> PartRow:
        raise NotImplementedError

    def finder(self) -> Callable[[], list[Path]]:
        """The function that walks the model folders for these parts (imported late: engine code)."""
        raise NotImplementedError

    def takes(self, info: ModelInfo) -> bool:
        raise NotImplementedError

    def refusal(self, info: ModelInfo) -> str:
        """Why ``info``'s model greys the form (its tooltip)."""
        raise NotImplementedError

    def add_button(self, text: str, name: str, pick: Callable[[], str], tip: str = "") -> QPushButton:
        """A button beside the menu that adds the part ``pick`` returns (a dialog; "" when cancelled)."""
        button = QPushButton(text)
        button.setObjectName(name)
        button.setToolTip(tip)
        button.clicked.connect(lambda: self._add_picked(pick))
        self.buttons.addWidget(button)
        self.adders.append(button)
        return button

    # -- the list ---------------------------------------------------------------------------------

    def specs(self) -> tuple[Any, ...]:
        return tuple(row.spec for row in self.rows)

    def add(self, path: str) -> None:
        self.add_spec(self.new_spec(str(path)))

    def add_spec(self, spec: Any) -> None:
        if len(self.rows) >= self.limit:
            return
        self._append(spec)
        self._changed()

    def remove(self, index: int) -> None:
        row = self.rows.pop(index)
        self.list_layout.removeWidget(row)
        row.deleteLater()
        self._update()
        self._changed()

    def _append(self, spec: Any) -> None:
        row = self.make_row(spec)
        row.edited.connect(lambda fields: self._edit(row, **fields))
        row.remove.clicked.connect(lambda: self.remove(self.rows.index(row)))
        self.rows.append(row)
        self.list_layout.addWidget(row)
        self._update()

    def _edit(self, row: PartRow, **fields: Any) -> None:
        row.spec = replace(row.spec, **fields)
        row.check(self.rows.index(row))
        self._changed()

    def _update(self) -> None:
        room = len(self.rows) < self.limit
        for button in self.adders:
            button.setEnabled(room)
        self.found.setEnabled(room and self.found.count() > 1)
        for i, row in enumerate(self.rows):
            row.check(i)

    # -- adding -----------------------------------------------------------------------------------

    def scan(self) -> None:
        """Look for parts in the model folders on a worker (configs and headers only), then list them."""
        self._jobs.submit(self.finder(), self.refresh_found)

    def refresh_found(self, paths: list[Path]) -> None:
        """List ``paths`` in the "from the model folders" menu."""
        self.found.clear()
        self.found.addItem(self.some_found if paths else self.none_found)
        self.found.setToolTip(f"{self.what}s found in the model folders ({FOLDERS}): pick one to add it" if paths
                              else f"No {self.what}s were found in the model folders ({FOLDERS})")
        for p in paths:
            self.found.addItem(part_name(p), str(p))
            self.found.setItemData(self.found.count() - 1, str(p), 3)  # Qt.ToolTipRole: the whole path
        self._update()

    def _add_found(self, index: int) -> None:
        path = self.found.itemData(index)
        self.found.setCurrentIndex(0)
        if path:
            self.add(path)

    def _add_picked(self, pick: Callable[[], str]) -> None:
        path = pick()
        if path:
            self.add(path)

    # -- the form protocol ------------------------------------------------------------------------

    def set_model(self, info: ModelInfo) -> None:
        on = self.takes(info)
        self.setEnabled(on)
        self.setToolTip("" if on else self.refusal(info))

    def values(self) -> dict[str, Any]:
        return {self.field: self.specs()}

    def show_values(self, v: FormValues) -> None:
        with self.showing():
            while self.rows:
                row = self.rows.pop()
                self.list_layout.removeWidget(row)
                row.deleteLater()
            for spec in getattr(v, self.field):
                self._append(spec)
