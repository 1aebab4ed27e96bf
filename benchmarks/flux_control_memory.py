"""What a FLUX.1 ControlNet adds to one view's activations, from the real FLUX.1-dev and InstantX geometry.

    python benchmarks/flux_control_memory.py   # writes benchmarks/results/flux-control-memory.json

FLUX.1-dev's transformer (19 + 38 blocks, 3072 wide) and an InstantX-shaped ControlNet (5 + 10
blocks), their default configurations on the ``meta`` device (nothing computed or allocated), run
one 1024² tile the way models/flux/control.py does: each ControlNet first, their block samples
summed, then the transformer with them. Live operator outputs are counted as in
``control_memory.py`` (fused attention: only its output), bf16. The figure checked is
``runtime/memory.py``'s ``CONTROL_DIT_SAMPLE_SETS``: sets of blocks × tokens × hidden a view gains.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from control_memory import LiveBytes  # noqa: E402

from paradiff_gui import __version__  # noqa: E402
from paradiff_gui.engine.runtime import memory  # noqa: E402

GiB = 2**30
DTYPE = torch.bfloat16
SIDE, TEXT, HIDDEN, BLOCKS = 1024, 512, 3072, 15  # image px, FLUX.1-dev's prompt tokens, width, ControlNet blocks


def _fused(query=None, key=None, value=None, *args, **kwargs):  # diffusers passes query=, key=, value=
    return torch.empty(*query.shape[:-1], value.shape[-1], dtype=query.dtype, device=query.device)


def build(depth: tuple[int, int] = (19, 38)):
    """The transformer (``depth``: its double and single blocks; a shallower one has the same per-block
    peak, for a quick check) and the ControlNet, on the meta device."""
    from diffusers import FluxControlNetModel, FluxTransformer2DModel

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        transformer = FluxTransformer2DModel(num_layers=depth[0], num_single_layers=depth[1],
                                             guidance_embeds=True).to(DTYPE).eval()
        net = FluxControlNetModel(num_layers=5, num_single_layers=10, guidance_embeds=True).to(DTYPE).eval()
    return transformer, net


def view_peak(transformer, net, controls: int, side: int = SIDE) -> int:
    image = (side // 16) ** 2  # tokens: 2×2 latent px each
    z = lambda *shape: torch.zeros(*shape, device="meta", dtype=DTYPE)  # noqa: E731
    counter = LiveBytes()
    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused
    try:
        with torch.inference_mode(), counter:
            kw = dict(hidden_states=z(1, image, 64), timestep=z(1), guidance=torch.zeros(1, device="meta"),
                      pooled_projections=z(1, 768), encoder_hidden_states=z(1, TEXT, 4096),
                      txt_ids=torch.zeros(TEXT, 3, device="meta"), img_ids=torch.zeros(image, 3, device="meta"),
                      return_dict=False)
            double = single = None
            for _ in range(controls):
                d, s = net(controlnet_cond=z(1, image, 64), conditioning_scale=0.7, **kw)
                double = list(d) if double is None else [a + b for a, b in zip(double, d, strict=True)]
                single = list(s) if single is None else [a + b for a, b in zip(single, s, strict=True)]
                del d, s
            extra = {} if not controls else {"controlnet_block_samples": double,
                                             "controlnet_single_block_samples": single,
                                             "controlnet_blocks_repeat": False}
            del double, single
            transformer(**kw, **extra)
            del extra
    finally:
        F.scaled_dot_product_attention = sdpa
    return counter.peak


def added_sets(counts: tuple[int, ...], side: int = SIDE, depth: tuple[int, int] = (19, 38)) -> list[float]:
    """What each number of ControlNets in ``counts`` adds to a ``side``² view, in sets of blocks ×
    tokens × hidden."""
    transformer, net = build(depth)
    unit = BLOCKS * ((side // 16) ** 2 + TEXT) * HIDDEN * 2
    bare = view_peak(transformer, net, 0, side)
    return [(view_peak(transformer, net, n, side) - bare) / unit for n in counts]


def main() -> int:
    transformer, net = build()
    image = (SIDE // 16) ** 2
    unit = BLOCKS * (image + TEXT) * HIDDEN * 2  # one set: blocks × tokens × hidden, bf16
    bare = view_peak(transformer, net, 0)
    rows = [{"controlnets": 0, "view_gib": round(bare / GiB, 3),
             "estimate_gib": round(memory.dit_view_bytes(HIDDEN, 24, image, TEXT, 2) / GiB, 3)}]
    for n in (1, 2):
        peak = view_peak(transformer, net, n)
        sets = memory.CONTROL_DIT_SAMPLE_SETS + (n > 1)
        rows.append({"controlnets": n, "view_gib": round(peak / GiB, 3), "added_gib": round((peak - bare) / GiB, 3),
                     "added_sets": round((peak - bare) / unit, 2), "estimate_sets": sets})
    for row in rows:
        print(json.dumps(row), flush=True)
    out = ROOT / "benchmarks" / "results" / "flux-control-memory.json"
    out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "paradiff": __version__, "torch": torch.__version__,
        "what": "one 1024² tile, bf16, meta device: peak bytes of live operator outputs; FLUX.1-dev transformer, "
                "InstantX-shaped ControlNet(s) (5 + 10 blocks) first, samples summed, as models/flux/control.py",
        "control_dit_sample_sets_used": memory.CONTROL_DIT_SAMPLE_SETS, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
