"""Small building blocks shared by the models: norms, gated MLP, resizing with exact taps."""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...ops.images import resize_bilinear

# Work that can be split is split on the CPU so that its temporaries stay under glibc's 32 MiB limit
# for reusing freed memory (docs/ARCHITECTURE.md).  A GPU's caching allocator reuses blocks of any
# size and every chunk there is another round of kernel launches, so on other devices a chunk's
# largest temporary may take up to this many bytes: a usual batch runs in one piece, a huge one
# still in bounded pieces.
DEVICE_CHUNK_BYTES = 1 << 30


class RMSNorm(nn.Module):
    """RMS normalisation over channels; computed in float32 and cast back (as the official code).

    ``channels_first`` normalises dim 1 of [N, C, H, W]; otherwise the last dim.
    """

    def __init__(self, dim: int, eps: float = 1e-6, channels_first: bool = True):
        super().__init__()
        self.eps = eps
        self.channels_first = channels_first
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = 1 if self.channels_first else -1
        xf = x.float()
        normed = (xf * torch.rsqrt(xf.pow(2).mean(dim=dim, keepdim=True) + self.eps)).type_as(x)
        weight = self.weight[:, None, None] if self.channels_first else self.weight
        return weight * normed


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ConvRMSSiLU(nn.Sequential):
    """3x3 conv -> RMSNorm -> SiLU, named ``.0.*`` / ``.1.weight`` like the official ``make_crs``.

    At inference the norm and activation run in place on the conv's fresh output (same arithmetic,
    one full-size temporary instead of four).
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1), RMSNorm(out_dim), nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_act(self[0](x))

    def forward_resized_cat(self, parts: list[torch.Tensor], size, weights: list[torch.Tensor] = ()) -> torch.Tensor:
        """``forward(cat([resize(p, size) for p in parts], 1) * w0 * w1 ...)`` without the concatenation.

        ``weights`` are maps broadcast over the channels ([B,1,H,W]), multiplied in the given order.
        At inference a convolution of a channel concatenation is the sum of one convolution per
        part (the weight split along its input channels), so only one resized, weighted part
        exists at a time and the parts themselves are never modified.
        """
        conv = self[0]
        if torch.is_grad_enabled() or conv.groups != 1:
            x = torch.cat([resize(p, size) for p in parts], dim=1)
            for w in weights:
                x = x * w
            return self(x)
        y, first = None, 0
        for part in parts:
            weight = conv.weight[:, first:first + part.shape[1]]
            first += part.shape[1]
            resized = tuple(part.shape[-2:]) != tuple(size)
            x = resize(part, size) if resized else part
            for k, w in enumerate(weights):
                x = x.mul_(w) if resized or k else x * w
            term = F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation)
            del x
            y = term if y is None else y.add_(term)
        if conv.bias is not None:
            y.add_(conv.bias[:, None, None])
        return self.norm_act(y)

    def norm_act(self, y: torch.Tensor) -> torch.Tensor:
        """Norm + SiLU of a conv output that nobody else holds."""
        norm = self[1]
        if torch.is_grad_enabled():
            return self[2](norm(y))
        # the mean square accumulated in float32 (as RMSNorm does) in one pass, without a float32
        # copy of y or a full-size temporary of its squares
        ms = torch.linalg.vector_norm(y, dim=1, keepdim=True, dtype=torch.float32).square_().div_(y.shape[1])
        scale = ms.add_(norm.eps).rsqrt_().to(y.dtype)
        y.mul_(scale).mul_(norm.weight[:, None, None])
        return F.silu(y, inplace=True)


def conv_rms_silu(in_dim: int, out_dim: int) -> ConvRMSSiLU:
    return ConvRMSSiLU(in_dim, out_dim)


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize with align_corners=True, the only resize mode of the PDFNet graph."""
    return resize_bilinear(x, size, align_corners=True)


def resize_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return resize(x, like.shape[-2:])


def _taps_ratio(n_in: int, n_out: int) -> float:
    """PyTorch's float32 scale (n_in - 1) / (n_out - 1) of an align_corners=True resize, as a Python float."""
    return float(np.float32(n_in - 1) / np.float32(n_out - 1)) if n_out > 1 else 0.0


def linear_taps(n_in: int, n_out: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of a 1-D align_corners=True linear resize.

    Reproduces PyTorch's own index arithmetic (float32 ratio, floor, clamp), so resizing a band of
    rows with these taps gives the rows a full-image ``resize`` would give.  Computed on ``device``
    from the sizes alone (nothing is copied from the host, nothing read back).
    Returns (i0, i1, w1): out = x[i0] * (1 - w1) + x[i1] * w1.
    """
    dst = torch.arange(n_out, dtype=torch.float32, device=device)
    if n_out == n_in:
        idx = dst.long()
        return idx, idx, torch.zeros_like(dst)
    src = dst * _taps_ratio(n_in, n_out)   # a float32 tensor times a float32-exact scalar: float32 products
    i0 = src.floor().long().clamp_(max=n_in - 1)
    w1 = (src - i0).clamp_(0, 1)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, w1


@functools.lru_cache(maxsize=64)
def host_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(i0, i1) of ``linear_taps`` as read-only int64 numpy arrays, for bookkeeping in Python ints.

    The same float32 arithmetic in numpy, so a caller can decide which rows exist without reading
    device memory.  Both are non-decreasing.
    """
    if n_out == n_in:
        idx = np.arange(n_out, dtype=np.int64)
        i0 = i1 = idx
    else:
        src = np.arange(n_out, dtype=np.float32) * np.float32(_taps_ratio(n_in, n_out))
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    for a in (i0, i1):
        a.flags.writeable = False
    return i0, i1


def resize_rows(x: torch.Tensor, n_out: int, rows: slice, width: int, n_in: int | None = None,
                offset: int = 0, taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Rows ``rows`` of ``resize(source, (n_out, width))``, computed from the source rows they need.

    ``x`` holds source rows ``[offset, offset + x.shape[-2])`` of a source with ``n_in`` rows
    (default: ``x`` is the whole source).  ``taps``: ``linear_taps(n_in, n_out, x.device)`` when the
    caller already has them (a caller resizing band after band computes them once).
    """
    n_in = x.shape[-2] if n_in is None else n_in
    h0, h1 = host_taps(n_in, n_out)
    lo, hi = int(h0[rows].min()) - offset, int(h1[rows].max()) - offset
    if lo < 0 or hi >= x.shape[-2]:
        raise IndexError("resize_rows: the source rows needed are not all present")
    i0, i1, w1 = taps if taps is not None else linear_taps(n_in, n_out, x.device)
    first = offset + lo   # source row of src's first row
    i0, i1, w1 = i0[rows] - first, i1[rows] - first, w1[rows].to(x.dtype)
    src = x[..., lo:hi + 1, :]
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        # channels-last in, channels-last out: pick rows of the NHWC view, so that neither this
        # nor the caller's next elementwise step and convolution converts the layout
        nhwc = src.permute(0, 2, 3, 1)
        band = torch.lerp(nhwc.index_select(1, i0), nhwc.index_select(1, i1), w1[:, None, None])
        band = band.permute(0, 3, 1, 2)
    else:
        band = torch.lerp(src.index_select(-2, i0), src.index_select(-2, i1), w1[:, None])
    return resize(band, (band.shape[-2], width))
