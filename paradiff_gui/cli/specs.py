"""The composite flags' own small languages: ``--control MODEL:IMAGE[:WEIGHT[:START:END]]``,
``--region X0,Y0,X1,Y1:PROMPT|key=value`` and a ``--regions`` JSON file → the request's objects."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..engine.core import request as rq
from ..engine.core.lora import parse_lora_arg

_REGION_SPEC = re.compile(r"\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*:(.*)", re.S)
_OPTION = re.compile(r"\s*([a-z][a-z0-9_]*)\s*=(.*)", re.S)


def parse_control_specs(specs: list[str], pres: list[str], modes: list[str] | None = None) -> list[dict[str, Any]]:
    """``--control MODEL:IMAGE[:WEIGHT[:START:END]]``, ``--control-pre`` and ``--control-mode`` →
    control objects."""
    modes = modes or []
    for name, given in (("control_pre", pres), ("control_mode", modes)):
        if given and len(given) not in (1, len(specs)):
            raise rq.RequestError(name, f"give it once (for every --control) or once per --control "
                                        f"({len(specs)}); got {len(given)}")
    out = []
    for i, spec in enumerate(specs):
        parts = spec.split(":")
        numbers: list[float] = []
        for count in (3, 1):  # WEIGHT:START:END, or WEIGHT alone
            if len(parts) >= 2 + count:
                try:
                    numbers = [float(v) for v in parts[-count:]]
                except ValueError:
                    continue
                parts = parts[:-count]
                break
        control: dict[str, Any] = {"model": parts[0], "image": ":".join(parts[1:]) or None}
        if not parts[0]:
            raise rq.RequestError(f"controls[{i}].model", f"must name a ControlNet: MODEL:IMAGE[:WEIGHT[:START:END]]; "
                                                          f"got {spec!r}")
        if numbers:
            control["weight"] = numbers[0]
        if len(numbers) == 3:
            control["start"], control["end"] = numbers[1], numbers[2]
        if pres:
            control["preprocessor"] = pres[0] if len(pres) == 1 else pres[i]
        if modes:
            control["mode"] = modes[0] if len(modes) == 1 else modes[i]
        out.append(control)
    return out


def parse_region_spec(spec: str, index: int) -> dict[str, Any]:
    """``X0,Y0,X1,Y1:PROMPT|key=value|...`` → a region object (keys: weight, feather, negative; any
    other key is a model option, e.g. terrain_difficulty)."""
    name = f"regions[{index}]"
    m = _REGION_SPEC.fullmatch(spec)
    if not m:
        raise rq.RequestError(name, f"must look like X0,Y0,X1,Y1:PROMPT (image px), e.g. 0,0,512,512:a castle; "
                                    f"got {spec!r}")
    region: dict[str, Any] = {"rect": [int(m.group(k)) for k in range(1, 5)], "extra": {}}
    parts = m.group(5).split("|")
    if _OPTION.fullmatch(parts[0]) is None:
        region["prompt"] = parts.pop(0).strip()
    for part in parts:
        opt = _OPTION.fullmatch(part)
        if opt is None:
            raise rq.RequestError(name, f"options after the prompt must be key=value, got {part!r}")
        key, value = opt.group(1), opt.group(2).strip()
        try:
            if key == "weight":
                region["weight"] = float(value)
            elif key == "feather":
                region["feather"] = int(value)
            elif key == "negative":
                region["negative_prompt"] = value
            else:
                region["extra"][key] = int(value)
        except ValueError:
            raise rq.RequestError(f"{name}.{key}", f"must be a number, got {value!r}") from None
    return region


def load_regions_file(path: str) -> list[dict[str, Any]]:
    """A ``--regions`` JSON file: a list of region objects (or {"regions": [...]}); a mask given as a
    file name is read (relative to the JSON file) and embedded, so the recipe replays anywhere."""
    from ..engine.core.regions import RegionError, mask_from_file

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise rq.RequestError("regions", f"cannot read {p}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise rq.RequestError("regions", f"{p} is not valid JSON ({exc})") from None
    if isinstance(data, dict) and "regions" in data:
        data = data["regions"]
    if not isinstance(data, list):
        raise rq.RequestError("regions", f"{p} must hold a list of region objects")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, dict) and isinstance(item.get("mask"), str) and not item["mask"].startswith("data:"):
            try:
                item = {**item, "mask": mask_from_file(str(p.parent / item["mask"]), f"regions[{i}].mask")}
            except RegionError as exc:
                raise rq.RequestError(exc.field, exc.message) from None
        out.append(item)
    return out



def lora_args(specs: list[str]) -> list[dict[str, Any]]:
    """``--lora FILE[:WEIGHT]`` flags → the request's LoRAs (checked, by field, when it is built)."""
    return [dict(zip(("path", "weight"), parse_lora_arg(spec), strict=True)) for spec in specs]
