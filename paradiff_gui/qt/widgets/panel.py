"""The generation panel: every field of a request, the tile-grid editor, and the plan summary.

The panel is the GUI's half of "one request object": ``request()`` builds a validated
:class:`GenerationRequest` from the widgets (or raises the engine's :class:`RequestError`), and
``set_request()`` shows one. It knows models only through :class:`ModelInfo`, so it can show
the right controls (prompt or the model's own options) without loading anything.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ...engine.api.requests import request_for
from ...engine.core import request as rq
from ...engine.core.modelinfo import ModelInfo
from ...engine.core.plan import TilePlan
from ...engine.core.request import SAMPLER_LABELS
from ...engine.models.catalogue import list_models
from ...engine.models.info import describe_model

SIZE_PRESETS = (("1K", 1024), ("2K", 2048), ("4K", 4096), ("8K", 8192), ("16K", 16384))
FUSION_LABELS = {
    "cosine": "Cosine (smooth)",
    "gaussian": "Gaussian",
    "uniform": "Uniform average",
    "none": "None (nearest tile)",
    "independent": "Independent tiles (baseline)",
}
ADD_FOLDER, ADD_FILE = "__add_folder__", "__add_file__"


@dataclass
class _Extra:
    key: str
    spin: QSpinBox
    label: QLabel
    default: int
    given: bool = False  # the shown request named it: keep it even at the default


def _round8(v: float) -> int:
    return max(rq.MIN_SIZE, min(rq.MAX_SIZE, round(v / 8.0) * 8))


class GenerationPanel(QWidget):
    """Emits ``changed`` whenever a value that affects the request changes."""

    changed = Signal()
    model_changed = Signal(object)  # ModelInfo

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._updating = False
        self._aspect = 1.0  # width / height, kept while the lock is on
        self.info: ModelInfo = describe_model(rq.DEFAULT_MODEL)
        self._extras: list[_Extra] = []
        self._extra_values: dict[str, object] = {}  # extra fields not shown as controls
        outer = QVBoxLayout(self)
        outer.setContentsMargins(8, 8, 8, 8)
        outer.setSpacing(10)

        # Model ------------------------------------------------------------------------------
        box = QGroupBox("Model")
        form = QFormLayout(box)
        self.model = QComboBox()
        self.model.setObjectName("model")
        self.model.setToolTip("Built-in models work offline; add a diffusers folder or a .safetensors file")
        form.addRow(self.model)
        self.model_note = QLabel()
        self.model_note.setWordWrap(True)
        self.model_note.setProperty("role", "note")
        form.addRow(self.model_note)
        outer.addWidget(box)

        # Prompt (text models) / model options (others) --------------------------------------
        self.prompt_box = QGroupBox("Prompt")
        pf = QVBoxLayout(self.prompt_box)
        self.prompt = QPlainTextEdit()
        self.prompt.setObjectName("prompt")
        self.prompt.setPlaceholderText("What to paint, e.g. a misty alpine valley at dawn, highly detailed")
        self.prompt.setFixedHeight(70)
        self.negative = QPlainTextEdit()
        self.negative.setObjectName("negative_prompt")
        self.negative.setPlaceholderText("Negative prompt (what to avoid)")
        self.negative.setFixedHeight(48)
        pf.addWidget(self.prompt)
        pf.addWidget(self.negative)
        outer.addWidget(self.prompt_box)
        self.options_box = QGroupBox("Model options")
        self.options_form = QFormLayout(self.options_box)
        outer.addWidget(self.options_box)

        # Size --------------------------------------------------------------------------------
        box = QGroupBox("Size")
        sf = QVBoxLayout(box)
        row = QHBoxLayout()
        self.preset = QComboBox()
        self.preset.setObjectName("size_preset")
        self.preset.addItem("Custom", None)
        for name, px in SIZE_PRESETS:
            self.preset.addItem(f"{name} ({px} px long side)", px)
        row.addWidget(self.preset, 1)
        sf.addLayout(row)
        row = QHBoxLayout()
        self.width_ = self._spin(rq.MIN_SIZE, rq.MAX_SIZE, 8, " px", "width")
        self.height_ = self._spin(rq.MIN_SIZE, rq.MAX_SIZE, 8, " px", "height")
        self.aspect_lock = QCheckBox("Keep ratio")
        self.aspect_lock.setObjectName("aspect_lock")
        self.aspect_lock.setToolTip("Changing the width changes the height with it, and back")
        row.addWidget(self.width_, 1)
        row.addWidget(QLabel("×"))
        row.addWidget(self.height_, 1)
        row.addWidget(self.aspect_lock)
        sf.addLayout(row)
        outer.addWidget(box)

        # Tile grid editor ---------------------------------------------------------------------
        box = QGroupBox("Tiles")
        tf = QFormLayout(box)
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
        tf.addRow(modes)
        self.tile = self._spin(rq.MIN_TILE, rq.MAX_TILE, 8, " px", "tile")
        tf.addRow("Tile", self.tile)
        grid_row = QHBoxLayout()
        self.rows = self._spin(1, rq.MAX_GRID, 1, "", "rows")
        self.cols = self._spin(1, rq.MAX_GRID, 1, "", "cols")
        grid_row.addWidget(self.rows)
        grid_row.addWidget(QLabel("×"))
        grid_row.addWidget(self.cols)
        self.grid_label = QLabel("Grid")
        tf.addRow(self.grid_label, grid_row)
        self.overlap = self._spin(0, rq.MAX_OVERLAP, 8, " px", "overlap")
        tf.addRow("Overlap", self.overlap)
        self.plan_info = QLabel()
        self.plan_info.setObjectName("plan_info")
        self.plan_info.setWordWrap(True)
        self.plan_info.setTextFormat(Qt.TextFormat.RichText)
        tf.addRow(self.plan_info)
        outer.addWidget(box)

        # Sampling -----------------------------------------------------------------------------
        box = QGroupBox("Sampling")
        mf = QFormLayout(box)
        self.steps = self._spin(1, rq.MAX_STEPS, 1, "", "steps")
        mf.addRow("Steps", self.steps)
        self.guidance = QDoubleSpinBox()
        self.guidance.setObjectName("guidance")
        self.guidance.setRange(rq.MIN_GUIDANCE, rq.MAX_GUIDANCE)
        self.guidance.setSingleStep(0.5)
        self.guidance.setDecimals(1)
        self.guidance_label = QLabel("Guidance")
        mf.addRow(self.guidance_label, self.guidance)
        self.sampler = QComboBox()
        self.sampler.setObjectName("sampler")
        mf.addRow("Sampler", self.sampler)
        seed_row = QHBoxLayout()
        # QSpinBox stops at 2³¹−1; seeds go to 2³²−1, which a double holds exactly.
        self.seed = QDoubleSpinBox()
        self.seed.setObjectName("seed")
        self.seed.setDecimals(0)
        self.seed.setRange(0, rq.MAX_SEED)
        self.seed_random = QPushButton("Random")
        self.seed_random.setObjectName("seed_random")
        self.seed_random.setToolTip("Draw a new random seed")
        self.seed_lock = QCheckBox("Lock")
        self.seed_lock.setObjectName("seed_lock")
        self.seed_lock.setToolTip("Keep this seed; unlocked, each Generate draws a new one")
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.seed_random)
        seed_row.addWidget(self.seed_lock)
        mf.addRow("Seed", seed_row)
        outer.addWidget(box)

        # Coherence ----------------------------------------------------------------------------
        box = QGroupBox("Coherence")
        cf = QFormLayout(box)
        self.fusion = QComboBox()
        self.fusion.setObjectName("fusion")
        for f in rq.FUSIONS[::-1]:
            self.fusion.addItem(FUSION_LABELS[f], f)
        cf.addRow("Fusion", self.fusion)
        self.jitter = QCheckBox("Move the grid each step")
        self.jitter.setObjectName("jitter")
        cf.addRow("Jitter", self.jitter)
        self.global_context = QDoubleSpinBox()
        self.global_context.setObjectName("global_context")
        self.global_context.setRange(0.0, 1.0)
        self.global_context.setSingleStep(0.1)
        self.global_context.setDecimals(2)
        self.global_context.setSpecialValueText("Off")
        cf.addRow("Global context", self.global_context)
        outer.addWidget(box)

        # Performance --------------------------------------------------------------------------
        box = QGroupBox("Performance")
        pfm = QFormLayout(box)
        self.tile_batch = self._spin(0, rq.MAX_TILE_BATCH, 1, "", "tile_batch")
        self.tile_batch.setSpecialValueText("Auto")  # 0 = auto: the most that fit in memory
        self.tile_batch.setToolTip("Tiles sent to the model at once: higher is faster until memory runs out. "
                                   "Auto picks the most that fit on the GPU (a few on a CPU).")
        pfm.addRow("Tile batch", self.tile_batch)
        self.device = QComboBox()
        self.device.setObjectName("device")
        self.device.setEditable(True)
        for d in ("auto", "cpu", "cuda", "mps"):
            self.device.addItem(d)
        pfm.addRow("Device", self.device)
        self.dtype = QComboBox()
        self.dtype.setObjectName("dtype")
        for d in rq.DTYPES:
            self.dtype.addItem(d)
        pfm.addRow("Precision", self.dtype)
        self.compile = QCheckBox("Compile the model (torch.compile)")
        self.compile.setObjectName("compile")
        self.compile.setToolTip("Faster steps after a slow first one (a minute or more); the picture is the same. "
                                "SD models only.")
        pfm.addRow(self.compile)
        # Not part of the request (it changes speed, never the picture): an app setting.
        self.spare_core = QCheckBox("Keep a CPU core free for the interface")
        self.spare_core.setObjectName("spare_core")
        self.spare_core.setToolTip(
            "For models running on the CPU: the interface stays fluid (longest stall 33-45 ms instead of 55-131 ms "
            "on 2 cores) but generation is slower (1.4-1.8x on 2 cores, less with more cores). No effect on GPU runs.")
        pfm.addRow(self.spare_core)
        outer.addWidget(box)
        outer.addStretch(1)

        self._fill_models()
        self._wire()
        self.set_request(request_for(rq.DEFAULT_MODEL))

    # -- construction helpers ------------------------------------------------------------------

    def _spin(self, lo: int, hi: int, step: int, suffix: str, name: str) -> QSpinBox:
        s = QSpinBox()
        s.setObjectName(name)
        s.setRange(lo, hi)
        s.setSingleStep(step)
        s.setSuffix(suffix)
        s.setKeyboardTracking(False)  # typing "2048" is one change, not four
        return s

    def _fill_models(self, extra: list[str] | None = None) -> None:
        self.model.blockSignals(True)
        current = self.model.currentData()
        self.model.clear()
        seen = set()
        for entry in list_models():
            self.model.addItem(describe_model(entry.id).label if entry.kind == "builtin" else
                               f"{entry.id}  ({entry.kind})", entry.id)
            seen.add(entry.id)
        for m in extra or []:
            if m not in seen:
                self.model.addItem(describe_model(m).label, m)
        self.model.insertSeparator(self.model.count())
        self.model.addItem("Add a model folder…", ADD_FOLDER)
        self.model.addItem("Add a .safetensors file…", ADD_FILE)
        idx = self.model.findData(current)
        self.model.setCurrentIndex(max(0, idx))
        self.model.blockSignals(False)

    def _wire(self) -> None:
        for w in (self.width_, self.height_, self.tile, self.rows, self.cols, self.overlap, self.steps,
                  self.tile_batch):
            w.valueChanged.connect(self._emit_changed)
        for w in (self.guidance, self.seed, self.global_context):
            w.valueChanged.connect(self._emit_changed)
        for c in (self.sampler, self.fusion, self.dtype):
            c.currentIndexChanged.connect(self._emit_changed)
        self.device.currentTextChanged.connect(self._emit_changed)
        self.jitter.toggled.connect(self._emit_changed)
        self.compile.toggled.connect(self._emit_changed)
        self.prompt.textChanged.connect(self._emit_changed)
        self.negative.textChanged.connect(self._emit_changed)
        self.by_tile.toggled.connect(self._mode_changed)
        self.model.activated.connect(self._model_activated)
        self.preset.activated.connect(self._preset_chosen)
        self.width_.valueChanged.connect(lambda v: self._size_edited("w", v))
        self.height_.valueChanged.connect(lambda v: self._size_edited("h", v))
        self.aspect_lock.toggled.connect(self._lock_toggled)
        self.seed_random.clicked.connect(self.randomise_seed)

    # -- reactions -------------------------------------------------------------------------------

    def _emit_changed(self, *_args) -> None:
        if not self._updating:
            self.changed.emit()

    def _mode_changed(self, *_args) -> None:
        grid = self.by_grid.isChecked()
        self.tile.setEnabled(not grid and not self.info.fixed_tile)
        self.rows.setEnabled(grid)
        self.cols.setEnabled(grid)
        self._emit_changed()

    def _lock_toggled(self, on: bool) -> None:
        if on:
            self._aspect = self.width_.value() / max(1, self.height_.value())

    def _size_edited(self, which: str, value: int) -> None:
        if self._updating:
            return
        if self.aspect_lock.isChecked():
            self._updating = True
            if which == "w":
                self.height_.setValue(_round8(value / self._aspect))
            else:
                self.width_.setValue(_round8(value * self._aspect))
            self._updating = False
            self.changed.emit()
        # The preset follows the long side (4096 x 2048 is "4K"), "Custom" otherwise.
        self.preset.setCurrentIndex(max(0, self.preset.findData(max(self.width_.value(), self.height_.value()))))

    def _preset_chosen(self, index: int) -> None:
        side = self.preset.itemData(index)
        if side is None:
            return
        w, h = self.width_.value(), self.height_.value()
        aspect = w / max(1, h)
        self._updating = True
        if aspect >= 1:
            self.width_.setValue(side)
            self.height_.setValue(_round8(side / aspect))
        else:
            self.height_.setValue(side)
            self.width_.setValue(_round8(side * aspect))
        self._updating = False
        self.preset.setCurrentIndex(index)
        self.changed.emit()

    def _model_activated(self, index: int) -> None:
        data = self.model.itemData(index)
        if data in (ADD_FOLDER, ADD_FILE):
            if data == ADD_FOLDER:
                path = QFileDialog.getExistingDirectory(self, "Add a diffusers model folder")
            else:
                path, _ = QFileDialog.getOpenFileName(self, "Add a model file", "", "safetensors (*.safetensors)")
            if path:
                self.add_model(path)
            else:
                self.model.setCurrentIndex(max(0, self.model.findData(self.info.id)))
            return
        self.select_model(data, apply_defaults=True)

    def add_model(self, model: str) -> None:
        """Add ``model`` to the picker (if new) and select it."""
        if self.model.findData(model) < 0:
            self.model.insertItem(max(0, self.model.count() - 3), describe_model(model).label, model)
        self.select_model(model, apply_defaults=True)

    def added_models(self) -> list[str]:
        builtin = {e.id for e in list_models()}
        return [self.model.itemData(i) for i in range(self.model.count())
                if self.model.itemData(i) not in (None, ADD_FOLDER, ADD_FILE) and self.model.itemData(i) not in builtin]

    def select_model(self, model: str, apply_defaults: bool = False) -> None:
        if self.model.findData(model) < 0:
            self.model.insertItem(max(0, self.model.count() - 3), describe_model(model).label, model)
        self.model.setCurrentIndex(self.model.findData(model))
        self.info = describe_model(model)
        self._apply_model_ui()
        if apply_defaults:
            # A model's own defaults (tile, steps, sampler...) replace the fields they name.
            base = request_for(model)
            current = self._request_or_none()
            keep = {} if current is None else {
                "prompt": current.prompt, "negative_prompt": current.negative_prompt, "seed": current.seed}
            self.set_request(base.replace(**keep), lock_seed=self.seed_lock.isChecked())
        self.model_changed.emit(self.info)
        self._emit_changed()

    def _apply_model_ui(self) -> None:
        info = self.info
        self.prompt_box.setVisible(info.text)
        self.guidance.setVisible(info.guidance)
        self.guidance_label.setVisible(info.guidance)
        notes = []
        if info.output == "height":
            notes.append("Makes 16-bit heightmaps")
        if not info.text:
            notes.append("not conditioned on text")
        if info.fixed_tile:
            notes.append(f"tiles are fixed at {info.native_tile} px")
        self.model_note.setText("; ".join(notes) + ("." if notes else ""))
        self.model_note.setVisible(bool(notes))
        current = self.sampler.currentData()
        self.sampler.blockSignals(True)
        self.sampler.clear()
        for s in info.samplers:
            self.sampler.addItem(SAMPLER_LABELS.get(s, s), s)
        self.sampler.setCurrentIndex(max(0, self.sampler.findData(current)))
        self.sampler.blockSignals(False)
        # Backend options as spin boxes, rebuilt for the model.
        for e in self._extras:
            self.options_form.removeRow(e.spin)
        self._extras = []
        for key, label, lo, hi, default in info.controls:
            spin = self._spin(lo, hi, 1, "", key)
            spin.setValue(int(default))
            spin.valueChanged.connect(self._emit_changed)
            lab = QLabel(label)
            self.options_form.addRow(lab, spin)
            self._extras.append(_Extra(key, spin, lab, int(default)))
        self.options_box.setVisible(bool(self._extras))
        if info.fixed_tile:
            self.by_tile.setChecked(True)
        self.by_grid.setEnabled(not info.fixed_tile)
        self._mode_changed()

    def show_plan(self, plan) -> None:
        """Show the derived half of the editor: rows × columns when planning by tile size, the
        tile size when planning by grid (the disabled fields follow the plan)."""
        pairs = ((self.rows, plan.rows), (self.cols, plan.cols)) if self.by_tile.isChecked() else \
            ((self.tile, plan.tile_w * plan.scale),)
        for spin, value in pairs:
            spin.blockSignals(True)
            spin.setValue(value)
            spin.blockSignals(False)

    def editor_plan(self, width: int, height: int) -> TilePlan | None:
        """The tile editor's plan (grid or tile size, and overlap) laid on a ``width`` × ``height``
        picture that has no recipe of its own; None when the editor's values do not fit it."""
        grid = (self.rows.value(), self.cols.value()) if self.by_grid.isChecked() else None
        try:
            return TilePlan.create(height, width, overlap=self.overlap.value(), grid=grid,
                                   tile=None if grid else self.tile.value())
        except (rq.RequestError, ValueError):
            return None

    def randomise_seed(self) -> None:
        self.seed.setValue(random.randrange(0, rq.MAX_SEED + 1))

    def prepare_run(self) -> None:
        """Before Generate: an unlocked seed is drawn anew, so each run differs."""
        if not self.seed_lock.isChecked():
            self.randomise_seed()

    # -- request <-> widgets ------------------------------------------------------------------------

    def request(self) -> rq.GenerationRequest:
        """The request the widgets describe; raises RequestError naming the bad field."""
        grid = (self.rows.value(), self.cols.value()) if self.by_grid.isChecked() else None
        extra = dict(self._extra_values)
        # A backend option at its default is left out unless the request it came from named it,
        # so a loaded request comes back exactly as it was.
        extra.update({e.key: e.spin.value() for e in self._extras if e.given or e.spin.value() != e.default})
        return rq.GenerationRequest(
            model=self.model.currentData() or self.info.id,
            prompt=self.prompt.toPlainText() if self.info.text else "",
            negative_prompt=self.negative.toPlainText() if self.info.text else "",
            width=self.width_.value(),
            height=self.height_.value(),
            grid=grid,
            tile=None if grid else self.tile.value(),
            overlap=self.overlap.value(),
            steps=self.steps.value(),
            guidance=self.guidance.value() if self.info.guidance else 1.0,
            sampler=self.sampler.currentData() or self.info.samplers[0],
            seed=int(self.seed.value()),
            fusion=self.fusion.currentData(),
            jitter=self.jitter.isChecked(),
            global_context=round(self.global_context.value(), 2),
            tile_batch=self.tile_batch.value() or "auto",
            device=self.device.currentText().strip(),
            dtype=self.dtype.currentText(),
            compile=self.compile.isChecked(),
            extra=extra,
        )

    def _request_or_none(self) -> rq.GenerationRequest | None:
        try:
            return self.request()
        except rq.RequestError:
            return None

    def set_request(self, request: rq.GenerationRequest, lock_seed: bool = True) -> None:
        """Show ``request`` in the widgets (a loaded request keeps its seed: the lock goes on)."""
        self._updating = True
        try:
            if self.model.findData(request.model) < 0:
                self.model.insertItem(max(0, self.model.count() - 3), describe_model(request.model).label,
                                      request.model)
            self.model.setCurrentIndex(self.model.findData(request.model))
            self.info = describe_model(request.model)
            self._apply_model_ui()
            self.prompt.setPlainText(request.prompt)
            self.negative.setPlainText(request.negative_prompt)
            self.width_.setValue(request.width)
            self.height_.setValue(request.height)
            self._aspect = request.width / request.height
            self.preset.setCurrentIndex(max(0, self.preset.findData(max(request.width, request.height))))
            try:
                plan = self.info.plan(request) if request.grid is None else None
            except rq.RequestError:
                plan = None  # still shown; the plan summary says what is wrong
            if request.grid is not None:
                self.by_grid.setChecked(True)
                self.rows.setValue(request.grid[0])
                self.cols.setValue(request.grid[1])
            else:
                self.by_tile.setChecked(True)
                if plan is not None:
                    self.rows.setValue(plan.rows)
                    self.cols.setValue(plan.cols)
            self.tile.setValue(request.tile if request.tile is not None else self.info.native_tile)
            tile_px = request.tile if request.tile is not None else self.info.native_tile
            self.overlap.setValue(request.overlap if request.overlap is not None else tile_px // 4)
            self.steps.setValue(request.steps)
            self.guidance.setValue(request.guidance)
            self.sampler.setCurrentIndex(max(0, self.sampler.findData(request.sampler)))
            self.seed.setValue(request.seed)
            self.seed_lock.setChecked(lock_seed)
            self.fusion.setCurrentIndex(max(0, self.fusion.findData(request.fusion)))
            self.jitter.setChecked(request.jitter)
            self.global_context.setValue(request.global_context)
            self.tile_batch.setValue(0 if request.tile_batch == "auto" else request.tile_batch)
            self.device.setCurrentText(request.device)
            self.dtype.setCurrentIndex(max(0, self.dtype.findText(request.dtype)))
            self.compile.setChecked(request.compile)
            shown = {e.key for e in self._extras}
            for e in self._extras:
                e.given = e.key in request.extra
                if e.given and isinstance(request.extra[e.key], int):
                    e.spin.setValue(request.extra[e.key])
            self._extra_values = {k: v for k, v in request.extra.items() if k not in shown}
            self._mode_changed()
        finally:
            self._updating = False
        self.changed.emit()
