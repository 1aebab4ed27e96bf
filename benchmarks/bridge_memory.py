"""What bridges keep and exchange per step for SD 1.5 at 4096² and 8192², from the real geometry.

    python benchmarks/bridge_memory.py            # writes benchmarks/results/bridge-memory-sd15.json

The SD 1.5 UNet (its published configuration, no weights: built on the ``meta`` device, so
nothing is computed or allocated) runs one tile through a previous-step bridge of the request's
plan — the bridge's stores are made whole on first use, exactly as in a run — and the stores'
sizes are summed: the bytes one step hands to the next (and, with several GPUs, sums over the
ranks at the end of the step), and what a run keeps on the device (this step's and the previous
step's). Classifier-free guidance doubles everything (two halves per tile); the model runs in
fp16, as on a GPU, and the stores keep its dtype (GroupNorm statistics: float32).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_engine import sd15_unet  # noqa: E402

from paradiff_gui import __version__  # noqa: E402
from paradiff_gui.engine.core.plan import TilePlan  # noqa: E402
from paradiff_gui.engine.sampling.bridges import Bridge, BridgeConfig, config_for  # noqa: E402

GiB = 2**30


def survey(unet: torch.nn.Module, plan: TilePlan, config: BridgeConfig) -> int:
    """Bytes of one step's stores."""
    from paradiff_gui.engine.models.sd.bridging import bridgeable

    bridge = Bridge(unet, plan, config)
    tile = plan.tiles[0]
    x = torch.zeros(2, 4, tile.height, tile.width, device="meta", dtype=torch.float16)  # both halves of guidance
    text = torch.zeros(2, 77, 768, device="meta", dtype=torch.float16)
    with torch.inference_mode(), bridgeable(unet), bridge.installed(), bridge.tiles([tile]):
        unet(x, torch.tensor(999, device="meta"), encoder_hidden_states=text)
    return bridge.kept_bytes()  # only this step's so far


def main() -> int:
    with torch.device("meta"):
        unet = sd15_unet().eval().half()
    rows = []
    for size in (4096, 8192):
        for bridges, width in (("full", 0), ("full", 64), ("attention", 0), ("attention", 64), ("halos", 0),
                               ("norms", 0)):
            plan = TilePlan.create(size // 8, size // 8, overlap=16, tile=64, scale=8)
            reach = width // 8 or 64
            step = survey(unet, plan, config_for(bridges, reach))
            rows.append({"size": size, "bridges": bridges, "bridge_width": width, "tiles": len(plan.tiles),
                         "exchanged_per_step_gib": round(step / GiB, 3), "kept_gib": round(2 * step / GiB, 3)})
            print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "benchmarks" / "results" / "bridge-memory-sd15.json"
    out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "paradiff": __version__, "torch": torch.__version__,
        "what": "SD 1.5 UNet geometry (meta device, fp16), 512 px tiles, overlap 128 px (latent 64/16), "
                "guidance on; fp16 stores; kept = this step's + the previous step's",
        "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
