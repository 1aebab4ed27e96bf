"""Fault injection for the multi-process tests (on PYTHONPATH only there): with
PARADIFF_TEST_FAULT=error|oom, the terrain model fails on rank 1 of a process group."""

import os

if os.environ.get("PARADIFF_TEST_FAULT"):
    import torch

    import paradiff_gui.engine.models.terrain as terrain

    _predict = terrain.TerrainDenoiser.predict

    def predict(self, x, t, tiles, cond):
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_rank() == 1:
            if os.environ["PARADIFF_TEST_FAULT"] == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            raise RuntimeError("injected failure on rank 1")
        return _predict(self, x, t, tiles, cond)

    terrain.TerrainDenoiser.predict = predict
