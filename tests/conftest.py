from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# No test may reach the network or a real display.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("QT_API", "pyside6")
os.environ.pop("PARADIFF_ALLOW_DOWNLOAD", None)
# Notes of writes in progress (engine.io.partials) go to a folder of the test session's own.
os.environ.setdefault("PARADIFF_PARTIALS_DIR", tempfile.mkdtemp(prefix="paradiff-partials-"))

sys.path.insert(0, str(Path(__file__).parent))

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory) -> Path:
    from tiny import save, tiny_sd

    return save(tiny_sd(), tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def sd_inpaint_folder(tmp_path_factory) -> Path:
    from tiny import save, tiny_sd_inpaint

    return save(tiny_sd_inpaint(), tmp_path_factory.mktemp("models") / "tiny-sd-inpaint")


@pytest.fixture(scope="session")
def sd_v_folder(tmp_path_factory) -> Path:
    from tiny import save, tiny_sd

    return save(tiny_sd(prediction_type="v_prediction", seed=1), tmp_path_factory.mktemp("models") / "tiny-sd-v")


@pytest.fixture(scope="session")
def sdxl_folder(tmp_path_factory) -> Path:
    from tiny import save, tiny_sdxl

    return save(tiny_sdxl(), tmp_path_factory.mktemp("models") / "tiny-sdxl")


from hypothesis import settings  # noqa: E402

# Timing on a shared 2-core CI machine is noisy; correctness, not speed, is what these check.
settings.register_profile("paradiff", deadline=None, max_examples=60)
settings.load_profile("paradiff")
