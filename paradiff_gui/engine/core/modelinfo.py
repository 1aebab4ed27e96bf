"""What a model is, as plain data: the GUI plans tiles, shows controls and estimates cost from it
long before any weights load (``models.info.describe_model`` fills it in)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .plan import TilePlan
from .request import SAMPLERS, GenerationRequest

# SD VAEs downsample by 8 and were trained on 512² (SD1.x), 768² (SD2.x) or 1024² (SDXL).
SD_SCALE = 8
SD_NATIVE = 512


@dataclass(frozen=True)
class ModelInfo:
    """A model as the GUI and the estimator see it."""

    id: str
    label: str
    scale: int = SD_SCALE  # image px per latent px
    native_tile: int = SD_NATIVE  # image px
    fixed_tile: bool = False  # the model only accepts tiles of native_tile
    text: bool = True  # conditioned on a prompt
    guidance: bool = True  # the guidance value means something (2 views per tile when > 1, unless embedded)
    guidance_embedded: bool = False  # guidance is an input of the model (FLUX.1-dev): one view per tile
    tile_multiple: int = 8  # image px that tile sides and the canvas must be multiples of (FLUX/SD3: 16)
    positions: bool = False  # image tokens carry positions (FLUX/SD3): request.positions applies
    controlnets: bool = True  # takes ControlNets (request.controls): SD 1.x/2.x, SDXL, FLUX.1; not SD3 yet
    channels: int = 4  # latent channels
    samplers: tuple[str, ...] = SAMPLERS
    output: str = "rgb"  # "rgb" (8-bit colour) or "height" (16-bit single channel)
    controls: tuple[tuple[str, str, int, int, int], ...] = ()  # (extra key, label, min, max, default)
    weight_bytes: int | None = None  # what goes on the device, its size on disk (stored precision); None: unknown
    weight_dtype_bytes: int = 4  # bytes per stored weight (fp32 checkpoints: 4, fp16 ones: 2)
    unet_channels: int | None = None  # the UNet's base width (320 for SD1.5/2.x, 320 for SDXL)
    # Measured activations of one view: bytes per tile px per dtype byte (None: a rule of thumb).
    view_bytes_per_px: int | None = None
    # Diffusion transformers (FLUX, SD3): what one view's activations grow with (runtime.memory).
    hidden: int | None = None  # the transformer's width (heads × head dim)
    heads: int | None = None  # its attention heads
    text_tokens: int = 0  # prompt tokens joined to every tile's image tokens
    transformer_bytes: int | None = None  # of weight_bytes: the transformer's (weights fp8: 1 byte a weight…)
    fp8_full_params: int = 0  # …but for these, which fp8 storage keeps in the run's dtype (models/flow.py)
    host_weight_bytes: int = 0  # kept in host memory, not on the device (FLUX/SD3 text encoders; stored dtype)
    seconds_per_view: dict[str, float] = field(default_factory=dict)  # device type -> prior

    def plan(self, request: GenerationRequest) -> TilePlan:
        return TilePlan.for_request(request, self.scale, self.native_tile)

    @property
    def views_per_tile(self) -> int:
        """Model calls per tile for a request's guidance: 2 with classifier-free guidance above 1."""
        return 2 if self.text and self.guidance and not self.guidance_embedded else 1
