"""The documented custom-denoiser example runs as published."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
from PIL import Image

from paradiff_gui.engine.io.metadata import load_request

EXAMPLE = Path(__file__).parents[2] / "examples" / "custom_denoiser.py"


def test_custom_denoiser_example_runs_and_is_seamless(tmp_path):
    out = tmp_path / "blobs.png"
    runpy.run_path(str(EXAMPLE), run_name="example")["main"](str(out))
    img = np.asarray(Image.open(out)).astype(float)
    assert img.shape == (384, 512, 3)
    assert load_request(out).model == "example:blobs"
    # The toy model's canvas is smooth, so a seam would show as a jump between neighbours.
    assert np.abs(np.diff(img, axis=1)).max() < 12 and np.abs(np.diff(img, axis=0)).max() < 12
