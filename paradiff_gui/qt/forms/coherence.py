"""The coherence form: how tiles are fused, whether the grid moves each step, the weight of a
first pass at the model's native size (global context), the bridges between tiles inside the
model (engine.sampling.bridges), and whether the plan wraps across the canvas edges (seamless)."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QSpinBox

from ...engine.core import request as rq
from ...engine.core.modelinfo import ModelInfo
from .base import Form
from .mapping import FormValues

FUSION_LABELS = {
    "cosine": "Cosine (smooth)",
    "gaussian": "Gaussian",
    "uniform": "Uniform average",
    "none": "None (nearest tile)",
    "independent": "Independent tiles (baseline)",
}

BRIDGE_LABELS = {
    "off": "Off",
    "attention": "Attention to neighbours",
    "halos": "Convolution halos",
    "norms": "Shared GroupNorm statistics",
    "full": "Full (all three)",
}
# Seamless: the tile plan wraps across these edges (request.wrap), so the picture tiles that way.
WRAP_LABELS = {
    "none": "Off",
    "x": "Horizontal (left ↔ right)",
    "y": "Vertical (top ↔ bottom)",
    "xy": "Both",
}
# Diffusion transformers (FLUX, SD3): where each tile's image tokens sit (request.positions).
POSITION_LABELS = {
    "local": "Tile-local (as trained)",
    "canvas": "Canvas (each tile at its place)",
}
BRIDGE_STEP_LABELS = {
    "previous": "Previous step (any batch)",
    "same": "Same step (every tile in one call)",
}
BRIDGE_STEP_TIP = (
    "Where bridges take the neighbours' values from. Previous step: each tile sees its neighbours as they were "
    "one step ago, so tiles run in batches of any size; few-step models (the built-in terrain model, turbo/LCM, "
    "FLUX schnell) can drift, because one step changes a lot. Same step: every tile of a step runs in one call "
    "and each bridged layer sees all the tiles' values of now (with several GPUs they exchange them at every "
    "layer) — the picture still does not depend on the batch or the GPUs. It costs the memory of all the "
    "tiles in one call (the plan summary's estimate; refused up front when it does not fit) and, on a CPU, "
    "some speed; docs/QUALITY.md has the measured trade-off.")
# Only attention bridges reach into a strip.
WIDTH_BRIDGES = ("attention", "full")
# A diffusion transformer's tiles meet only in attention (no convolution or GroupNorm spans them),
# and bridges carry its neighbours' tokens with their canvas positions (flow.check_bridges).
TRANSFORMER_BRIDGES = ("off", "attention", "full")


class CoherenceForm(Form):
    def __init__(self) -> None:
        super().__init__("Coherence")
        layout = QFormLayout(self)
        self.fusion = QComboBox()
        self.fusion.setObjectName("fusion")
        for f in rq.FUSIONS[::-1]:
            self.fusion.addItem(FUSION_LABELS[f], f)
        layout.addRow("Fusion", self.fusion)
        self.jitter = QCheckBox("Move the grid each step")
        self.jitter.setObjectName("jitter")
        layout.addRow("Jitter", self.jitter)
        self.global_context = QDoubleSpinBox()
        self.global_context.setObjectName("global_context")
        self.global_context.setRange(0.0, 1.0)  # the request's range: 0 (off) to 1
        self.global_context.setSingleStep(0.1)
        self.global_context.setDecimals(2)
        self.global_context.setSpecialValueText("Off")
        layout.addRow("Global context", self.global_context)
        self.bridges = QComboBox()
        self.bridges.setObjectName("bridges")
        self.bridges.setToolTip("Tiles that compute as one model while they denoise: each bridged layer sees "
                                "its neighbours' values (from the previous or the same step: Bridge values)")
        for b in rq.BRIDGES:
            self.bridges.addItem(BRIDGE_LABELS[b], b)
        layout.addRow("Bridges", self.bridges)
        self.bridge_width = QSpinBox()
        self.bridge_width.setObjectName("bridge_width")
        self.bridge_width.setRange(0, rq.MAX_TILE // 2)  # the request's range; the plan checks half a tile
        self.bridge_width.setSingleStep(rq.SIZE_MULTIPLE)
        self.bridge_width.setSuffix(" px")
        self.bridge_width.setSpecialValueText("Whole neighbour tiles")
        self.bridge_width.setToolTip("Attention bridges see a strip this wide along each tile border")
        layout.addRow("Bridge width", self.bridge_width)
        self.bridge_step = QComboBox()
        self.bridge_step.setObjectName("bridge_step")
        self.bridge_step.setToolTip(BRIDGE_STEP_TIP)
        for k in rq.BRIDGE_STEPS:
            self.bridge_step.addItem(BRIDGE_STEP_LABELS[k], k)
        layout.addRow("Bridge values", self.bridge_step)
        self.wrap = QComboBox()
        self.wrap.setObjectName("wrap")
        self.wrap.setToolTip("Tiles wrap across these canvas edges, so the picture repeats without a seam "
                             "(textures, panoramas); View → Show 2×2 checks it")
        for w in rq.WRAPS:
            self.wrap.addItem(WRAP_LABELS[w], w)
        layout.addRow("Seamless", self.wrap)
        self.positions = QComboBox()
        self.positions.setObjectName("positions")
        self.positions.setToolTip(
            "Diffusion transformers (FLUX, SD3) only: where each tile's image tokens sit in the model's positional "
            "encoding. Tile-local: each tile at the origin, as a picture of its size (what the model was trained "
            "on). Canvas: each tile at its place on the canvas (what bridges need).")
        for k in rq.POSITIONS:
            self.positions.addItem(POSITION_LABELS[k], k)
        self.positions.setEnabled(False)
        self._positions_tip = self.positions.toolTip()
        self._transformer = False
        layout.addRow("Positions", self.positions)
        self.positions.currentIndexChanged.connect(self._changed)
        self.wrap.currentIndexChanged.connect(self._changed)
        self.bridges.currentIndexChanged.connect(self._bridges_changed)
        self.bridge_width.valueChanged.connect(self._changed)
        self.bridge_step.currentIndexChanged.connect(self._changed)
        self._bridges_changed()
        self.fusion.currentIndexChanged.connect(self._changed)
        self.jitter.toggled.connect(self._changed)
        self.global_context.valueChanged.connect(self._changed)

    def set_model(self, info: ModelInfo) -> None:
        self._transformer = info.positions
        items = self.bridges.model()
        for i in range(self.bridges.count()):  # a transformer is offered only the bridges it can take
            items.item(i).setEnabled(not info.positions or self.bridges.itemData(i) in TRANSFORMER_BRIDGES)
        if self.bridges.currentData() not in TRANSFORMER_BRIDGES and info.positions:
            self.bridges.setCurrentIndex(self.bridges.findData("off"))
        self._follow_bridges()

    def _follow_bridges(self) -> None:
        """On a transformer, bridges place the tiles on the canvas: positions shows canvas and is
        locked while bridges are on."""
        bridged = self._transformer and self.bridges.currentData() != "off"
        if bridged:
            self.positions.setCurrentIndex(self.positions.findData("canvas"))
        self.positions.setEnabled(self._transformer and not bridged)
        self.positions.setToolTip(self._positions_tip + ("\nBridges are on: they need canvas positions."
                                                         if bridged else ""))

    def _bridges_changed(self) -> None:
        self.bridge_width.setEnabled(self.bridges.currentData() in WIDTH_BRIDGES)
        self.bridge_step.setEnabled(self.bridges.currentData() != "off")
        self._follow_bridges()
        self._changed()

    def values(self) -> dict[str, Any]:
        return {"fusion": self.fusion.currentData(), "jitter": self.jitter.isChecked(),
                "global_context": self.global_context.value(), "bridges": self.bridges.currentData(),
                "bridge_width": self.bridge_width.value(), "bridge_step": self.bridge_step.currentData(),
                "wrap": self.wrap.currentData(),
                "positions": self.positions.currentData()}

    def show_values(self, v: FormValues) -> None:
        with self.showing():
            self.fusion.setCurrentIndex(max(0, self.fusion.findData(v.fusion)))
            self.jitter.setChecked(v.jitter)
            self.global_context.setValue(v.global_context)
            self.bridges.setCurrentIndex(max(0, self.bridges.findData(v.bridges)))
            self.bridge_width.setValue(v.bridge_width)
            self.bridge_width.setEnabled(v.bridges in WIDTH_BRIDGES)
            self.bridge_step.setCurrentIndex(max(0, self.bridge_step.findData(v.bridge_step)))
            self.bridge_step.setEnabled(v.bridges != "off")
            self.wrap.setCurrentIndex(max(0, self.wrap.findData(v.wrap)))
            self.positions.setCurrentIndex(max(0, self.positions.findData(v.positions)))
            self._follow_bridges()
