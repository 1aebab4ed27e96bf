"""How far previous-step bridges are from current-step ones, step by step, on the terrain weights.

    python benchmarks/bridge_staleness.py        # writes benchmarks/results/bridge-staleness-384.json

Along one trajectory of the 8-step schedule (384², overlap 32, seed 1; the canvas advanced with
the *current-step* bridged predictions, all tiles in one call), each step's tiles are predicted
three ways: with the bridge's values from this step (``fresh``), from the previous step (what
generation uses, so the picture does not depend on the tile batch), and unbridged. Reported per
step and channel: ‖previous − fresh‖ / ‖fresh‖, and for scale ‖unbridged − fresh‖ / ‖fresh‖ (how
much the channel changes the prediction at all). A previous-step channel is usable when its error
is well below its effect.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paradiff_gui.engine.models.terrain as terrain  # noqa: E402
from paradiff_gui import __version__  # noqa: E402
from paradiff_gui.engine.api.requests import request_for  # noqa: E402
from paradiff_gui.engine.core.plan import TilePlan  # noqa: E402
from paradiff_gui.engine.models.registry import load_denoiser  # noqa: E402
from paradiff_gui.engine.sampling.bridges import Bridge, BridgeConfig  # noqa: E402

CHANNELS = {
    "halos": BridgeConfig(halos=True, norms="off", attention=False),
    "norms-window": BridgeConfig(halos=False, norms="window", attention=False),
    "norms-canvas": BridgeConfig(halos=False, norms="canvas", attention=False),
    "attention-tile": BridgeConfig(halos=False, norms="off", attention=True, reach=128),
    "attention-strip32": BridgeConfig(halos=False, norms="off", attention=True, reach=32),
}


def main() -> int:
    terrain.CPU_CHUNK = 1 << 10  # every tile in one call: the fresh bridge needs them all
    req = request_for("builtin:terrain", width=384, height=384, seed=1, overlap=32, device="cpu")
    den = load_denoiser(req, torch.device("cpu"), torch.float32)
    plan = TilePlan.for_request(req, den.scale, den.native_tile)
    cond = den.prepare(req, plan)
    scheduler = den.make_scheduler("lcm")
    scheduler.set_timesteps(req.steps)
    tiles = list(plan.tiles)

    def crops(c: torch.Tensor) -> torch.Tensor:
        return torch.cat([c[..., t.y0:t.y1, t.x0:t.x1] for t in tiles])

    def fuse(pred: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        total, count = torch.zeros_like(like), torch.zeros_like(like)
        for i, t in enumerate(tiles):
            total[..., t.y0:t.y1, t.x0:t.x1] += pred[i]
            count[..., t.y0:t.y1, t.x0:t.x1] += 1
        return total / count

    def call(bridge: Bridge | None, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        den.bridge = bridge
        try:
            return den.predict(crops(x), t, tiles, cond)
        finally:
            den.bridge = None

    rows = {}
    for name, config in CHANNELS.items():
        gen = torch.Generator().manual_seed(req.seed)
        x = torch.randn(1, 1, plan.height, plan.width, generator=gen) * float(scheduler.timesteps[0])
        fresh = Bridge(den.bridge_module, plan, replace(config, fresh=True))
        stale = Bridge(den.bridge_module, plan, replace(config, fresh=False))
        steps = []
        with torch.inference_mode():
            for i, t in enumerate(scheduler.timesteps):
                with fresh.installed():
                    pf = call(fresh, x, t)
                with stale.installed():
                    ps = call(stale, x, t)
                    stale.end_step()
                plain = call(None, x, t)
                steps.append({"sigma": round(float(t), 2),
                              "previous_step_error": round(float((ps - pf).norm() / pf.norm()), 4),
                              "channel_effect": round(float((plain - pf).norm() / pf.norm()), 4)})
                if i + 1 < len(scheduler.timesteps):
                    x = fuse(pf, x) + torch.randn(x.shape, generator=gen) * float(scheduler.timesteps[i + 1])
        rows[name] = steps
        errs = [s["previous_step_error"] for s in steps[1:]]  # step 0 runs unbridged in generation
        effects = [s["channel_effect"] for s in steps[1:]]
        print(f"{name:>18}: previous-step error {min(errs):.3f}-{max(errs):.3f} (mean {sum(errs) / len(errs):.3f}), "
              f"effect of the channel {sum(effects) / len(effects):.3f}", flush=True)
    out = ROOT / "benchmarks" / "results" / "bridge-staleness-384.json"
    out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "paradiff": __version__, "torch": torch.__version__,
        "machine": f"{platform.machine()}, CPU", "size": 384, "overlap": 32, "seed": 1,
        "note": "step 0 of a previous-step bridge has no previous step (unbridged in generation); its row compares "
                "the unbridged call", "channels": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
