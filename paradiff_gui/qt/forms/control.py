"""The ControlNet form: one row per ControlNet with its control image, preprocessor, weight and
step range; added from the ControlNets found in the model folders (``find_controlnets``, on a
worker) or from a file/folder dialog, removed one by one.

Like the LoRA form, each row keeps its request's :class:`Control` whole (a ``downscale`` or an
unset preprocessor the form has no field for), so a shown request comes back exactly; the fields
replace only what they edit. Each row checks itself as the request would (``parse_control``) and
names its bad field under it; the plan summary says the same for the whole request. Models that
take no ControlNets (the built-ins, SD3) grey the form with the reason, and their requests get none
(``mapping.to_request``); SD 1.x/2.x, SDXL and FLUX.1 take them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
)

from ...engine.core.control import (
    MAX_CONTROLS,
    MAX_WEIGHT,
    MIN_WEIGHT,
    PREPROCESSORS,
    Control,
    ControlError,
    parse_control,
)
from ...engine.core.modelinfo import ModelInfo
from ..jobs import Jobs
from .base import Form
from .mapping import FormValues, takes_controls

CONTROLNET_FILTER = "ControlNet (*.safetensors)"
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.tif *.tiff *.bmp)"
_PRE_TIPS = {
    "tile": "tile: the picture itself (the control image, else the init image) — keeps an upscale or restyle "
            "faithful",
    "canny": "canny: the control image's edges (OpenCV Canny)",
    "none": "none: the control image is a ready-made map (depth, pose…)",
}


def _fraction(name: str, tip: str) -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setObjectName(name)
    s.setRange(0.0, 1.0)
    s.setDecimals(2)
    s.setSingleStep(0.05)
    s.setKeyboardTracking(False)
    s.setToolTip(tip)
    return s


class ControlRow(QFrame):
    """One ControlNet: name and remove; image and preprocessor; weight, start, end; its error."""

    def __init__(self, spec: Control, form: ControlsForm) -> None:
        super().__init__()
        self.spec = spec
        self.setFrameShape(QFrame.Shape.StyledPanel)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        outer.setSpacing(2)

        top = QHBoxLayout()
        p = Path(spec.model)
        self.label = QLabel((p.stem if p.suffix == ".safetensors" else p.name) or spec.model)
        self.label.setToolTip(spec.model)
        self.label.setMinimumWidth(1)  # a long name is clipped, not a wider panel
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        top.addWidget(self.label, 1)
        self.remove = QToolButton()
        self.remove.setObjectName("control_remove")
        self.remove.setText("✕")
        self.remove.setToolTip("Remove this ControlNet")
        top.addWidget(self.remove)
        outer.addLayout(top)

        middle = QHBoxLayout()
        self.image = QPushButton()
        self.image.setObjectName("control_image")
        self.image.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.image.setMinimumWidth(80)
        middle.addWidget(self.image, 1)
        self.pre = QComboBox()
        self.pre.setObjectName("control_pre")
        for name in PREPROCESSORS:
            self.pre.addItem(name, name)
            self.pre.setItemData(self.pre.count() - 1, _PRE_TIPS[name], 3)  # Qt.ToolTipRole
        self.pre.setToolTip("What the ControlNet sees: " + "; ".join(_PRE_TIPS[n] for n in PREPROCESSORS))
        middle.addWidget(self.pre)
        outer.addLayout(middle)

        bottom = QHBoxLayout()
        self.weight = QDoubleSpinBox()
        self.weight.setObjectName("control_weight")
        self.weight.setRange(MIN_WEIGHT, MAX_WEIGHT)
        self.weight.setDecimals(2)
        self.weight.setSingleStep(0.05)
        self.weight.setKeyboardTracking(False)
        self.weight.setToolTip("How strongly the ControlNet steers: 1 as trained, 0 not at all")
        bottom.addWidget(QLabel("Weight"))
        bottom.addWidget(self.weight)
        bottom.addStretch(1)
        steps = QLabel("Steps")
        steps.setToolTip("The fraction of the steps over which the ControlNet steers (0 to 1: all of them)")
        bottom.addWidget(steps)
        self.start = _fraction("control_start", "The fraction of the steps where the ControlNet starts steering")
        bottom.addWidget(self.start)
        bottom.addWidget(QLabel("–"))
        self.end = _fraction("control_end", "The fraction of the steps where it stops steering")
        bottom.addWidget(self.end)
        outer.addLayout(bottom)

        self.error = QLabel()
        self.error.setObjectName("control_error")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("QLabel { color: #d04040; } QLabel:disabled { color: palette(mid); }")
        self.error.hide()
        outer.addWidget(self.error)

        self.show_spec()
        self.image.clicked.connect(lambda: form._pick_image(self))
        self.pre.activated.connect(lambda i: form._edit(self, preprocessor=self.pre.itemData(i)))
        self.weight.valueChanged.connect(lambda w: form._edit(self, weight=round(w, 2)))
        self.start.valueChanged.connect(lambda x: form._edit(self, start=round(x, 2)))
        self.end.valueChanged.connect(lambda x: form._edit(self, end=round(x, 2)))
        self.remove.clicked.connect(lambda: form.remove(form.rows.index(self)))

    def show_spec(self) -> None:
        s = self.spec
        for w in (self.weight, self.start, self.end, self.pre):
            w.blockSignals(True)
        self.image.setText(Path(s.image).name if s.image else "Choose a control image…")
        self.image.setToolTip((s.image + "\n" if s.image else "") + "The control image, read at canvas size; "
                              "each tile gets its own crop of it")
        self.pre.setCurrentIndex(PREPROCESSORS.index(s.pre))
        self.weight.setValue(s.weight)
        self.start.setValue(s.start)
        self.end.setValue(s.end)
        for w in (self.weight, self.start, self.end, self.pre):
            w.blockSignals(False)

    def check(self, index: int) -> None:
        """Show what the request would say about this ControlNet (the panel has no init image)."""
        try:
            parse_control(self.spec, index, has_init_image=False)
        except ControlError as exc:
            field = exc.field.split(".", 1)[-1]
            # The panel has no init image, so "or init_image" would point at nothing here.
            message = "choose a control image (without an init image, tile has nothing else to read)" \
                if field == "image" and self.spec.image is None else exc.message
            self.error.setText(f"{field}: {message}")
            self.error.show()
            return
        self.error.clear()
        self.error.hide()


class ControlsForm(Form):
    def __init__(self) -> None:
        super().__init__("ControlNet")
        self.rows: list[ControlRow] = []
        self._jobs = Jobs(self, workers=1)  # the model folders are walked off the GUI thread
        outer = QVBoxLayout(self)
        self.list_layout = QVBoxLayout()
        outer.addLayout(self.list_layout)
        buttons = QHBoxLayout()
        self.found = QComboBox()
        self.found.setObjectName("control_found")
        self.found.setToolTip("ControlNets found in the model folders ($PARADIFF_MODEL_PATH and the app's models "
                              "folder)")
        self.found.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.found.setMinimumContentsLength(8)
        self.found.activated.connect(self._add_found)
        buttons.addWidget(self.found, 1)
        self.add_file = QPushButton("File…")
        self.add_file.setObjectName("control_add")
        self.add_file.setToolTip("Add a ControlNet from its single .safetensors file")
        self.add_file.clicked.connect(self._add_from_dialog)
        buttons.addWidget(self.add_file)
        self.add_folder = QPushButton("Folder…")
        self.add_folder.setObjectName("control_add_folder")
        self.add_folder.setToolTip("Add a ControlNet from its diffusers folder (config.json + weights)")
        self.add_folder.clicked.connect(self._add_folder_from_dialog)
        buttons.addWidget(self.add_folder)
        outer.addLayout(buttons)
        self.refresh_found([])

    # -- the list ---------------------------------------------------------------------------------

    def controlnets(self) -> tuple[Control, ...]:
        return tuple(row.spec for row in self.rows)

    def add(self, model: str, image: str | None = None) -> None:
        if len(self.rows) >= MAX_CONTROLS:
            return
        self._append(Control(str(model), image, preprocessor="tile"))
        self._changed()

    def remove(self, index: int) -> None:
        row = self.rows.pop(index)
        self.list_layout.removeWidget(row)
        row.deleteLater()
        self._update()
        self._changed()

    def _append(self, spec: Control) -> None:
        row = ControlRow(spec, self)
        self.rows.append(row)
        self.list_layout.addWidget(row)
        self._update()

    def _edit(self, row: ControlRow, **fields: Any) -> None:
        row.spec = replace(row.spec, **fields)
        row.check(self.rows.index(row))
        self._changed()

    def _update(self) -> None:
        room = len(self.rows) < MAX_CONTROLS
        self.add_file.setEnabled(room)
        self.add_folder.setEnabled(room)
        self.found.setEnabled(room and self.found.count() > 1)
        for i, row in enumerate(self.rows):
            row.check(i)

    # -- adding -----------------------------------------------------------------------------------

    def scan(self) -> None:
        """Look for ControlNets in the model folders on a worker (configs and headers only), then list them."""
        from ...engine.models.sd.control import find_controlnets

        self._jobs.submit(find_controlnets, self.refresh_found)

    def refresh_found(self, paths: list[Path]) -> None:
        """List ``paths`` in the "from the model folders" menu."""
        self.found.clear()
        self.found.addItem("Model folders…" if paths else "None in the model folders")
        for p in paths:
            self.found.addItem(p.stem if p.is_file() else p.name, str(p))
            self.found.setItemData(self.found.count() - 1, str(p), 3)  # Qt.ToolTipRole: the whole path
        self._update()

    def _add_found(self, index: int) -> None:
        path = self.found.itemData(index)
        self.found.setCurrentIndex(0)
        if path:
            self.add(path)

    def _add_from_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Add a ControlNet", "", CONTROLNET_FILTER)
        if path:
            self.add(path)

    def _add_folder_from_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Add a ControlNet folder")
        if path:
            self.add(path)

    def _pick_image(self, row: ControlRow) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Control image", str(Path(row.spec.image or "").parent),
                                              IMAGE_FILTER)
        if path:
            self._edit(row, image=path)
            row.show_spec()

    # -- the form protocol ------------------------------------------------------------------------

    def set_model(self, info: ModelInfo) -> None:
        on = takes_controls(info)
        self.setEnabled(on)
        why = "Paradiff runs no SD3 ControlNets yet" if info.positions else "it takes no ControlNets"
        self.setToolTip("" if on else f"{info.label}: {why} (SD 1.x/2.x, SDXL and FLUX.1 models take them)")

    def values(self) -> dict[str, Any]:
        return {"controlnets": self.controlnets()}

    def show_values(self, v: FormValues) -> None:
        with self.showing():
            while self.rows:
                row = self.rows.pop()
                self.list_layout.removeWidget(row)
                row.deleteLater()
            for spec in v.controlnets:
                self._append(spec)
