"""The ControlNet form: one row per ControlNet with its control image, preprocessor, weight and
step range; added from the ControlNets found in the model folders (``find_controlnets``, on a
worker) or from a file/folder dialog, removed one by one.

Like the LoRA form (both are a :class:`~.parts.PartsForm`: the list, the menu, the scan, the
greying), each row keeps its request's :class:`Control` whole (a ``downscale`` or an unset
preprocessor the form has no field for), so a shown request comes back exactly; the fields replace
only what they edit. Each row checks itself as the request would (``parse_control``) and names its
bad field under it; the plan summary says the same for the whole request. Models that take no
ControlNets (the built-ins, SD3) grey the form with the reason, and their requests get none
(``mapping.to_request``); SD 1.x/2.x, SDXL and FLUX.1 take them. A union ControlNet's row shows a
Mode combo (the kinds of map that model knows, read from its config or header) and names a missing
or unknown mode as the engine would (``check_mode``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
)

from ...engine.core.control import (
    MAX_CONTROLS,
    MAX_WEIGHT,
    MIN_WEIGHT,
    PREPROCESSORS,
    UNION_MODE_TIPS,
    Control,
    ControlError,
    parse_control,
)
from ...engine.core.modelinfo import ModelInfo
from ...engine.core.request import RequestError
from ...engine.models.sd.control import check_mode, union_modes
from .mapping import takes_controls
from .parts import PartRow, PartsForm, part_name

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


class ControlRow(PartRow):
    """One ControlNet: name and remove; image and preprocessor; weight, start, end; its error.
    Each line is a layout of its own: a new field is a widget on a line and one ``edited`` emit."""

    def __init__(self, spec: Control) -> None:
        super().__init__(spec, "ControlNet", "control_remove")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        outer.setSpacing(2)

        top = QHBoxLayout()
        self.label = QLabel(part_name(spec.model))
        self.label.setToolTip(spec.model)
        self.label.setMinimumWidth(1)  # a long name is clipped, not a wider panel
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        top.addWidget(self.label, 1)
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
        # A union ControlNet reads several kinds of map: which one this image is.
        self.known = union_modes(spec.model)
        self.mode = QComboBox()
        self.mode.setObjectName("control_mode")
        self.mode.addItem("auto", None)
        self.mode.setItemData(0, "From the preprocessor: tile → tile, canny → canny (a ready-made map needs a "
                                 "mode)", 3)  # Qt.ToolTipRole
        for name in self.known or ():
            self.mode.addItem(name, name)
            self.mode.setItemData(self.mode.count() - 1, UNION_MODE_TIPS[name], 3)
        self.mode.setToolTip("The kind of map the control image is (a union ControlNet reads several)")
        self.mode.setVisible(self.known is not None)
        middle.addWidget(self.mode)
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
        self.image.clicked.connect(self._pick_image)
        self.pre.activated.connect(lambda i: self.edited.emit({"preprocessor": self.pre.itemData(i)}))
        self.mode.activated.connect(lambda i: self.edited.emit({"mode": self.mode.itemData(i)}))
        self.weight.valueChanged.connect(lambda w: self.edited.emit({"weight": round(w, 2)}))
        self.start.valueChanged.connect(lambda x: self.edited.emit({"start": round(x, 2)}))
        self.end.valueChanged.connect(lambda x: self.edited.emit({"end": round(x, 2)}))

    def show_spec(self) -> None:
        s = self.spec
        for w in (self.weight, self.start, self.end, self.pre, self.mode):
            w.blockSignals(True)
        self.image.setText(Path(s.image).name if s.image else "Choose a control image…")
        self.image.setToolTip((s.image + "\n" if s.image else "") + "The control image, read at canvas size; "
                              "each tile gets its own crop of it")
        self.pre.setCurrentIndex(PREPROCESSORS.index(s.pre))
        self.weight.setValue(s.weight)
        self.start.setValue(s.start)
        self.end.setValue(s.end)
        self.mode.setCurrentIndex(max(0, self.mode.findData(s.mode)) if s.mode else 0)
        for w in (self.weight, self.start, self.end, self.pre, self.mode):
            w.blockSignals(False)

    def _pick_image(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Control image", str(Path(self.spec.image or "").parent),
                                              IMAGE_FILTER)
        if path:
            self.edited.emit({"image": path})
            self.show_spec()

    def check(self, index: int) -> None:
        """Show what the request would say about this ControlNet (the panel has no init image)."""
        try:
            parse_control(self.spec, index, has_init_image=False)
            check_mode(self.spec, self.known, index, self.spec.model)  # as the engine will, once it loads
        except (ControlError, RequestError) as exc:
            field = exc.field.split(".", 1)[-1]
            # The panel has no init image, so "or init_image" would point at nothing here.
            message = "choose a control image (without an init image, tile has nothing else to read)" \
                if field == "image" and self.spec.image is None else exc.message
            self.error.setText(f"{field}: {message}")
            self.error.show()
            return
        self.error.clear()
        self.error.hide()


class ControlsForm(PartsForm):
    field, limit, what = "controlnets", MAX_CONTROLS, "ControlNet"
    found_name = "control_found"

    def __init__(self) -> None:
        super().__init__("ControlNet")
        self.add_file = self.add_button("File…", "control_add", lambda: QFileDialog.getOpenFileName(
            self, "Add a ControlNet", "", CONTROLNET_FILTER)[0], "Add a ControlNet from its single .safetensors file")
        self.add_folder = self.add_button(
            "Folder…", "control_add_folder", lambda: QFileDialog.getExistingDirectory(self, "Add a ControlNet folder"),
            "Add a ControlNet from its diffusers folder (config.json + weights)")

    def controlnets(self) -> tuple[Control, ...]:
        return self.specs()

    def new_spec(self, path: str) -> Control:
        return Control(path, None, preprocessor="tile")

    def make_row(self, spec: Control) -> ControlRow:
        return ControlRow(spec)

    def finder(self) -> Callable[[], list[Path]]:
        from ...engine.models.sd.control import find_controlnets

        return find_controlnets

    def takes(self, info: ModelInfo) -> bool:
        return takes_controls(info)

    def refusal(self, info: ModelInfo) -> str:
        why = "Paradiff runs no SD3 ControlNets yet" if info.positions else "it takes no ControlNets"
        return f"{info.label}: {why} (SD 1.x/2.x, SDXL and FLUX.1 models take them)"
