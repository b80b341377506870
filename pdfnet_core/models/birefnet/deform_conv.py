"""Modulated deformable convolution (DCNv2), stride 1, dilation 1, as BiRefNet uses it.

Two interchangeable backends, chosen automatically (``DEFAULT_BACKEND``):
* ``"torchvision"``: ``torchvision.ops.deform_conv2d``, the op the official code calls;
* ``"torch"``: a pure-torch version for installs without a working torchvision.  It samples one
  kernel tap at a time (bilinear, pixels outside the map count as zero, exactly the torchvision
  rule) and applies that tap's [out, in] weight slice, so memory stays O(C*H*W) instead of the
  O(k^2*C*H*W) of an im2col.  Sampling positions are computed in at least float32 even for half
  inputs, because a 16-bit coordinate cannot address pixels beyond 2048 to sub-pixel accuracy.
"""
from __future__ import annotations

from typing import Callable

import torch

DeformFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def deform_conv2d_torch(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                        padding: int) -> torch.Tensor:
    """x [N,C,H,W]; offset [N,2k^2,Ho,Wo] (dy, dx per tap, taps row-major); mask [N,k^2,Ho,Wo];
    weight [O,C,kh,kw].  Returns [N,O,Ho,Wo]."""
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    flat = x.reshape(n, c, h * w)
    pos = torch.promote_types(x.dtype, torch.float32)
    base_y = (torch.arange(ho, device=x.device, dtype=pos) - padding)[:, None]
    base_x = (torch.arange(wo, device=x.device, dtype=pos) - padding)[None, :]
    out = x.new_zeros(n, o, ho * wo)
    for t in range(kh * kw):
        i, j = divmod(t, kw)
        py = base_y + i + offset[:, 2 * t].to(pos)
        px = base_x + j + offset[:, 2 * t + 1].to(pos)
        sampled = _bilinear_zero_outside(flat, py.reshape(n, -1), px.reshape(n, -1), h, w)
        sampled = sampled * mask[:, t].reshape(n, 1, -1).to(x.dtype)
        out += torch.matmul(weight[:, :, i, j], sampled)
    return out.view(n, o, ho, wo)


def _bilinear_zero_outside(flat: torch.Tensor, py: torch.Tensor, px: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """flat [N,C,H*W] sampled at float positions py, px [N,L] -> [N,C,L]."""
    n, c, _ = flat.shape
    y0, x0 = py.floor(), px.floor()
    fy, fx = py - y0, px - x0
    y0, x0 = y0.long(), x0.long()
    result = None
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            index = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1))[:, None, :].expand(n, c, -1)
            corner = (wy * wx * inside).to(flat.dtype)[:, None, :] * flat.gather(2, index)
            result = corner if result is None else result + corner
    return result


_TORCHVISION_DTYPES = (torch.float16, torch.float32, torch.float64)


def _torchvision_op() -> DeformFn | None:
    try:
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


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, padding: int,
                  backend: str | None = None) -> torch.Tensor:
    name = backend or DEFAULT_BACKEND
    if name not in BACKENDS:
        raise ValueError(f"deformable-convolution backend {name!r} is not available; "
                         f"available: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](x, offset, weight, mask, padding)
