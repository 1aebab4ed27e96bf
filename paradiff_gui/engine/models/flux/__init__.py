"""FLUX.1 (dev and schnell) through diffusers' ``FluxPipeline``: the backend (backend.py) on the shared
flow-matching half (``models/flow.py``)."""
