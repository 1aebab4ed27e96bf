"""The performance form: tile batch, device, precision, compilation, live previews — speed only,
never the picture — and the "keep a CPU core free" preference, which is an app setting, not a request field."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout

from ...engine.core import request as rq
from .base import Form, spin
from .mapping import FormValues

# request.preview → what the menu says (engine/core/request.py PREVIEWS)
PREVIEW_LABELS = {"auto": "Automatic", "linear": "Linear map", "taesd": "Tiny autoencoder"}

class PerformanceForm(Form):
    def __init__(self) -> None:
        super().__init__("Performance")
        layout = QFormLayout(self)
        self.tile_batch = spin(0, rq.MAX_TILE_BATCH, 1, "", "tile_batch")
        self.tile_batch.setSpecialValueText("Auto")  # 0 = auto: the most that fit in memory
        self.tile_batch.setToolTip("Tiles sent to the model at once: higher is faster until memory runs out. "
                                   "Auto picks the most that fit on the GPU (a few on a CPU).")
        layout.addRow("Tile batch", self.tile_batch)
        self.device = QComboBox()
        self.device.setObjectName("device")
        self.device.setEditable(True)  # cuda:N too
        for d in ("auto", "cpu", "cuda", "mps"):
            self.device.addItem(d)
        layout.addRow("Device", self.device)
        self.dtype = QComboBox()
        self.dtype.setObjectName("dtype")
        for d in rq.DTYPES:
            self.dtype.addItem(d)
        layout.addRow("Precision", self.dtype)
        self.host_memory = QDoubleSpinBox()
        self.host_memory.setObjectName("host_memory")
        # 0 = no budget; 0.1-0.4 can be typed and are refused by the request, by name (never raised silently).
        self.host_memory.setRange(0.0, rq.MAX_HOST_MEMORY)
        self.host_memory.setDecimals(1)
        self.host_memory.setSingleStep(1.0)
        self.host_memory.setSuffix(" GiB")
        self.host_memory.setSpecialValueText("All available")
        self.host_memory.setKeyboardTracking(False)
        self.host_memory.setToolTip(
            "The most RAM a run may take, so other programs keep theirs while a big picture decodes. The tile "
            "batch on a CPU and the exact decode keep within it (spilling to the scratch disk: slower, the same "
            "picture); a run that cannot is refused with the smallest budget that would work. At least "
            f"{rq.MIN_HOST_MEMORY} GiB. All available: $PARADIFF_HOST_MEMORY if set, else what the machine has.")
        layout.addRow("Host memory", self.host_memory)
        self.compile = QCheckBox("Compile the model (torch.compile)")
        self.compile.setObjectName("compile")
        self.compile.setToolTip("Faster steps after a slow first one (a minute or more); the picture is the same. "
                                "SD models only.")
        layout.addRow(self.compile)
        self.preview = QComboBox()
        self.preview.setObjectName("preview")
        for p in rq.PREVIEWS:
            self.preview.addItem(PREVIEW_LABELS[p], p)
        self.preview.setToolTip(
            "How the tiles are shown while they are made; the picture is the same. Linear map: a blurry colour "
            "map, at no cost. Tiny autoencoder: a real decode through TAESD (or TAESDXL, TAEF1) from your model "
            "folders or hub cache, on at most a small share of the run's time (on a CPU, few tiles at a time); "
            "refused when there is none. Automatic: the tiny autoencoder when one is found, else the linear map.")
        layout.addRow("Previews", self.preview)
        # Not part of the request (it changes speed, never the picture): the window stores it as
        # a setting and applies it when a run starts, so it does not emit ``changed``.
        self.spare_core = QCheckBox("Keep a CPU core free for the interface")
        self.spare_core.setObjectName("spare_core")
        self.spare_core.setToolTip(
            "For models running on the CPU: the interface stays fluid (longest stall 33-45 ms instead of 55-131 ms "
            "on 2 cores) but generation is slower (1.4-1.8x on 2 cores, less with more cores). No effect on GPU runs.")
        layout.addRow(self.spare_core)
        self.tile_batch.valueChanged.connect(self._changed)
        self.device.currentTextChanged.connect(self._changed)
        self.dtype.currentIndexChanged.connect(self._changed)
        self.host_memory.valueChanged.connect(self._changed)
        self.compile.toggled.connect(self._changed)
        self.preview.currentIndexChanged.connect(self._changed)

    def values(self) -> dict[str, Any]:
        return {"tile_batch": self.tile_batch.value(), "device": self.device.currentText(),
                "dtype": self.dtype.currentText(), "host_memory": self.host_memory.value(),
                "compile": self.compile.isChecked(), "preview": self.preview.currentData()}

    def show_values(self, v: FormValues) -> None:
        with self.showing():
            self.tile_batch.setValue(v.tile_batch)
            self.device.setCurrentText(v.device)
            self.dtype.setCurrentIndex(max(0, self.dtype.findText(v.dtype)))
            self.host_memory.setValue(v.host_memory)
            self.compile.setChecked(v.compile)
            self.preview.setCurrentIndex(max(0, self.preview.findData(v.preview)))
