"""Stable Diffusion 1.x/2.x/SDXL through diffusers: the backend, its schedulers, the exact tiled
VAE and the cheap latent previews."""
