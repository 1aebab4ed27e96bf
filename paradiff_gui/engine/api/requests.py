"""One way to build a request from what a person typed or clicked, for the CLI and the app alike.

- **Model defaults**: a request for ``model`` starts from that model's own defaults (steps,
  sampler, tile...) and the person's fields go on top (:func:`request_for`).
- **Model controls** (``ModelInfo.controls``, e.g. the terrain's difficulty): the same table
  draws the app's spin boxes and checks ``--set KEY=VALUE`` in the CLI (:func:`model_controls`).
- **One seed policy**: a request with no seed gets one drawn from the system's entropy
  (:func:`draw_seed`); a replayed request keeps its own.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

from ..core.modelinfo import ModelInfo
from ..core.request import DEFAULT_MODEL, MAX_SEED, GenerationRequest, RequestError
from ..models.info import describe_model
from ..models.registry import model_defaults


def draw_seed() -> int:
    """A fresh seed from 0 to ``MAX_SEED`` (the system's entropy, not the global ``random`` state)."""
    return random.SystemRandom().randint(0, MAX_SEED)


def request_for(model: str = DEFAULT_MODEL, **fields: Any) -> GenerationRequest:
    """A request for ``model`` with that model's own defaults under the given ``fields``."""
    return GenerationRequest(model=model, **{**model_defaults(model), **fields})


def parse_settings(pairs: Iterable[str]) -> dict[str, str]:
    """``["terrain_difficulty=60", ...]`` → ``{"terrain_difficulty": "60"}`` (values stay text
    until :func:`model_controls` checks them against the model)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise RequestError("set", f"must be KEY=VALUE (e.g. terrain_difficulty=60), got {pair!r}")
        out[key] = value
    return out


def model_controls(info: ModelInfo, values: Mapping[str, Any]) -> dict[str, int]:
    """Check ``values`` against the model's controls: known keys, whole numbers, in range."""
    table = {c[0]: c for c in info.controls}
    out: dict[str, int] = {}
    for key, raw in values.items():
        if key not in table:
            known = ", ".join(table) if table else "none"
            raise RequestError(key, f"is not an option of {info.id} (its options: {known})")
        _, _, lo, hi, _ = table[key]
        try:
            value = raw if isinstance(raw, int) and not isinstance(raw, bool) else int(str(raw), 10)
        except ValueError:
            raise RequestError(key, f"must be a whole number from {lo} to {hi}, got {raw!r}") from None
        if not lo <= value <= hi:
            raise RequestError(key, f"must be from {lo} to {hi}, got {value}")
        out[key] = value
    return out


def check_options(request: GenerationRequest, info: ModelInfo | None = None) -> GenerationRequest:
    """``request`` unchanged if the options it names that are model controls are in range; else a
    RequestError naming the option (a replayed or hand-edited request is refused, never clamped).
    Options that are not controls (a backend's own, or another model's) pass through."""
    info = info or describe_model(request.model)
    for key, _label, lo, hi, _default in info.controls:
        value = request.extra.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise RequestError(key, f"must be a whole number from {lo} to {hi}, got {value!r}")
    keys = {c[0] for c in info.controls}
    model_controls(info, {k: v for k, v in request.extra.items() if k in keys})
    for i, region in enumerate(request.regions):  # a region's options are the model's controls
        try:
            model_controls(info, {k: v for k, v in region.extra.items() if k in keys})
        except RequestError as exc:
            raise RequestError(f"regions[{i}].{exc.field}", exc.message) from None
    return request


def build_request(fields: Mapping[str, Any], controls: Mapping[str, Any] | None = None,
                  base: GenerationRequest | None = None, model: str | None = None) -> GenerationRequest:
    """The request a front end asks for.

    ``fields`` are request fields the person set; ``controls`` are model options (checked
    against the model's ``ModelInfo.controls``); ``base`` is a replayed request (its seed and
    options are kept unless overridden); ``model`` picks the model of a new request (default:
    ``fields["model"]``, else the built-in model). A new request without a seed draws one.
    """
    fields = dict(fields)
    if base is not None:
        info = describe_model(fields.get("model", base.model))
        extra = {**base.extra, **model_controls(info, controls or {})}
        return check_options(base.replace(**fields, extra=extra), info)
    model = fields.pop("model") if "model" in fields else model or DEFAULT_MODEL
    if fields.get("seed") is None:
        fields["seed"] = draw_seed()
    extra = {**fields.pop("extra", {}), **model_controls(describe_model(model), controls or {})}
    return request_for(model, **fields, extra=extra)
