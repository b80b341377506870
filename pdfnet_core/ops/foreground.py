"""Foreground colour estimation: remove the old background's colour spill from a cut-out's edges.

Given an image I and its alpha matte a, find the foreground colour F (and background B) with
I = a*F + (1-a)*B. Compositing F rather than I over a new background removes the halo of the old one.

Two methods, batched torch on any device and dtype (half precision is computed in float32):
* blur-fusion, Forte & Pitié 2021, "Approximate Fast Foreground Colour Estimation": box-blurred local
  colour means, two passes (window 90 then 6) as in their published code. Fast, O(1) per pixel.
* multi-level, Germer et al. 2020, "Fast Multi-Level Foreground Estimation": the smoothness-regularised
  least-squares solve of pymatting's `estimate_foreground_ml`, coarse to fine. Better on hair.

Agreement with pymatting 1.1.16 `estimate_foreground_ml` (same defaults), float32 inputs:
* sweep="raster": pymatting's own update order; max abs difference ~1e-6 on images of 30..512 px
  (tests assert < 1e-5). On images of a few pixels pymatting's float32 rounding reaches ~4e-4 and
  ours stays within ~5e-7 of a float64 evaluation of the same algorithm.
* sweep="red_black" (default, fully vectorised): mean abs difference ~0.003-0.007, max ~0.05-0.15
  on synthetic 48..512 px scenes (tests assert mean < 0.01, max < 0.25). Only the order of the
  Gauss-Seidel updates differs; with pymatting's 2 iterations per large level neither order has
  converged, and red-black ends as close to the converged solution as pymatting does (mean distance
  0.042-0.049 vs 0.042-0.050 on the scenes measured). With enough iterations both reach the same
  result (< 5e-3 after 300).

Memory: red-black levels are solved in tiles (`MultiLevelConfig.tile_size`) with a halo of one pixel
per half-sweep, so a pixel's result depends only on inputs inside its tile's window and equals the
whole-level solve up to float rounding (tests assert max abs < 1e-6 against tile_size=0; measured
0). Only the input and the two results are full-size: a 6000x4000 photo costs 0.68 GiB above its
input (two 288 MiB results, ~40 MiB per tile) instead of 3.7 GiB, and on one core 512² tiles run
~1.8x faster than whole levels (cache); benchmarks/bench_photo.py --stages.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F

from .checks import batch_pair, check_image, check_mask, check_same_size
from .refine import box_blur

__all__ = [
    "ForegroundEstimate", "BlurFusionConfig", "MultiLevelConfig", "estimate_foreground_blur_fusion",
    "estimate_foreground_ml", "estimate_foreground", "FOREGROUND_METHODS", "SWEEPS",
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
    # Side of the tiles a red-black level is solved in (0: whole levels). Any size gives the same
    # result; 512 keeps a tile's working set (~40 float planes) near 40 MiB. A raster sweep carries
    # information across the whole level in one pass, so it always runs on whole levels.
    tile_size: int = 512


def _checked(image: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    image = check_image(image, "image")
    alpha = check_mask(alpha, "alpha")
    check_same_size(alpha, image, "alpha", "image", "connect the mask made from this image")
    batch_pair(alpha.shape[0], image.shape[0], "alpha", "image", broadcast=False)
    return image, alpha


def _prepare(image: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channels-first working copies: image [B,3,H,W], alpha [B,1,H,W], float32 or float64."""
    image, alpha = _checked(image, alpha)
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


def _source_index(start: int, stop: int, dst: int, src: int, device) -> torch.Tensor:
    # Nearest resize indices (dst * src // dst) exactly as pymatting computes them; F.interpolate's
    # float scale can pick the neighbouring pixel on some sizes.
    return torch.arange(start, stop, device=device) * src // dst


def _window(x: torch.Tensor, level: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int],
            dtype: torch.dtype) -> torch.Tensor:
    """Rows and columns [rows) x [cols) of ``x`` [B,C,hs,ws] nearest-resized to ``level``, in ``dtype``."""
    hs, ws = x.shape[-2:]
    # Cut to the source rectangle first (a view), so the selects copy the window and no more.
    y0, x0 = rows[0] * hs // level[0], cols[0] * ws // level[1]
    x = x[:, :, y0:(rows[1] - 1) * hs // level[0] + 1, x0:(cols[1] - 1) * ws // level[1] + 1]
    if (hs, ws) != level:
        x = x.index_select(-2, _source_index(*rows, level[0], hs, x.device) - y0)
        x = x.index_select(-1, _source_index(*cols, level[1], ws, x.device) - x0)
    return x.to(dtype, memory_format=torch.contiguous_format, copy=True)  # the sweeps work in place


def _level_sizes(h0: int, w0: int) -> list[tuple[int, int]]:
    # pymatting: n = ceil(log2(max side)); level i has sides round(side ** (i/n)), from 1x1 upwards.
    n = math.ceil(math.log2(max(h0, w0)))
    if n == 0:  # a 1x1 image (pymatting divides by zero here)
        return [(h0, w0)]
    return [(round(h0 ** (i / n)), round(w0 ** (i / n))) for i in range(n + 1)]


class _Level(NamedTuple):
    """One level's per-pixel systems. pymatting's update solves, per pixel and channel,
    [[a0² + s, a0*a1], [a0*a1, a1² + s]] (F, B) = (a0*I + S_F, a1*I + S_B), where s is the sum of
    the 4 neighbour weights and S_F, S_B the weighted sums of the neighbours' current F and B.

    By Cramer's rule, with det = s*(a0² + a1² + s) and t = a1*S_F - a0*S_B,
        F = (a1*t + s*(a0*I + S_F)) / det,    B = (s*(a1*I + S_B) - a0*t) / det
    (the O(1) image terms of the textbook form cancel exactly and are cancelled here by hand, so
    float32 keeps ~1e-7 relative accuracy where the system is nearly singular, as in flat alpha,
    where pymatting's own float32 subtraction carries up to ~1e-3 of rounding). Everything that
    does not depend on S_F, S_B is precomputed once per level.
    """

    wx: torch.Tensor             # [B,1,h,w-1] weight between horizontal neighbours (pymatting's
    #                              da = regularization + gradient_weight*|alpha difference|)
    wy: torch.Tensor             # [B,1,h-1,w] the same between vertical neighbours
    w_self: torch.Tensor         # [h,w] weight of the pixel's own old value: pymatting clamps a
    #                              neighbour outside the image to the pixel itself (da = regularization)
    a0: torch.Tensor             # [B,1,h,w] alpha
    a1: torch.Tensor             # 1 - alpha
    k0: torch.Tensor             # a0 / det
    k1: torch.Tensor             # a1 / det
    ks: torch.Tensor             # s / det
    c_f: torch.Tensor            # [B,C,h,w] s*a0*I / det
    c_b: torch.Tensor            # [B,C,h,w] s*a1*I / det


def _level_system(image: torch.Tensor, alpha: torch.Tensor, cfg: MultiLevelConfig,
                  origin: tuple[int, int] = (0, 0), level: tuple[int, int] | None = None) -> _Level:
    """The systems of a window of a level: the window starts at ``origin`` of a level sized ``level``
    (default: the window is the whole level). Only the level's own border has outside neighbours."""
    h, w = alpha.shape[-2:]
    lh, lw = level or (h, w)
    wx = cfg.regularization + cfg.gradient_weight * (alpha[..., :, 1:] - alpha[..., :, :-1]).abs()
    wy = cfg.regularization + cfg.gradient_weight * (alpha[..., 1:, :] - alpha[..., :-1, :]).abs()
    ys = torch.arange(origin[0], origin[0] + h, device=alpha.device)[:, None]
    xs = torch.arange(origin[1], origin[1] + w, device=alpha.device)[None, :]
    outside = (xs == 0).int() + (xs == lw - 1).int() + (ys == 0).int() + (ys == lh - 1).int()
    w_self = cfg.regularization * outside.to(alpha.dtype)
    wsum = w_self + torch.zeros_like(alpha)
    wsum[..., :, 1:] += wx
    wsum[..., :, :-1] += wx
    wsum[..., 1:, :] += wy
    wsum[..., :-1, :] += wy
    a0, a1 = alpha, 1 - alpha
    inv_det = 1 / (wsum * (a0 * a0 + a1 * a1 + wsum))
    ks = wsum * inv_det
    return _Level(wx, wy, w_self, a0, a1, a0 * inv_det, a1 * inv_det, ks, (ks * a0) * image, (ks * a1) * image)


def _solve(lv: _Level, nbr: torch.Tensor, c: int, out: torch.Tensor | None = None,
           t: torch.Tensor | None = None) -> torch.Tensor:
    """(F, B) stacked on channels, from the neighbour sums (S_F, S_B) stacked likewise.

    `out` and `t` are optional buffers shaped like `nbr` and its first half.
    """
    s_f, s_b = nbr[:, :c], nbr[:, c:]
    out = torch.empty_like(nbr) if out is None else out
    t = torch.mul(lv.a1, s_f, out=t)
    t.addcmul_(lv.a0, s_b, value=-1)
    torch.addcmul(lv.c_f, lv.ks, s_f, out=out[:, :c]).addcmul_(lv.k1, t)
    torch.addcmul(lv.c_b, lv.ks, s_b, out=out[:, c:]).addcmul_(lv.k0, t, value=-1)
    return out.clamp_(0, 1)


def _neighbour_sum(x: torch.Tensor, lv: _Level, out: torch.Tensor | None = None) -> torch.Tensor:
    # In place on one accumulator: four shifted copies of a 6-channel 4096² stack would cost GiBs.
    s = torch.mul(lv.w_self, x, out=out)
    s[..., :, 1:].addcmul_(lv.wx, x[..., :, :-1])   # left neighbours
    s[..., :, :-1].addcmul_(lv.wx, x[..., :, 1:])   # right
    s[..., 1:, :].addcmul_(lv.wy, x[..., :-1, :])   # up
    s[..., :-1, :].addcmul_(lv.wy, x[..., 1:, :])   # down
    return s


def _sweep_red_black(fb: torch.Tensor, lv: _Level, n_iter: int, parity: int = 0) -> torch.Tensor:
    """Updates ``fb`` in place. ``parity``: (top + left) % 2 of the window in its level, so a tile's
    checkerboard continues the level's."""
    # Updating the two checkerboard colours in turn is Gauss-Seidel with the same per-pixel update
    # and fixed point as pymatting's raster sweep, and each half-sweep is one vectorised step.
    h, w = fb.shape[-2:]
    ar = torch.arange(max(h, w), device=fb.device)
    red = (ar[:h, None] + ar[None, :w] + parity) % 2 == 0
    c = fb.shape[1] // 2
    # Buffers reused by every half-sweep: on CPU each fresh large tensor is fresh pages from the OS
    # (page faults and zeroing), which cost as much as the arithmetic.
    nbr, new, t = torch.empty_like(fb), torch.empty_like(fb), torch.empty_like(fb[:, :c])
    for _ in range(n_iter):
        for sel in (red, ~red):
            _solve(lv, _neighbour_sum(fb, lv, out=nbr), c, out=new, t=t)
            torch.where(sel, new, fb, out=fb)
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


def _sweep_raster(fb: torch.Tensor, lv: _Level, n_iter: int, parity: int = 0) -> torch.Tensor:
    """Always a whole level (``parity`` 0): see MultiLevelConfig.tile_size."""
    # pymatting's exact order (row by row, left to right, in place), as a wavefront over
    # anti-diagonals. Slower (h+w-1 small steps per iteration) but matches pymatting to rounding.
    h, w = fb.shape[-2:]
    c = fb.shape[1] // 2
    # Per-direction weights at full size, 0 where the neighbour is outside (its weight is in w_self).
    full = [F.pad(lv.wx, (1, 0)), F.pad(lv.wx, (0, 1)), F.pad(lv.wy, (0, 0, 1, 0)), F.pad(lv.wy, (0, 0, 0, 1))]
    w_nbr = [_skew(t, 0) for t in full]
    sk = _Level(None, None, *(_skew(t.expand_as(lv.a0) if t.ndim == 2 else t, 0) for t in lv[2:]))
    s = _skew(fb, 1)  # padded by one so every neighbour slice exists (zeros, weight 0)
    for _ in range(n_iter):
        for d in range(h + w - 1):
            y0, y1 = max(0, d - w + 1), min(h - 1, d) + 1
            q = slice(y0, y1)
            cur = s[..., d + 1, y0 + 1:y1 + 1]
            left, up = s[..., d, y0 + 1:y1 + 1], s[..., d, y0:y1]
            right, down = s[..., d + 2, y0 + 1:y1 + 1], s[..., d + 2, y0 + 2:y1 + 2]
            step = _Level(None, None, *(t[..., d, q] for t in sk[2:]))
            nbr = (w_nbr[0][..., d, q] * left + w_nbr[1][..., d, q] * right + w_nbr[2][..., d, q] * up
                   + w_nbr[3][..., d, q] * down + step.w_self * cur)
            s[..., d + 1, y0 + 1:y1 + 1] = _solve(step, nbr, c)
    return _unskew(s, h, w, 1)


SWEEPS: dict[str, Callable[[torch.Tensor, _Level, int, int], torch.Tensor]] = {
    "red_black": _sweep_red_black,
    "raster": _sweep_raster,
}


def _tiles(h: int, w: int, tile: int, halo: int) -> Iterator[tuple[tuple[int, int], tuple[int, int],
                                                                      tuple[int, int], tuple[int, int]]]:
    """(rows, cols) of each tile of an h x w level and (rows, cols) of its window (the tile and
    ``halo`` pixels around it, cut at the level's border); ``tile`` 0 is one tile."""
    step_y, step_x = (tile, tile) if tile > 0 else (h, w)
    for y0 in range(0, h, step_y):
        y1 = min(h, y0 + step_y)
        for x0 in range(0, w, step_x):
            x1 = min(w, x0 + step_x)
            yield (y0, y1), (x0, x1), (max(0, y0 - halo), min(h, y1 + halo)), (max(0, x0 - halo), min(w, x1 + halo))


def _solve_level(img: torch.Tensor, alpha: torch.Tensor, fb: torch.Tensor, level: tuple[int, int],
                 cfg: MultiLevelConfig, dtype: torch.dtype
                 ) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """One level's (F, B) [B,6,rows,cols] tile by tile, from the full-size image and alpha and the
    previous level's ``fb``: every input is nearest-resized one window at a time.

    A half-sweep moves information one pixel, so after ``n_iter`` iterations a pixel depends on
    inputs within 2*n_iter pixels: with that halo the tile is what the whole-level solve gives.
    """
    h, w = level
    small = h <= cfg.small_size and w <= cfg.small_size
    n_iter = cfg.n_small_iterations if small else cfg.n_big_iterations
    tile = cfg.tile_size if cfg.sweep == "red_black" else 0
    sweep = SWEEPS[cfg.sweep]
    for (y0, y1), (x0, x1), rows, cols in _tiles(h, w, tile, 2 * n_iter):
        a = _window(alpha, level, rows, cols, dtype).clamp_(0, 1)
        system = _level_system(_window(img, level, rows, cols, dtype), a, cfg, (rows[0], cols[0]), level)
        out = sweep(_window(fb, level, rows, cols, dtype), system, n_iter, (rows[0] + cols[0]) % 2)
        yield slice(y0, y1), slice(x0, x1), out[..., y0 - rows[0]:y1 - rows[0], x0 - cols[0]:x1 - cols[0]]


def _mean_colours(img: torch.Tensor, alpha: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B,6,1,1]: mean colour of the sure foreground (alpha > 0.9) and sure background (< 0.1),
    summed in bands of rows so no full-size temporary is made."""
    b, _, h, w = img.shape
    sums = torch.zeros(4, b, 3, 1, 1, dtype=dtype, device=img.device)  # F sum, B sum, F count, B count
    band = max(1, (1 << 18) // w)
    for y0 in range(0, h, band):
        im = img[:, :, y0:y0 + band].to(dtype)
        a = alpha[:, :, y0:y0 + band].to(dtype)
        sure_f, sure_b = (a > 0.9).to(dtype), (a < 0.1).to(dtype)
        sums[0] += (im * sure_f).sum((2, 3), keepdim=True)
        sums[1] += (im * sure_b).sum((2, 3), keepdim=True)
        sums[2] += sure_f.sum((2, 3), keepdim=True)
        sums[3] += sure_b.sum((2, 3), keepdim=True)
    return torch.cat([sums[0] / (sums[2] + 1e-5), sums[1] / (sums[3] + 1e-5)], 1)


def estimate_foreground_ml(image: torch.Tensor, alpha: torch.Tensor,
                           config: MultiLevelConfig = MultiLevelConfig()) -> ForegroundEstimate:
    """Germer et al.'s multi-level estimate; image [B,H,W,3], alpha [B,H,W], both 0..1.

    Follows pymatting's `estimate_foreground_ml` step for step (same level sizes, nearest resizes,
    initial mean colours, per-pixel update, defaults); `config.sweep` picks the update order.
    """
    if config.sweep not in SWEEPS:
        raise ValueError(f"MultiLevelConfig.sweep must be one of {sorted(SWEEPS)}, got {config.sweep!r}")
    if config.tile_size < 0:
        raise ValueError(f"MultiLevelConfig.tile_size must be 0 (whole levels) or positive, got {config.tile_size}")
    image, alpha = _checked(image, alpha)
    dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    # Views only: each tile converts its own window, so no full-size working copy is ever made.
    img = image.permute(0, 3, 1, 2)
    a = alpha.to(device=image.device)[:, None]
    b, h0, w0 = alpha.shape
    fb = _mean_colours(img, a, dtype)  # F and B stacked on channels: they share every weight
    levels = _level_sizes(h0, w0)
    for level in levels[:-1]:
        finer = fb.new_empty(b, 6, *level)
        for rows, cols, tile in _solve_level(img, a, fb, level, config, dtype):
            finer[..., rows, cols] = tile
        fb = finer
    # The finest level goes straight into the channels-last results: no full-size [B,6,H,W] stack.
    fg, bg = (image.new_empty(b, h0, w0, 3) for _ in range(2))
    for rows, cols, tile in _solve_level(img, a, fb, levels[-1], config, dtype):
        fg[:, rows, cols] = tile[:, :3].permute(0, 2, 3, 1)
        bg[:, rows, cols] = tile[:, 3:].permute(0, 2, 3, 1)
    return ForegroundEstimate(fg, bg)


FOREGROUND_METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], ForegroundEstimate]] = {
    "blur_fusion": estimate_foreground_blur_fusion,
    "multilevel": estimate_foreground_ml,
}


def estimate_foreground(image: torch.Tensor, alpha: torch.Tensor, method: str = "multilevel") -> ForegroundEstimate:
    """Foreground (and background) colours by `method` ("multilevel" or "blur_fusion"), defaults."""
    if method not in FOREGROUND_METHODS:
        raise ValueError(f"estimate_foreground: method must be one of {sorted(FOREGROUND_METHODS)}, got {method!r}")
    return FOREGROUND_METHODS[method](image, alpha)
