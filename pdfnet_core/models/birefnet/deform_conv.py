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
  (``DEFAULT_BACKEND``) for tensors on other devices.  It is imported on first use (about 2 s), not
  with this module.  Where it cannot be imported, or fails on a device (no kernel for it: "Could not
  run 'torchvision::deform_conv2d' with arguments from the 'CUDA' backend"; a build for another
  torch), calls that name no backend run the pure-torch path instead, with one warning: the forward
  never fails for want of torchvision.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

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
_FALLBACK_NOTE = "using the pure-torch deformable convolution instead (same results within float tolerance)"

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_UNPROBED: Any = object()
_torchvision: Any = _UNPROBED        # torchvision's op (wrapped), None where it cannot be imported
_import_problem = ""                 # why it cannot be imported
_failed: dict[str, str] = {}         # device type -> why torchvision's op failed on it (then never tried again)


def torchvision_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype torchvision's op computes (and allocates its columns) in for inputs of ``dtype``."""
    return dtype if dtype in _TORCHVISION_DTYPES else torch.float32


def _wrap(op: Callable[..., torch.Tensor]) -> DeformFn:
    def run(x, offset, weight, mask, padding):
        if torchvision_dtype(x.dtype) == x.dtype:
            return op(x, offset, weight, None, padding=(padding, padding), mask=mask)
        # torchvision's kernel has no bfloat16 version ("deformable_im2col not implemented"): run it
        # in float32, as its own autocast rule does.
        f32 = [t.float() for t in (x, offset, weight, mask)]
        return op(f32[0], f32[1], f32[2], None, padding=(padding, padding), mask=f32[3]).to(x.dtype)

    return run


def _torchvision_op() -> DeformFn | None:
    """torchvision's op, imported on first use (about 2 s) and remembered; None where it cannot be."""
    global _torchvision, _import_problem
    if _torchvision is _UNPROBED:
        try:
            # deferred and optional: torchvision is not a dependency, and its import is heavy
            from torchvision.ops import deform_conv2d as op
        except Exception as exc:  # missing, or compiled against another torch (the op fails to register)
            _import_problem = _one_line(exc)
            _torchvision = None
        else:
            _torchvision = _wrap(op)
    return _torchvision


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__


def available_backends() -> dict[str, DeformFn]:
    """The backends that can run here (probing torchvision on the first call)."""
    op = _torchvision_op()
    return {"torch": deform_conv2d_torch, **({"torchvision": op} if op is not None else {})}


def __getattr__(name: str) -> Any:
    # BACKENDS and DEFAULT_BACKEND are read lazily, so importing this module never imports torchvision.
    if name == "BACKENDS":
        return available_backends()
    if name == "DEFAULT_BACKEND":
        return "torchvision" if _torchvision_op() is not None else "torch"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_backend(device: torch.device) -> str:
    """The backend a call without ``backend`` uses on ``device``: "torch" on the CPU (faster there than
    torchvision's kernel); elsewhere ``DEFAULT_BACKEND`` where one was set on this module, else
    "torchvision"; "torch" where torchvision cannot be imported or its op has failed on this device type.
    """
    if device.type == "cpu":
        return "torch"
    choice = globals().get("DEFAULT_BACKEND") or "torchvision"   # set on the module: a user's (a test's) pin
    if choice == "torchvision" and (_torchvision_op() is None or device.type in _failed):
        return "torch"
    return choice


def fallback_reason(device: torch.device | str) -> str | None:
    """Why calls without ``backend`` on this device type run the pure-torch path instead of
    torchvision's op, or None where they have not fallen back (so far)."""
    return _failed.get(torch.device(device).type)


def _fall_back(device_type: str, reason: str) -> None:
    """Remember that torchvision's op does not run on ``device_type``; warn once for it."""
    with _lock:
        if device_type in _failed:
            return
        _failed[device_type] = reason
    _log.warning("BiRefNet: %s; %s.", reason, _FALLBACK_NOTE)


def _torchvision_or_torch(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                          padding: int) -> torch.Tensor:
    """torchvision's op where it runs; the pure-torch one (with one warning) where it does not."""
    kind = x.device.type
    op = _torchvision_op()
    if op is None:
        _fall_back(kind, f"torchvision's deform_conv2d cannot be imported ({_import_problem})")
    elif kind not in _failed:
        try:
            return op(x, offset, weight, mask, padding)
        except torch.cuda.OutOfMemoryError:
            raise   # a memory problem, not torchvision's: the caller's to handle
        except Exception as exc:   # no kernel for this device ("Could not run ... backend"), an ABI mismatch
            _fall_back(kind, f"torchvision's deform_conv2d failed on {kind} tensors ({_one_line(exc)})")
    return deform_conv2d_torch(x, offset, weight, mask, padding)


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, padding: int,
                  backend: str | None = None) -> torch.Tensor:
    """The deformable convolution on ``backend``, or the device's ``default_backend`` when None.

    Without ``backend`` this never fails for want of torchvision: where its op is missing or fails
    on the device, the pure-torch path runs (one warning per process and device type) and stays in
    use on that device type.  An explicit ``backend`` is that backend or an error (benchmarks and
    parity tests compare the two and must not measure one for the other).
    """
    if backend is None:
        name = default_backend(x.device)
        if name == "torchvision":
            return _torchvision_or_torch(x, offset, weight, mask, padding)
    else:
        name = backend
    backends = available_backends() if name != "torch" else {"torch": deform_conv2d_torch}
    if name not in backends:
        raise ValueError(f"deformable-convolution backend {name!r} is not available; "
                         f"available: {', '.join(sorted(available_backends()))}")
    return backends[name](x, offset, weight, mask, padding)
