"""Screenshots of File → Restyle… in the real window (docs/images/restyle-app.png: mid-run, the source
under the plan; restyle-compare.png: the A/B view), on the built-in terrain model on the CPU (~3 min).

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/restyle_screenshots.py [dark|light]
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
theme = sys.argv[1] if len(sys.argv) > 1 else "dark"
tmp = Path(tempfile.mkdtemp(prefix="paradiff-restyle-shot-"))
os.environ["XDG_CONFIG_HOME"] = str(tmp / "config")
os.environ["XDG_STATE_HOME"] = str(tmp / "state")
os.environ["XDG_DATA_HOME"] = str(tmp / "data")
sys.path.insert(0, str(ROOT))

from PySide6.QtCore import QSettings  # noqa: E402

from paradiff_gui.engine.api.requests import request_for  # noqa: E402
from paradiff_gui.engine.io.export import save_image  # noqa: E402
from paradiff_gui.engine.sampling.sampler import generate  # noqa: E402
from paradiff_gui.qt.app import make_app  # noqa: E402
from paradiff_gui.qt.window import MainWindow  # noqa: E402

source = tmp / "valley.png"
r = generate(request_for("builtin:terrain", width=384, height=256, steps=6, seed=7, device="cpu"))
save_image(source, r.image, r.request, r.plan, r.info)
print("source written", source, flush=True)

app = make_app(sys.argv[:1], theme)
w = MainWindow(settings=QSettings(str(tmp / "s.ini"), QSettings.Format.IniFormat), interactive=False)
w.resize(1600, 1000)
w.show()
w.panel.set_request(request_for("builtin:terrain", width=512, height=512, steps=8, seed=12, device="cpu"))


def pump(seconds: float, until=None) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and not (until and until()):
        app.processEvents()
        time.sleep(0.005)


pump(2.0)
shots = ROOT / "docs" / "images"
state = {"mid": False, "done": None, "compare": None}


def on_previews(_p) -> None:
    c = w.canvas
    if not state["mid"] and len(c.tile_steps) >= 0.45 * max(1, len(c.tiles)):
        state["mid"] = True
        pump(0.05)
        w.grab().save(str(shots / "restyle-app.png"))
        print("mid shot", w.status_text.text(), flush=True)


w.bridge.previews.connect(on_previews)
w.restyling.restyled.connect(lambda outcome, what: state.update(done=(outcome, what)))
w.result_ready.connect(lambda res: state.update(result=res))
assert w.restyling.restyle(str(source), strength=0.65, scale=2, output=str(tmp / "valley-restyled-x2.png"))
pump(600, lambda: state["done"] is not None and "result" in state)
print("done", state["done"], flush=True)
w.restyling.compare_shown.connect(lambda on: state.update(compare=on))
w.act_compare.trigger()
pump(20, lambda: state["compare"] is not None)
pump(0.5)
w.grab().save(str(shots / "restyle-compare.png"))
print("compare shot", state["compare"], w.status_text.text(), flush=True)
