"""Faithful image-to-image: the result keeps the init image's lowest band.

With ``anchor`` N the result shrunk N× (a box filter: each N×N block's mean) equals the init image
shrunk N×: an upscale (N = the pass's factor) keeps everything its source holds and the model adds
only what the source could not have held; a restyle with a larger N keeps the composition and
lets the model redraw the rest. Two parts, both linear and seam-free:

- **during the steps** (in the model's latent space), the low band of the canvas is replaced after
  every sampler step by the low band of the init image noised to the same level — ILVR (Choi et
  al. 2021, "ILVR: Conditioning Method for Denoising Diffusion Probabilistic Models", eq. 8), with
  the replacement solved so that the canvas shrunk N× is exactly the reference's: the model draws
  its detail around the kept layout instead of moving it;
- **after the decode** (in pixels), back-projection (Irani & Peleg 1991) makes the equality exact
  to the output's quantisation: ``down(up(c)) = source − down(result)`` is solved for ``c`` at the
  low resolution (conjugate gradients) and ``up(c)`` added. The picture is read in stripes and
  the corrections kept at the low resolution, so an 8K or spilled picture is never held twice.

``down`` is the N×N box mean, ``up`` bilinear (half-pixel centres): smooth corrections, no blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

BACKPROJECT_ITERATIONS = 10  # conjugate-gradient steps: the error shrinks ≥ 3× each (3^-10 ≈ 2e-5 left)
CLIPPED_ROUNDS = 12  # rounds for blocks whose pixels the smooth correction pushed past black or white
STRIPE_ROWS = 512  # low-resolution rows per stripe (× N image rows)


def _down(x: torch.Tensor, n: int) -> torch.Tensor:
    return F.avg_pool2d(x, n)


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def low_band(x: torch.Tensor, n: int) -> torch.Tensor:
    """``up(down(x))``: what of ``x`` (B, C, H, W; H and W multiples of ``n``) an N× smaller picture holds."""
    return _up(_down(x.float(), n), tuple(x.shape[-2:])).to(x.dtype)


def keep_low_band(latents: torch.Tensor, reference: torch.Tensor, n: int) -> torch.Tensor:
    """``latents`` + ``up(c)``, with ``c`` such that the result shrunk N× is ``reference`` shrunk N×
    (ILVR's step, made exact for the box filter): the change is smooth, the detail is kept."""
    x = latents.float()
    size = tuple(x.shape[-2:])
    c = _solve(_down(reference.float() - x, n), lambda v: _down(_up(v, size), n))
    return (x + _up(c, size)).to(latents.dtype)


def _solve(residual: torch.Tensor, du: Callable[[torch.Tensor], torch.Tensor],
           iterations: int = BACKPROJECT_ITERATIONS, cancel: Callable[[], None] | None = None) -> torch.Tensor:
    """``c`` with ``du(c) = residual``: down∘up is symmetric positive definite (a [1/8, 3/4, 1/8]
    -like filter each way for N = 2: eigenvalues from ¼ to 1), so conjugate gradients shrink the
    error ≥ 3× an iteration."""
    c = torch.zeros_like(residual)
    r_k, p = residual.clone(), residual.clone()
    rr = float((r_k * r_k).sum())
    for _ in range(iterations):
        if rr == 0.0:
            break
        if cancel is not None:
            cancel()
        ap = du(p)
        alpha = rr / float((p * ap).sum())
        c += alpha * p
        r_k -= alpha * ap
        rr, rr_old = float((r_k * r_k).sum()), rr
        p = r_k + (rr / rr_old) * p
    return c


def latent_factor(anchor: int, height: int, width: int) -> int:
    """The anchor on the latent canvas: the same ratio (a latent pixel stands for a fixed block of
    image pixels), or 0 when the latent canvas is not a multiple of it (the pixel back-projection
    alone then makes the result exact)."""
    return anchor if anchor >= 2 and not height % anchor and not width % anchor else 0


def _as_nchw(image: np.ndarray, rows: slice) -> torch.Tensor:
    a = image[rows]
    a = a[..., None] if a.ndim == 2 else a
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)[None]


def _up_rows(c: torch.Tensor, n: int, lo: int, hi: int, width: int) -> torch.Tensor:
    """Rows ``[lo, hi)`` (image px, multiples of n) of ``up(c)``, from a slab of ``c`` with one
    row of margin each side: the same values as upsampling ``c`` whole."""
    a, b = max(lo // n - 1, 0), min(hi // n + 1, c.shape[-2])
    slab = _up(c[..., a:b, :], ((b - a) * n, width))
    return slab[..., lo - a * n: hi - a * n, :]


def _down_image(image: np.ndarray, n: int, stripe: int) -> torch.Tensor:
    h = image.shape[0]
    parts = [_down(_as_nchw(image, slice(r, min(r + stripe * n, h))), n) for r in range(0, h, stripe * n)]
    return torch.cat(parts, dim=-2)


def back_project(image: np.ndarray, source: np.ndarray, n: int, top: float,
                 iterations: int = BACKPROJECT_ITERATIONS, stripe: int = STRIPE_ROWS,
                 cancel: Callable[[], None] | None = None) -> np.ndarray:
    """``image`` (H, W[, C], integers 0…``top``) corrected in place so that its N× box mean equals
    ``source`` ((H/N, W/N[, C]) in the same units), to the image's quantisation; returned.

    A smooth correction first (bilinear, solved); where it would push pixels past 0 or ``top``
    (a model's picture clipped at black or white) the rest of a block's difference goes to the
    block's other pixels, a few rounds, so the equality holds there too."""
    h, w = image.shape[:2]
    src = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))
    src = (src[..., None] if src.ndim == 2 else src).permute(2, 0, 1)[None]
    bands = range(0, h, stripe * n)

    def du(x: torch.Tensor) -> torch.Tensor:  # down(up(x)) in stripes: no full-size float picture
        return torch.cat([_down(_up_rows(x, n, r, min(r + stripe * n, h), w), n) for r in bands], dim=-2)

    def add(correction: Callable[[int, int], torch.Tensor]) -> None:
        for r in bands:
            rows = slice(r, min(r + stripe * n, h))
            out = (_as_nchw(image, rows) + correction(rows.start, rows.stop))[0].permute(1, 2, 0).numpy()
            image[rows] = np.clip(np.rint(out[..., 0] if image.ndim == 2 else out), 0, top).astype(image.dtype)

    c = _solve(src - _down_image(image, n, stripe), du, iterations, cancel)
    add(lambda lo, hi: _up_rows(c, n, lo, hi, w))
    for _ in range(CLIPPED_ROUNDS):
        residual = src - _down_image(image, n, stripe)
        if float(residual.abs().max()) <= 0.5:  # within the rounding of the output's levels
            break
        # Only blocks with clipped pixels are left: their difference goes to the pixels that can move.
        fix = torch.where(residual.abs() > 0.5, residual, torch.zeros_like(residual))
        add(lambda lo, hi, fix=fix: _clip_aware(image, _nearest_rows(fix, n, lo, hi, w), n, top, lo, hi))
    return image


def _nearest_rows(x: torch.Tensor, n: int, lo: int, hi: int, width: int) -> torch.Tensor:
    """Rows [lo, hi) of ``x`` (low resolution) repeated N× each way: each block its own value."""
    return x[..., lo // n: -(-hi // n), :].repeat_interleave(n, -2).repeat_interleave(n, -1)[..., : hi - lo, :width]


def _clip_aware(image: np.ndarray, fix: torch.Tensor, n: int, top: float, lo: int, hi: int) -> torch.Tensor:
    """``fix`` (per pixel: its block's difference) on the pixels of rows [lo, hi) that can still
    move its way, scaled by N² ÷ their number in the block, so the block's mean moves by it."""
    px = _as_nchw(image, slice(lo, hi))
    free = (((fix > 0) & (px < top)) | ((fix < 0) & (px > 0))).float()
    count = _down(free, n) * n * n
    share = torch.where(count > 0, n * n / count.clamp_min(1), torch.zeros_like(count))
    return fix * free * _nearest_rows(share, n, 0, hi - lo, px.shape[-1])
