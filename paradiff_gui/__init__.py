"""Paradiff: ultra-high-resolution images by synchronized tiled diffusion."""

__version__ = "0.1.0"
