"""Form values ↔ :class:`GenerationRequest`, with no Qt: the one place that knows how the panel's
fields become a request and back.

A request is built like the CLI builds one (``engine.api.requests``): the model's defaults under
the fields (:func:`request_for`) and the model's options checked against its controls
(:func:`model_controls`). ``build_request`` itself is not used because it describes the model
again (file reads on every keystroke for a folder model); the panel passes the description it
already holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ...engine.api.requests import check_options, model_controls, request_for
from ...engine.core.control import Control
from ...engine.core.lora import LoraSpec
from ...engine.core.modelinfo import ModelInfo
from ...engine.core.regions import Region
from ...engine.core.request import GenerationRequest, RequestError


@dataclass
class FormValues:
    """What the forms show, in the forms' terms (each form reads and writes its own fields)."""

    # prompt.py
    prompt: str
    negative_prompt: str
    # size.py; image px
    width: int
    height: int
    # tiles.py; image px. rows/cols None: unknown (a tile-size plan that does not fit), left as shown.
    by_grid: bool
    tile: int
    rows: int | None
    cols: int | None
    overlap: int
    # sampling.py
    steps: int
    guidance: float
    sampler: str | None  # None: the model has no samplers listed yet (its first one is used)
    seed: int
    # coherence.py
    fusion: str
    jitter: bool
    global_context: float
    bridges: str
    bridge_width: int  # image px; used by attention bridges only (greyed otherwise)
    wrap: str  # seamless: "none", "x", "y" or "xy" (request.wrap)
    # performance.py
    tile_batch: int  # 0 = auto
    device: str
    dtype: str
    compile: bool
    host_memory: float = 0.0  # GiB; 0 = no budget (request.host_memory None)
    positions: str = "local"  # coherence.py; diffusion transformers only (request.positions)
    bridge_step: str = "previous"  # coherence.py: previous | same, with bridges only (greyed otherwise)
    preview: str = "auto"  # performance.py: live previews, auto, linear or taesd (request.preview)
    # options.py: the model's controls by key; ``given`` ones are kept even at their default (the
    # shown request named them), ``carried`` extras have no control and pass through untouched.
    controls: dict[str, int] = field(default_factory=dict)
    given: frozenset[str] = frozenset()
    carried: dict[str, Any] = field(default_factory=dict)
    # regions.py: the regions as shown, kept whole (a region's prompt stays while a model without
    # text is chosen, like the main prompt); rects in image px, not yet checked against the size.
    regions: tuple[Region, ...] = ()
    # lora.py: the LoRAs as shown (kept while a model that takes none is chosen, like the prompt)
    loras: tuple[LoraSpec, ...] = ()
    # control.py: the ControlNets as shown (request.controls; "controls" above are the model's options)
    controlnets: tuple[Control, ...] = ()
    # start.py: the starting picture of an image-to-image run (File → Restyle…); None: text-to-image.
    # strength None: the request gave none (DEFAULT_STRENGTH); anchor 0: off.
    init_image: str | None = None
    strength: float | None = None
    anchor: int = 0


def takes_loras(info: ModelInfo) -> bool:
    """Whether ``info``'s model takes LoRAs: the diffusers models do, the built-ins do not."""
    return not info.id.startswith("builtin:")


def takes_controls(info: ModelInfo) -> bool:
    """Whether ``info``'s model takes ControlNets: the UNet models (SD 1.x/2.x, SDXL) and FLUX.1 do;
    the built-ins and SD3 (its ControlNets are not run yet) do not."""
    return takes_loras(info) and info.controlnets


def _regions_for(info: ModelInfo, regions: tuple[Region, ...]) -> tuple[Region, ...]:
    """The regions as the request gets them: prompts only for text models (their options are
    checked with the request's, by ``check_options``, named ``regions[i].KEY``)."""
    return regions if info.text else tuple(replace(r, prompt="", negative_prompt="") for r in regions)


def to_request(info: ModelInfo, v: FormValues) -> GenerationRequest:
    """The request the forms describe for model ``info``; raises RequestError naming the bad field."""
    grid = (v.rows, v.cols) if v.by_grid else None
    defaults = {c[0]: c[4] for c in info.controls}
    # An option at its default is left out unless the shown request named it, so a loaded
    # request comes back exactly as it was.
    named = {k: x for k, x in v.controls.items() if k in v.given or x != defaults.get(k)}
    return check_options(request_for(
        info.id,
        prompt=v.prompt if info.text else "",
        negative_prompt=v.negative_prompt if info.text else "",
        width=v.width,
        height=v.height,
        grid=grid,
        tile=None if grid else v.tile,
        overlap=v.overlap,
        steps=v.steps,
        guidance=v.guidance if info.guidance else 1.0,
        sampler=v.sampler or info.samplers[0],
        seed=int(v.seed),
        fusion=v.fusion,
        jitter=v.jitter,
        global_context=round(v.global_context, 2),  # the field shows two decimals
        bridges=v.bridges,
        bridge_width=v.bridge_width if v.bridges in ("attention", "full") else 0,  # greyed: not sent
        bridge_step=v.bridge_step if v.bridges != "off" else "previous",  # greyed: not sent
        wrap=v.wrap,
        positions=v.positions if info.positions else "local",  # greyed for other models: not sent
        tile_batch=v.tile_batch or "auto",
        device=v.device.strip(),
        dtype=v.dtype,
        compile=v.compile,
        host_memory=round(v.host_memory, 1) or None,  # the field shows one decimal
        preview=v.preview,
        extra={**v.carried, **model_controls(info, named)},
        regions=_regions_for(info, v.regions),
        loras=v.loras if takes_loras(info) else (),
        controls=v.controlnets if takes_controls(info) else (),
        init_image=v.init_image,
        strength=v.strength if v.init_image else None,
        anchor=v.anchor if v.init_image else 0,
    ), info)


def from_request(info: ModelInfo, request: GenerationRequest) -> FormValues:
    """What the forms show for ``request`` (``info`` describes ``request.model``). An option out of
    its control's range raises RequestError naming it: shown at a limit, it would change the picture
    silently."""
    check_options(request, info)
    tile = request.tile if request.tile is not None else info.native_tile
    rows = cols = None
    if request.grid is not None:
        rows, cols = request.grid
    else:
        try:
            plan = info.plan(request)
            rows, cols = plan.rows, plan.cols  # shown greyed: what the tile size gives
        except RequestError:
            pass  # still shown; the plan summary says what is wrong
    controls = {c[0]: int(request.extra.get(c[0], c[4])) for c in info.controls}  # in range: checked above
    keys = set(controls)
    return FormValues(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=request.width,
        height=request.height,
        by_grid=request.grid is not None,
        tile=tile,
        rows=rows,
        cols=cols,
        overlap=request.overlap if request.overlap is not None else tile // 4,
        steps=request.steps,
        guidance=request.guidance,
        sampler=request.sampler,
        seed=request.seed,
        fusion=request.fusion,
        jitter=request.jitter,
        global_context=request.global_context,
        bridges=request.bridges,
        bridge_width=request.bridge_width,
        bridge_step=request.bridge_step,
        wrap=request.wrap,
        positions=request.positions,
        tile_batch=0 if request.tile_batch == "auto" else int(request.tile_batch),
        device=request.device,
        dtype=request.dtype,
        compile=request.compile,
        host_memory=request.host_memory or 0.0,
        preview=request.preview,
        controls=controls,
        given=frozenset(k for k in request.extra if k in keys),
        carried={k: x for k, x in request.extra.items() if k not in keys},
        regions=request.regions,
        loras=request.loras,
        controlnets=request.controls,
        init_image=request.init_image,
        strength=request.strength,
        anchor=request.anchor,
    )
