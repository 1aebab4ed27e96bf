"""The tile grid editor: plan by tile size (the grid follows) or by rows × columns (the tile
follows), the overlap, and the plan summary the window writes into ``plan_info``."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QButtonGroup, QFormLayout, QHBoxLayout, QLabel, QRadioButton

from ...engine.core import request as rq
from ...engine.core.modelinfo import ModelInfo
from ...engine.core.plan import TilePlan
from .base import Form, spin
from .mapping import FormValues


class TilesForm(Form):
    def __init__(self) -> None:
        super().__init__("Tiles")
        self._fixed_tile = False  # the model only takes its native tile
        layout = QFormLayout(self)
        modes = QHBoxLayout()
        self.by_tile = QRadioButton("Tile size")
        self.by_tile.setObjectName("by_tile")
        self.by_grid = QRadioButton("Rows × columns")
        self.by_grid.setObjectName("by_grid")
        self._mode = QButtonGroup(self)
        self._mode.addButton(self.by_tile)
        self._mode.addButton(self.by_grid)
        self.by_tile.setChecked(True)
        modes.addWidget(self.by_tile)
        modes.addWidget(self.by_grid)
        layout.addRow(modes)
        self.tile = spin(rq.MIN_TILE, rq.MAX_TILE, 8, " px", "tile")
        layout.addRow("Tile", self.tile)
        grid_row = QHBoxLayout()
        self.rows = spin(1, rq.MAX_GRID, 1, "", "rows")
        self.cols = spin(1, rq.MAX_GRID, 1, "", "cols")
        grid_row.addWidget(self.rows)
        grid_row.addWidget(QLabel("×"))
        grid_row.addWidget(self.cols)
        self.grid_label = QLabel("Grid")
        layout.addRow(self.grid_label, grid_row)
        self.overlap = spin(0, rq.MAX_OVERLAP, 8, " px", "overlap")
        layout.addRow("Overlap", self.overlap)
        self.plan_info = QLabel()
        self.plan_info.setObjectName("plan_info")
        self.plan_info.setWordWrap(True)
        self.plan_info.setTextFormat(Qt.TextFormat.RichText)
        layout.addRow(self.plan_info)
        for s in (self.tile, self.rows, self.cols, self.overlap):
            s.valueChanged.connect(self._changed)
        self.by_tile.toggled.connect(self._mode_changed)

    def set_model(self, info: ModelInfo) -> None:
        self._fixed_tile = info.fixed_tile
        self.tile.setSingleStep(max(info.tile_multiple, rq.SIZE_MULTIPLE))  # FLUX/SD3: whole 16 px patches
        with self.showing():
            if info.fixed_tile:
                self.by_tile.setChecked(True)
        self.by_grid.setEnabled(not info.fixed_tile)
        self._enable()

    def _enable(self) -> None:
        grid = self.by_grid.isChecked()
        self.tile.setEnabled(not grid and not self._fixed_tile)
        self.rows.setEnabled(grid)
        self.cols.setEnabled(grid)

    def _mode_changed(self, *_args: object) -> None:
        self._enable()
        self._changed()

    def values(self) -> dict[str, Any]:
        return {"by_grid": self.by_grid.isChecked(), "tile": self.tile.value(), "rows": self.rows.value(),
                "cols": self.cols.value(), "overlap": self.overlap.value()}

    def show_values(self, v: FormValues) -> None:
        with self.showing():
            (self.by_grid if v.by_grid else self.by_tile).setChecked(True)
            if v.rows is not None and v.cols is not None:
                self.rows.setValue(v.rows)
                self.cols.setValue(v.cols)
            self.tile.setValue(v.tile)
            self.overlap.setValue(v.overlap)
            self._enable()

    def show_plan(self, plan: TilePlan) -> None:
        """Show the derived half of the editor: rows × columns when planning by tile size, the
        tile size when planning by grid (the disabled fields follow the plan)."""
        pairs = ((self.rows, plan.rows), (self.cols, plan.cols)) if self.by_tile.isChecked() else \
            ((self.tile, plan.tile_w * plan.scale),)
        for s, value in pairs:
            s.blockSignals(True)
            s.setValue(value)
            s.blockSignals(False)

    def editor_plan(self, width: int, height: int) -> TilePlan | None:
        """The editor's plan (grid or tile size, and overlap; image px) laid on a ``width`` ×
        ``height`` picture that has no recipe of its own; None when the values do not fit it."""
        grid = (self.rows.value(), self.cols.value()) if self.by_grid.isChecked() else None
        try:
            return TilePlan.create(height, width, overlap=self.overlap.value(), grid=grid,
                                   tile=None if grid else self.tile.value())
        except (rq.RequestError, ValueError):
            return None
