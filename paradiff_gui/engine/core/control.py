"""ControlNet units of a request: plain data, validated like every request field.

A unit names a ControlNet model, its control image (``None``: the init image, for the *tile*
preprocessor), how strongly it steers (``weight``, diffusers' ``controlnet_conditioning_scale``)
and over which fraction of the steps (``start`` ≤ step/steps < ``end``, diffusers'
``control_guidance_start/end``). The image is read once at canvas size and each tile gets its
own crop of it (models/control_images.py, models/sd/control.py).

A *union* ControlNet (diffusers' ``ControlNetUnionModel``: xinsir's controlnet-union-sdxl-1.0 and
its ProMax) reads several kinds of map; ``mode`` says which kind this unit's image is (diffusers'
``control_mode``). Units naming the same union model run as one call with several conditions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# tile: the picture itself (init image or the given one), optionally downscaled to soften it;
# canny: OpenCV's Canny edges of the picture; none: the image is a ready-made map (depth, pose...).
PREPROCESSORS = ("tile", "canny", "none")
MAX_CONTROLS = 8
MIN_WEIGHT, MAX_WEIGHT = 0.0, 2.0
MAX_DOWNSCALE = 16
# A union ControlNet's control types, in the order of its ``control_mode`` index (xinsir's model
# cards; the first six in controlnet-union-sdxl-1.0, all eight in its ProMax). Each name stands
# for the maps of its kind: hed also pidi/scribble/ted soft edges, canny also lineart/mlsd.
UNION_MODES = ("openpose", "depth", "hed", "canny", "normal", "segment", "tile", "repaint")
UNION_MODE_TIPS = {
    "openpose": "a pose skeleton (OpenPose)", "depth": "a depth map", "hed": "soft edges (HED, PiDi, scribble, TED)",
    "canny": "hard lines (canny, lineart, anime lineart, MLSD)", "normal": "a normal map",
    "segment": "a segmentation map", "tile": "the picture itself (tile; ProMax)",
    "repaint": "the picture with its holes blacked out (repaint; ProMax)",
}
# The mode a preprocessor's map is when none is given (a ready-made map has no default: say it).
_MODE_OF_PRE = {"tile": "tile", "canny": "canny"}


class ControlError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass(frozen=True)
class Control:
    """One ControlNet with its control image, weight and step range."""

    model: str
    image: str | None = None  # a file; None: the request's init image (tile preprocessor)
    weight: float = 1.0
    start: float = 0.0  # fraction of the steps where the control starts steering
    end: float = 1.0  # ... and where it stops
    preprocessor: str | None = None  # PREPROCESSORS; None: tile without an image of its own, else none
    downscale: int = 1  # tile: the picture shrunk by this factor and scaled back (a softer guide)
    mode: str | None = None  # union ControlNets: UNION_MODES; None: from the preprocessor (tile, canny)

    @property
    def pre(self) -> str:
        """The preprocessor that runs: the given one, else ``tile`` for the init image, else ``none``."""
        if self.preprocessor is not None:
            return self.preprocessor
        return "tile" if self.image is None else "none"

    @property
    def union_mode(self) -> str | None:
        """The kind of map a union ControlNet is told it reads: the given mode, else the
        preprocessor's (tile → tile, canny → canny), else None (a ready-made map: it must be said)."""
        return self.mode if self.mode is not None else _MODE_OF_PRE.get(self.pre)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) <= hi:  # also NaN
        raise ControlError(name, f"must be a number from {lo:g} to {hi:g}, got {value!r}")
    return float(value)


def parse_control(value: Any, index: int, has_init_image: bool) -> Control:
    """A Control from a Control or a JSON object, checked; errors name ``controls[i].field``."""
    name = f"controls[{index}]"
    if isinstance(value, Control):
        value = value.to_dict()
    if not isinstance(value, dict):
        raise ControlError(name, f"must be an object with model, image, weight, start, end; got {value!r}")
    known = {f.name for f in dataclasses.fields(Control)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ControlError(f"{name}.{unknown[0]}", f"is not a control field (known: {', '.join(sorted(known))})")
    model = value.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 4096:
        raise ControlError(f"{name}.model", "must name a ControlNet: a diffusers folder or a .safetensors file")
    image = value.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip() or len(image) > 4096):
        raise ControlError(f"{name}.image", f"must be the path of an image file, got {image!r}")
    weight = _number(f"{name}.weight", value.get("weight", 1.0), MIN_WEIGHT, MAX_WEIGHT)
    start = _number(f"{name}.start", value.get("start", 0.0), 0.0, 1.0)
    end = _number(f"{name}.end", value.get("end", 1.0), 0.0, 1.0)
    if start >= end:
        raise ControlError(f"{name}.start", f"must be below end (fractions of the steps, 0 ≤ start < end ≤ 1); "
                                            f"got start {start:g}, end {end:g}")
    pre = value.get("preprocessor")
    if pre is not None and pre not in PREPROCESSORS:
        raise ControlError(f"{name}.preprocessor", f"must be one of {', '.join(PREPROCESSORS)}; got {pre!r}")
    downscale = value.get("downscale", 1)
    if isinstance(downscale, bool) or not isinstance(downscale, int) or not 1 <= downscale <= MAX_DOWNSCALE:
        raise ControlError(f"{name}.downscale", f"must be a whole number from 1 to {MAX_DOWNSCALE}, got {downscale!r}")
    mode = value.get("mode")
    if mode is not None and mode not in UNION_MODES:
        raise ControlError(f"{name}.mode", f"must be one of {', '.join(UNION_MODES)} (the kind of map a union "
                                           f"ControlNet reads); got {mode!r}")
    control = Control(model, image, weight, start, end, pre, downscale, mode)
    if image is None and not has_init_image:
        raise ControlError(f"{name}.image", "is needed without an init image (the tile preprocessor reads the init "
                                            "image when no control image is given): give a control image or "
                                            "init_image")
    if control.pre == "none" and image is None:
        raise ControlError(f"{name}.preprocessor", "none takes a ready-made map: give its image, or use tile")
    return control


def parse_controls(values: Any, has_init_image: bool) -> tuple[Control, ...]:
    if not isinstance(values, (list, tuple)):
        raise ControlError("controls", "must be a list of controls")
    if len(values) > MAX_CONTROLS:
        raise ControlError("controls", f"at most {MAX_CONTROLS} ControlNets; got {len(values)}")
    return tuple(parse_control(v, i, has_init_image) for i, v in enumerate(values))
