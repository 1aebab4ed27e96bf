"""Stable Diffusion 3 / 3.5 through diffusers' ``StableDiffusion3Pipeline``: the backend (backend.py)
on the shared flow-matching half (``models/flow.py``)."""
