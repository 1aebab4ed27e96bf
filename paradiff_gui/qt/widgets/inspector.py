"""Seam inspection: overlay toggles, the scores, and a sortable list of seams; and the history
of this session's results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ...engine.analysis.seams import Seam, SeamReport
from ..imaging import qimage


def verdict(ratio: float) -> str:
    if ratio <= 1.1:
        return "no visible seams"
    if ratio <= 1.5:
        return "faint seams"
    return "visible seams"


_SORT_KEY = Qt.ItemDataRole.UserRole + 1


class _Item(QTableWidgetItem):
    """Sorts by the value behind the text (3.10 after 2.5; x = 64 before x = 448)."""

    def __lt__(self, other: QTableWidgetItem) -> bool:
        return self.data(_SORT_KEY) < other.data(_SORT_KEY)


class SeamPanel(QWidget):
    """Emits ``overlays_changed(borders, overlaps, heatmap)`` and ``seam_chosen(Seam)``."""

    overlays_changed = Signal(bool, bool, bool)
    seam_chosen = Signal(object)

    COLUMNS = ("Score", "Seam", "Kind", "Drift")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        toggles = QHBoxLayout()
        self.borders = QCheckBox("Tile borders")
        self.borders.setObjectName("show_borders")
        self.borders.setChecked(True)
        self.overlaps = QCheckBox("Overlaps")
        self.overlaps.setObjectName("show_overlaps")
        self.heatmap = QCheckBox("Heatmap")
        self.heatmap.setObjectName("show_heatmap")
        for c in (self.borders, self.overlaps, self.heatmap):
            toggles.addWidget(c)
            c.toggled.connect(self._emit_overlays)
        lay.addLayout(toggles)
        self.summary = QLabel("Generate or open an image to score its seams.")
        self.summary.setObjectName("seam_summary")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(self.summary)
        self.tiling = QLabel()  # a seamless picture: how it repeats (its copies' junctions scored)
        self.tiling.setObjectName("tiling_summary")
        self.tiling.setTextFormat(Qt.TextFormat.RichText)
        self.tiling.setToolTip("The picture laid 2×2 (View → Show 2×2) and scored where the copies meet, like its "
                               "own seams")
        self.tiling.setVisible(False)
        lay.addWidget(self.tiling)
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setObjectName("seam_table")
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.setSortingEnabled(True)
        self.table.setToolTip("Click a seam to see it at 100 %. Score: the gradient across the seam ÷ the image's "
                              "typical gradient (1 = as smooth as the rest). Drift: the mean step across it, as a "
                              "share of the image's spread. Boundary: midway between tile centres; edge: a tile's "
                              "edge.")
        self.table.itemClicked.connect(self._clicked)
        lay.addWidget(self.table, 1)
        self.report: SeamReport | None = None

    def _emit_overlays(self) -> None:
        self.overlays_changed.emit(self.borders.isChecked(), self.overlaps.isChecked(), self.heatmap.isChecked())

    def show_busy(self) -> None:
        self.summary.setText("Scoring seams…")
        self.table.setRowCount(0)

    def clear(self, text: str = "") -> None:
        self.report = None
        self.table.setRowCount(0)
        self.summary.setText(text)
        self.tiling.setVisible(False)

    def set_tiling(self, ratio: float | None, wrap: str = "xy") -> None:
        """How a seamless picture repeats (``wrap``: the edges it wraps across); None hides it."""
        where = {"x": "left ↔ right", "y": "top ↔ bottom"}.get(wrap, "both ways")
        self.tiling.setText("" if ratio is None else f"<b>Repeats {where}: {ratio:.2f}</b> ({verdict(ratio)})")
        self.tiling.setVisible(ratio is not None)

    def set_report(self, report: SeamReport, consensus: float | None = None) -> None:
        self.report = report
        self.tiling.setVisible(False)
        extra = f" · overlap disagreement {consensus:.3f}" if consensus is not None else ""
        drift = float(np.mean([s.drift_rel for s in report.seams])) if report.seams else 0.0
        self.summary.setText(
            f"<b>Seam score {report.seam_ratio:.2f}</b> ({verdict(report.seam_ratio)}) · "
            f"grid periodicity {report.spectral_peak:.2f} · mean drift {drift:.0%}{extra}")
        self.summary.setToolTip(
            "Seam score: gradient across tile seams ÷ the image's typical gradient (≤ 1.05 is seamless). Grid "
            "periodicity: spectral energy at the tile stride ÷ its neighbours (1 = no grid pattern). Drift: mean "
            "step across a seam as a share of the image's spread.")
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(report.seams))
        for row, seam in enumerate(report.seams):
            where = f"{'x' if seam.orientation == 'vertical' else 'y'} = {seam.position}"
            # Drift as a share of the image's spread: comparable across 8- and 16-bit pictures.
            values: tuple[Any, ...] = (f"{seam.ratio:.2f}", where, seam.kind, f"{seam.drift_rel:.1%}")
            keys: tuple[Any, ...] = (seam.ratio, (seam.orientation, seam.position), seam.kind, seam.drift_rel)
            for col, (v, key) in enumerate(zip(values, keys)):
                item = _Item(v)
                item.setData(_SORT_KEY, key)
                item.setData(Qt.ItemDataRole.UserRole, seam)
                self.table.setItem(row, col, item)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.DescendingOrder)

    def seam_at(self, row: int) -> Seam:
        return self.table.item(row, 0).data(Qt.ItemDataRole.UserRole)

    def _clicked(self, item: QTableWidgetItem) -> None:
        self.seam_chosen.emit(item.data(Qt.ItemDataRole.UserRole))


@dataclass
class Result:
    """One finished (or opened) picture of this session."""

    image: np.ndarray | None  # None once dropped from memory
    request: Any  # GenerationRequest | None (an opened image without metadata)
    tiles: list[tuple[int, int, int, int]]
    title: str
    seconds: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    plan: Any = None  # TilePlan when generated here
    layer: Any = None  # imaging.Layer, once built
    report: SeamReport | None = None
    heat: Any = None  # imaging.Layer of the heatmap, once built
    heat_map: np.ndarray | None = None  # (H, W) float32 seam heat, for finding a seam's worst point
    consensus: float | None = None
    tiling: float | None = None  # a seamless picture's seam score where its 2×2 copies meet
    path: str | None = None  # where it was opened from / last exported to
    autosave: str | None = None  # its autosaved copy, until exported

    @property
    def nbytes(self) -> int:
        return 0 if self.image is None else int(self.image.nbytes)


THUMB = 96


class HistoryPanel(QWidget):
    """This session's results with thumbnails: click to view, Reuse to load the settings."""

    chosen = Signal(object)  # Result
    reuse = Signal(object)  # Result

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        self.list = QListWidget()
        self.list.setObjectName("history")
        self.list.setViewMode(QListWidget.ViewMode.IconMode)
        self.list.setIconSize(QSize(THUMB, THUMB))
        self.list.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.list.setMovement(QListWidget.Movement.Static)
        self.list.setWordWrap(True)
        self.list.setSpacing(4)
        self.list.itemClicked.connect(lambda item: self.chosen.emit(item.data(Qt.ItemDataRole.UserRole)))
        lay.addWidget(self.list, 1)
        self.reuse_button = QPushButton("Reuse settings")
        self.reuse_button.setObjectName("reuse")
        self.reuse_button.setToolTip("Load this result's request into the panel (seed included)")
        self.reuse_button.setEnabled(False)
        self.reuse_button.clicked.connect(self._reuse)
        self.list.currentItemChanged.connect(self._selection)
        lay.addWidget(self.reuse_button)
        self.results: list[Result] = []

    def add(self, result: Result, thumb: np.ndarray) -> None:
        self.results.append(result)
        item = QListWidgetItem(result.title)
        img = qimage(np.ascontiguousarray(thumb)).scaled(
            THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
        item.setIcon(QIcon(QPixmap.fromImage(img.copy(), Qt.ImageConversionFlag.NoFormatConversion)))
        item.setData(Qt.ItemDataRole.UserRole, result)
        tip = result.title if result.request is None else (
            f"{result.title}\nseed {result.request.seed} · {result.request.width}×{result.request.height}"
            + (f" · {result.seconds:.1f} s" if result.seconds else ""))
        item.setToolTip(tip)
        self.list.insertItem(0, item)
        self.list.setCurrentItem(item)

    def refresh(self, result: Result) -> None:
        """Show a result's changed title."""
        for i in range(self.list.count()):
            item = self.list.item(i)
            if item.data(Qt.ItemDataRole.UserRole) is result:
                item.setText(result.title)

    def current(self) -> Result | None:
        item = self.list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def _selection(self, *_args) -> None:
        r = self.current()
        self.reuse_button.setEnabled(r is not None and r.request is not None)

    def _reuse(self) -> None:
        r = self.current()
        if r is not None and r.request is not None:
            self.reuse.emit(r)

