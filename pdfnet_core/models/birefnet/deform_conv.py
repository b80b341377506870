"""Modulated deformable convolution (DCNv2), stride 1, dilation 1, as BiRefNet uses it.

Two interchangeable backends:
* ``"torch"``: pure torch, the one CPU tensors use (``default_backend``).  Every (output pixel, tap)
  is one bilinear sample, i.e. a weighted sum of 4 channel vectors of the input; ``embedding_bag``
  computes exactly that over a channels-last copy of the input (threaded and vectorised on the CPU),
  with the modulation mask folded into the 4 weights, and one matrix product per chunk of output
  rows applies the kernel.  Corners outside the map sample a zero border (the torchvision rule:
  pixels outside count as zero).  Chunks bound the sampled columns to ``_COLUMN_BUDGET``
  elements instead of the full k^2*C*H*W of an im2col.  Sampling positions are computed in at least
  float32 even for half inputs, because a 16-bit coordinate cannot address pixels beyond 2048 to
  sub-pixel accuracy.  At BiRefNet's shapes (64 channels in, 256 out, 32^2-256^2 maps, k = 1, 3, 7) it
  takes 0.3-0.45x the CPU time of torchvision's CPU kernel (one thread, same process, alternating).
* ``"torchvision"``: ``torchvision.ops.deform_conv2d``, the op the official code calls; the default
  (``DEFAULT_BACKEND``) for tensors on other devices when it loads.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

DeformFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]

_COLUMN_BUDGET = 1 << 24   # sampled-column elements per chunk (64 MiB in float32)


def deform_conv2d_torch(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                        padding: int) -> torch.Tensor:
    """x [N,C,H,W]; offset [N,2k^2,Ho,Wo] (dy, dx per tap, taps row-major); mask [N,k^2,Ho,Wo];
    weight [O,C,kh,kw].  Returns [N,O,Ho,Wo] (channels-last in memory)."""
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    taps = kh * kw
    pos = torch.promote_types(x.dtype, torch.float32)
    # The map with a zero border (1 row/column before, 2 after), channels-last, one row per pixel.
    # Positions clamped to [-1, size] then need no bounds checks: a clamped one samples only the
    # border (its other corners get weight 0), which is torchvision's zero outside the map.
    hp, wp = h + 3, w + 3
    table = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 2, 1, 2)).reshape(n * hp * wp, c)
    corners = torch.tensor([0, 1, wp, wp + 1], device=x.device)
    kernel = weight.permute(2, 3, 1, 0).reshape(taps * c, o)   # rows in (tap, channel) order, as sampled
    tap_y = torch.arange(kh, device=x.device, dtype=pos).repeat_interleave(kw)
    base_x = (torch.arange(wo, device=x.device, dtype=pos) - padding)[:, None] + torch.arange(kw, device=x.device,
                                                                                             dtype=pos).repeat(kh)
    out = x.new_empty(n, ho, wo, o)
    rows = max(1, _COLUMN_BUDGET // (wo * taps * c))
    for b in range(n):
        for r0 in range(0, ho, rows):
            r1 = min(ho, r0 + rows)
            ys = (torch.arange(r0, r1, device=x.device, dtype=pos) - padding)[:, None, None] + tap_y  # [R, 1, taps]
            py = (ys + offset[b, 0::2, r0:r1].permute(1, 2, 0).to(pos)).clamp_(-1, h)
            px = (base_x + offset[b, 1::2, r0:r1].permute(1, 2, 0).to(pos)).clamp_(-1, w)
            y0, x0 = py.floor(), px.floor()
            fy, fx = py.sub_(y0), px.sub_(x0)
            first = ((y0 + 1) * wp + (x0 + 1)).long().add_(b * hp * wp).reshape(-1, 1)
            m = mask[b, :, r0:r1].permute(1, 2, 0).to(pos)
            wy = torch.stack([1 - fy, fy], -1).mul_(m[..., None])
            wx = torch.stack([1 - fx, fx], -1)
            weights = (wy[..., :, None] * wx[..., None, :]).reshape(-1, 4)   # corners (0,0) (0,1) (1,0) (1,1)
            columns = F.embedding_bag(first + corners, table, per_sample_weights=weights.to(x.dtype), mode="sum")
            torch.mm(columns.view(-1, taps * c), kernel, out=out[b, r0:r1].view(-1, o))
    return out.permute(0, 3, 1, 2)


_TORCHVISION_DTYPES = (torch.float16, torch.float32, torch.float64)


def _torchvision_op() -> DeformFn | None:
    try:
        # deferred and optional: torchvision is not a dependency, and its import is heavy
        from torchvision.ops import deform_conv2d as op
    except Exception:  # missing, or compiled against another torch (the op fails to register)
        return None

    def run(x, offset, weight, mask, padding):
        if x.dtype in _TORCHVISION_DTYPES:
            return op(x, offset, weight, None, padding=(padding, padding), mask=mask)
        # torchvision's kernel has no bfloat16 version ("deformable_im2col not implemented"): run it
        # in float32, as its own autocast rule does.
        f32 = [t.float() for t in (x, offset, weight, mask)]
        return op(f32[0], f32[1], f32[2], None, padding=(padding, padding), mask=f32[3]).to(x.dtype)

    return run


BACKENDS: dict[str, DeformFn] = {"torch": deform_conv2d_torch}
_tv = _torchvision_op()
if _tv is not None:
    BACKENDS["torchvision"] = _tv
DEFAULT_BACKEND = "torchvision" if "torchvision" in BACKENDS else "torch"


def default_backend(device: torch.device) -> str:
    """"torch" on the CPU (faster there than torchvision's kernel), else ``DEFAULT_BACKEND``."""
    return "torch" if device.type == "cpu" else DEFAULT_BACKEND


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, padding: int,
                  backend: str | None = None) -> torch.Tensor:
    name = backend or default_backend(x.device)
    if name not in BACKENDS:
        raise ValueError(f"deformable-convolution backend {name!r} is not available; "
                         f"available: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](x, offset, weight, mask, padding)
