"""Fault injection for the multi-process tests (on PYTHONPATH only there): with
PARADIFF_TEST_FAULT=error|oom, the terrain model fails on rank 1 of a process group; with
PARADIFF_TEST_FAULT=mark, each rank creates ``$PARADIFF_TEST_MARKS/rank<N>`` when it first
denoises, so a test can wait for that event instead of sleeping."""

import os

if os.environ.get("PARADIFF_TEST_FAULT"):
    import torch

    import paradiff_gui.engine.models.terrain as terrain

    _predict = terrain.TerrainDenoiser.predict

    def predict(self, x, t, tiles, cond):
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        fault = os.environ["PARADIFF_TEST_FAULT"]
        if fault == "mark":
            open(os.path.join(os.environ["PARADIFF_TEST_MARKS"], f"rank{rank}"), "a").close()
        elif rank == 1:
            if fault == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            raise RuntimeError("injected failure on rank 1")
        return _predict(self, x, t, tiles, cond)

    terrain.TerrainDenoiser.predict = predict
