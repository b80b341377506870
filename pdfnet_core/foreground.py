"""Foreground colour estimation: remove the old background's colour spill from a cut-out's edges.

Given an image I and its alpha matte a, find the foreground colour F (and background B) with
I = a*F + (1-a)*B. Compositing F rather than I over a new background removes the halo of the old one.

Two methods, batched torch on any device and dtype (half precision is computed in float32):
* blur-fusion, Forte & Pitié 2021, "Approximate Fast Foreground Colour Estimation": box-blurred local
  colour means, two passes (window 90 then 6) as in their published code. Fast, O(1) per pixel.
* multi-level, Germer et al. 2020, "Fast Multi-Level Foreground Estimation": the smoothness-regularised
  least-squares solve of pymatting's `estimate_foreground_ml`, coarse to fine. Better on hair.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from pdfnet_core.refine import _check_same_size, box_blur, check_image, check_mask

__all__ = [
    "ForegroundEstimate", "BlurFusionConfig", "MultiLevelConfig", "estimate_foreground_blur_fusion",
    "estimate_foreground_ml", "estimate_foreground", "FOREGROUND_METHODS",
]


class ForegroundEstimate(NamedTuple):
    foreground: torch.Tensor  # [B,H,W,3] in 0..1
    background: torch.Tensor  # [B,H,W,3] in 0..1 (blur-fusion: the local mean background colour)


@dataclass(frozen=True)
class BlurFusionConfig:
    # Box window sizes of the successive passes: a wide one for a stable colour guess, then a narrow
    # one to follow local detail (Forte & Pitié's published defaults).
    sizes: tuple[int, ...] = (90, 6)


@dataclass(frozen=True)
class MultiLevelConfig:
    # pymatting's defaults for estimate_foreground_ml.
    regularization: float = 1e-5
    n_small_iterations: int = 10
    n_big_iterations: int = 2
    small_size: int = 32
    gradient_weight: float = 1.0
    # "red_black" (fast, any device; within a stated tolerance of pymatting) or "raster" (pymatting's
    # own sweep order: equal to it up to float rounding, but h+w-1 sequential steps per iteration).
    sweep: str = "red_black"


def _prepare(image: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channels-first working copies: image [B,3,H,W], alpha [B,1,H,W], float32 or float64."""
    image = check_image(image, "image")
    alpha = check_mask(alpha, "alpha")
    _check_same_size(alpha, image, "alpha", "image")
    dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    img = image.to(dtype).permute(0, 3, 1, 2)
    a = alpha.to(device=image.device, dtype=dtype).clamp(0, 1)[:, None]
    return img, a


def _finish(fg: torch.Tensor, bg: torch.Tensor, dtype: torch.dtype) -> ForegroundEstimate:
    return ForegroundEstimate(fg.permute(0, 2, 3, 1).to(dtype).contiguous(),
                              bg.permute(0, 2, 3, 1).to(dtype).contiguous())


# --------------------------------------------------------------------------------------------
# blur-fusion


def _blur_fusion_pass(image, fg, bg, alpha, size):
    # The 1e-5 terms are the published code's: they keep fully transparent/opaque windows finite.
    blurred_alpha = box_blur(alpha, size)
    blurred_fg = box_blur(fg * alpha, size) / (blurred_alpha + 1e-5)
    blurred_bg = box_blur(bg * (1 - alpha), size) / ((1 - blurred_alpha) + 1e-5)
    fg = blurred_fg + alpha * (image - alpha * blurred_fg - (1 - alpha) * blurred_bg)
    return fg.clamp(0, 1), blurred_bg


def estimate_foreground_blur_fusion(image: torch.Tensor, alpha: torch.Tensor,
                                    config: BlurFusionConfig = BlurFusionConfig()) -> ForegroundEstimate:
    """Forte & Pitié's blur-fusion estimate; image [B,H,W,3], alpha [B,H,W], both 0..1."""
    if not config.sizes or any(s < 1 for s in config.sizes):
        raise ValueError(f"BlurFusionConfig.sizes must be positive window sizes, got {config.sizes}")
    img, a = _prepare(image, alpha)
    fg, bg = img, img
    for size in config.sizes:
        fg, bg = _blur_fusion_pass(img, fg, bg, a, size)
    return _finish(fg, bg.clamp(0, 1), image.dtype)


# --------------------------------------------------------------------------------------------
# multi-level (Germer et al. 2020)


def _nearest(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    # Integer source indices (dst * src // dst) exactly as pymatting computes them; F.interpolate's
    # float scale can pick the neighbouring pixel on some sizes.
    hs, ws = x.shape[-2:]
    ys = torch.arange(h, device=x.device) * hs // h
    xs = torch.arange(w, device=x.device) * ws // w
    return x.index_select(-2, ys).index_select(-1, xs)


def _level_sizes(h0: int, w0: int) -> list[tuple[int, int]]:
    # pymatting: n = ceil(log2(max side)); level i has sides round(side ** (i/n)), from 1x1 upwards.
    n = math.ceil(math.log2(max(h0, w0)))
    if n == 0:  # a 1x1 image (pymatting divides by zero here)
        return [(h0, w0)]
    return [(round(h0 ** (i / n)), round(w0 ** (i / n))) for i in range(n + 1)]


def _shifted(x: torch.Tensor) -> list[torch.Tensor]:
    """The 4 neighbours (left, right, up, down) of every pixel, edge pixels repeating themselves."""
    left = torch.cat([x[..., :, :1], x[..., :, :-1]], -1)
    right = torch.cat([x[..., :, 1:], x[..., :, -1:]], -1)
    up = torch.cat([x[..., :1, :], x[..., :-1, :]], -2)
    down = torch.cat([x[..., 1:, :], x[..., -1:, :]], -2)
    return [left, right, up, down]


class _Level(NamedTuple):
    """One level's per-pixel systems. pymatting's update solves, per channel,
    [[a0² + s, a0*a1], [a0*a1, a1² + s]] (F, B) = (a0*I + S_F, a1*I + S_B), where s is the sum of
    the 4 neighbour weights and S_F, S_B the weighted sums of the neighbours' F and B."""

    weights: list[torch.Tensor]  # 4 x [B,1,h,w]: left, right, up, down neighbour (pymatting's da),
    #                              0 where that neighbour is outside the image
    w_self: torch.Tensor         # weight of the pixel's own old value: pymatting clamps a neighbour
    #                              outside the image to the pixel itself
    a0: torch.Tensor             # [B,1,h,w] alpha
    a1: torch.Tensor             # 1 - alpha
    wsum: torch.Tensor           # s
    inv_det: torch.Tensor        # 1 / det
    image: torch.Tensor          # [B,C,h,w]


def _level_system(image: torch.Tensor, alpha: torch.Tensor, cfg: MultiLevelConfig) -> _Level:
    h, w = alpha.shape[-2:]
    ys = torch.arange(h, device=alpha.device)[:, None].expand(h, w)
    xs = torch.arange(w, device=alpha.device)[None, :].expand(h, w)
    inside = (xs > 0, xs < w - 1, ys > 0, ys < h - 1)
    weights = [cfg.regularization + cfg.gradient_weight * (alpha - n).abs() for n in _shifted(alpha)]
    wsum = weights[0] + weights[1] + weights[2] + weights[3]
    w_self = sum(wd * ~ok for wd, ok in zip(weights, inside))
    weights = [wd * ok for wd, ok in zip(weights, inside)]
    a0, a1 = alpha, 1 - alpha
    # det = (a0² + s)(a1² + s) - (a0*a1)² with the a0²a1² terms cancelled by hand: in flat alpha s is
    # ~4e-5 and float32 cannot subtract them (pymatting carries up to ~1e-3 of rounding there).
    return _Level(weights, w_self, a0, a1, wsum, 1 / (wsum * (a0 * a0 + a1 * a1 + wsum)), image)


def _solve(lv: _Level, nbr: torch.Tensor, c: int) -> torch.Tensor:
    """(F, B) stacked on channels, from the neighbour sums (S_F, S_B) stacked likewise.

    Cramer's rule with the O(1) image terms cancelled symbolically (they cancel exactly:
    (a1² + s)*a0*I - a0*a1*a1*I = s*a0*I), so float32 keeps ~1e-7 relative accuracy even where the
    system is nearly singular, as in flat alpha regions.
    """
    s_f, s_b = nbr[:, :c], nbr[:, c:]
    t = lv.a1 * s_f - lv.a0 * s_b
    f = (lv.a1 * t + lv.wsum * (lv.a0 * lv.image + s_f)) * lv.inv_det
    b = (lv.wsum * (lv.a1 * lv.image + s_b) - lv.a0 * t) * lv.inv_det
    return torch.cat([f, b], 1).clamp_(0, 1)


def _neighbour_sum(x: torch.Tensor, lv: _Level) -> torch.Tensor:
    # In place on one accumulator: four shifted copies of a 6-channel 4096² stack would cost GiBs.
    s = lv.w_self * x
    s[..., :, 1:].addcmul_(lv.weights[0][..., :, 1:], x[..., :, :-1])
    s[..., :, :-1].addcmul_(lv.weights[1][..., :, :-1], x[..., :, 1:])
    s[..., 1:, :].addcmul_(lv.weights[2][..., 1:, :], x[..., :-1, :])
    s[..., :-1, :].addcmul_(lv.weights[3][..., :-1, :], x[..., 1:, :])
    return s


def _sweep_red_black(fb: torch.Tensor, lv: _Level, n_iter: int) -> torch.Tensor:
    # Updating the two checkerboard colours in turn is Gauss-Seidel with the same per-pixel update
    # and fixed point as pymatting's raster sweep, and each half-sweep is one vectorised step.
    h, w = fb.shape[-2:]
    ar = torch.arange(max(h, w), device=fb.device)
    red = (ar[:h, None] + ar[None, :w]) % 2 == 0
    c = fb.shape[1] // 2
    for _ in range(n_iter):
        for sel in (red, ~red):
            fb = torch.where(sel, _solve(lv, _neighbour_sum(fb, lv), c), fb)
    return fb


def _skew(x: torch.Tensor, pad: int) -> torch.Tensor:
    """[..., h, w] -> [..., h+w-1+2*pad, h+2*pad] with out[..., pad+y+x, pad+y] = x[..., y, x], else 0.

    Anti-diagonal y+x = d becomes the contiguous row d, so a raster-order Gauss-Seidel sweep, whose
    pixel (y, x) needs the new values of (y, x-1) and (y-1, x) and the old ones of (y, x+1) and
    (y+1, x), runs as h+w-1 vectorised steps (a wavefront) instead of h*w scalar ones.
    """
    h, w = x.shape[-2:]
    out = x.new_zeros(*x.shape[:-2], h + w - 1 + 2 * pad, h + 2 * pad)
    y = torch.arange(h, device=x.device)[:, None]
    d = y + torch.arange(w, device=x.device)[None, :]
    out[..., pad + d, pad + y] = x
    return out


def _unskew(s: torch.Tensor, h: int, w: int, pad: int) -> torch.Tensor:
    y = torch.arange(h, device=s.device)[:, None]
    d = y + torch.arange(w, device=s.device)[None, :]
    return s[..., pad + d, pad + y]


def _sweep_raster(fb: torch.Tensor, lv: _Level, n_iter: int) -> torch.Tensor:
    # pymatting's exact order (row by row, left to right, in place), as a wavefront over
    # anti-diagonals. Slower (h+w-1 small steps per iteration) but matches pymatting to rounding.
    h, w = fb.shape[-2:]
    c = fb.shape[1] // 2
    w_nbr = [_skew(wd, 0) for wd in lv.weights]
    sk = _Level([], *(_skew(t, 0) for t in lv[1:]))
    s = _skew(fb, 1)  # padded by one so every neighbour slice exists (zeros, weight 0)
    for _ in range(n_iter):
        for d in range(h + w - 1):
            y0, y1 = max(0, d - w + 1), min(h - 1, d) + 1
            q = slice(y0, y1)
            cur = s[..., d + 1, y0 + 1:y1 + 1]
            left, up = s[..., d, y0 + 1:y1 + 1], s[..., d, y0:y1]
            right, down = s[..., d + 2, y0 + 1:y1 + 1], s[..., d + 2, y0 + 2:y1 + 2]
            step = _Level([], *(t[..., d, q] for t in sk[1:]))
            nbr = (w_nbr[0][..., d, q] * left + w_nbr[1][..., d, q] * right + w_nbr[2][..., d, q] * up
                   + w_nbr[3][..., d, q] * down + step.w_self * cur)
            s[..., d + 1, y0 + 1:y1 + 1] = _solve(step, nbr, c)
    return _unskew(s, h, w, 1)


SWEEPS: dict[str, Callable[[torch.Tensor, _Level, int], torch.Tensor]] = {
    "red_black": _sweep_red_black,
    "raster": _sweep_raster,
}


def estimate_foreground_ml(image: torch.Tensor, alpha: torch.Tensor,
                           config: MultiLevelConfig = MultiLevelConfig()) -> ForegroundEstimate:
    """Germer et al.'s multi-level estimate; image [B,H,W,3], alpha [B,H,W], both 0..1.

    Follows pymatting's `estimate_foreground_ml` step for step (same level sizes, nearest resizes,
    initial mean colours, per-pixel update, defaults); `config.sweep` picks the update order.
    """
    if config.sweep not in SWEEPS:
        raise ValueError(f"MultiLevelConfig.sweep must be one of {sorted(SWEEPS)}, got {config.sweep!r}")
    sweep = SWEEPS[config.sweep]
    img, a = _prepare(image, alpha)
    h0, w0 = img.shape[-2:]

    # Start from the mean colour of the sure foreground (alpha > 0.9) and sure background (< 0.1).
    sure_f = (a > 0.9).to(img.dtype)
    sure_b = (a < 0.1).to(img.dtype)
    f_mean = (img * sure_f).sum((2, 3), keepdim=True) / (sure_f.sum((2, 3), keepdim=True) + 1e-5)
    b_mean = (img * sure_b).sum((2, 3), keepdim=True) / (sure_b.sum((2, 3), keepdim=True) + 1e-5)
    fb = torch.cat([f_mean, b_mean], 1)  # F and B stacked on channels: they share every weight
    for h, w in _level_sizes(h0, w0):
        level = _level_system(_nearest(img, h, w), _nearest(a, h, w), config)
        small = h <= config.small_size and w <= config.small_size
        n_iter = config.n_small_iterations if small else config.n_big_iterations
        fb = sweep(_nearest(fb, h, w), level, n_iter)
    return _finish(fb[:, :3], fb[:, 3:], image.dtype)


FOREGROUND_METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], ForegroundEstimate]] = {
    "blur_fusion": estimate_foreground_blur_fusion,
    "multilevel": estimate_foreground_ml,
}


def estimate_foreground(image: torch.Tensor, alpha: torch.Tensor, method: str = "multilevel") -> ForegroundEstimate:
    """Foreground (and background) colours by `method` ("multilevel" or "blur_fusion"), defaults."""
    if method not in FOREGROUND_METHODS:
        raise ValueError(f"estimate_foreground: method must be one of {sorted(FOREGROUND_METHODS)}, got {method!r}")
    return FOREGROUND_METHODS[method](image, alpha)
