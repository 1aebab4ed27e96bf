"""What a ControlNet adds to one view's activations and compute, from the real SD 1.5 and SDXL geometry.

    python benchmarks/control_memory.py        # writes benchmarks/results/control-memory.json

The UNet and a ControlNet of the same base (their published configurations, no weights: built on
the ``meta`` device, so nothing is computed or allocated) run one tile the way a run does
(models/sd/control.py): the ControlNet first, its residuals kept, then the UNet with them. Every
tensor an operator returns is counted while it lives (by its storage); the peak is the view's
activations, without the operators' internal workspaces and without an allocator's rounding.
Classifier-free guidance: two halves per tile; fp16 as on a GPU. The figure checked is
``runtime/memory.py``'s ``CONTROL_VIEW_SHARE``: how much a steering ControlNet adds to a view.
The ControlNet's operations are counted too (torch's FlopCounterMode): its share of a step's compute.

Attention is counted both ways: ``fused`` (flash / memory-efficient SDPA, as on a GPU: only its
output) and ``unfused`` (the score matrix materialised, then its softmax, as the math kernel).
"""

from __future__ import annotations

import json
import sys
import time
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paradiff_gui import __version__  # noqa: E402
from paradiff_gui.engine.runtime import memory  # noqa: E402

GiB = 2**30


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensors operators return, each storage counted while it lives."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, n = storage._cdata, storage.nbytes()
                if n and key not in self.seen:
                    self.seen.add(key)
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, key, n)
        return out

    def _freed(self, key: int, n: int) -> None:
        self.live -= n
        self.seen.discard(key)


def _fused_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    # On meta the output is all that is computed; one empty_like stands for the fused kernel.
    return torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)


def _math_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    # An unfused kernel: the score matrix materialised, then its softmax.
    scores = (q @ k.transpose(-2, -1)) * (scale or q.shape[-1] ** -0.5)
    return scores.softmax(-1) @ v


def build(xl: bool):
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):
        if xl:
            unet = UNet2DConditionModel(
                sample_size=128, cross_attention_dim=2048, down_block_types=(
                    "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                attention_head_dim=(5, 10, 20), use_linear_projection=True, addition_embed_type="text_time",
                addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
        else:
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        net = ControlNetModel.from_unet(unet)
    return unet.eval().half(), net.eval().half()


def _inputs(xl: bool, side: int):
    lat = side // 8
    x = torch.zeros(2, 4, lat, lat, device="meta", dtype=torch.float16)
    text = torch.zeros(2, 77, 2048 if xl else 768, device="meta", dtype=torch.float16)
    t = torch.tensor(999, device="meta")
    kw = {}
    if xl:
        kw["added_cond_kwargs"] = {"text_embeds": torch.zeros(2, 1280, device="meta", dtype=torch.float16),
                                   "time_ids": torch.zeros(2, 6, device="meta", dtype=torch.float16)}
    return x, t, text, kw


def flops_share(unet, net, xl: bool, side: int) -> float:
    """The ControlNet's floating-point operations per view as a share of the UNet's (what it adds
    to a step's compute on any device)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, t, text, kw = _inputs(xl, side)
    image = torch.zeros(2, 3, side, side, device="meta", dtype=torch.float16)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as bare:
            unet(x, t, encoder_hidden_states=text, **kw)
        with FlopCounterMode(display=False) as control:
            net(x, t, encoder_hidden_states=text, controlnet_cond=image, return_dict=False, **kw)
    return control.get_total_flops() / bare.get_total_flops()


def view_peak(unet, net, xl: bool, side: int, fused: bool, control: bool) -> int:
    x, t, text, kw = _inputs(xl, side)
    counter = LiveBytes()
    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_sdpa if fused else _math_sdpa
    try:
        with torch.inference_mode(), counter:
            extra = {}
            if control:
                image = torch.zeros(2, 3, side, side, device="meta", dtype=torch.float16)
                d, m = net(x, t, encoder_hidden_states=text, controlnet_cond=image, conditioning_scale=1.0,
                           return_dict=False, **kw)
                extra = {"down_block_additional_residuals": list(d), "mid_block_additional_residual": m}
                del d, m
            unet(x, t, encoder_hidden_states=text, **extra, **kw)
            del extra
    finally:
        F.scaled_dot_product_attention = sdpa
    return counter.peak


def control_share(xl: bool, side: int) -> float:
    """What one ControlNet adds to a view (fused attention), as a share of the bare UNet's view."""
    unet, net = build(xl)
    return view_peak(unet, net, xl, side, True, control=True) / view_peak(unet, net, xl, side, True, control=False) - 1


def main() -> int:
    rows = []
    for xl, sides in ((False, (512, 768, 1024)), (True, (1024,))):
        unet, net = build(xl)
        channels = unet.config.block_out_channels[0]
        for side in sides:
            for fused in (True, False):
                bare = view_peak(unet, net, xl, side, fused, control=False)
                steered = view_peak(unet, net, xl, side, fused, control=True)
                lat = (side // 8) ** 2
                estimate = memory.UNET_BYTES_PER_CHANNEL_PX * channels * lat * 2 * 2  # fp16, two halves
                rows.append({
                    "base": "SDXL" if xl else "SD 1.5", "tile_px": side,
                    "attention": "fused" if fused else "unfused",
                    "unet_view_gib": round(bare / GiB, 3), "with_controlnet_gib": round(steered / GiB, 3),
                    "controlnet_share": round(steered / bare - 1, 3),
                    "controlnet_flops_share": round(flops_share(unet, net, xl, side), 3),
                    "estimate_unet_gib": round(estimate / GiB, 3),
                    "estimate_with_controlnet_gib": round(estimate * (1 + memory.CONTROL_VIEW_SHARE) / GiB, 3)})
                print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "benchmarks" / "results" / "control-memory.json"
    out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "paradiff": __version__, "torch": torch.__version__,
        "what": "one tile (both guidance halves), fp16, meta device: peak bytes of live operator outputs; "
                "ControlNet first, residuals kept, then the UNet (as models/sd/control.py runs them)",
        "control_view_share_used": memory.CONTROL_VIEW_SHARE, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
