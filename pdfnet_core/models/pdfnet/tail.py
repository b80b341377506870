"""PDFNet's full-resolution tail, streamed over horizontal bands.

The official decoder ends with (S = input side, C = 128):
    shallow = crs(conv4x4s4(resize(cat[image, depth], 4S)))          [B,C,S,S]
    f       = upsample1(resize(mix_L1, S/2) + resize(shallow, S/2))   [B,C,S/2,S/2]
    final   = Bside0(upsample2(resize(f, S) + shallow))               [B,1,S,S]
Done in one piece that is a 6 x 4S x 4S image (400 MB at 1024) and several full-resolution C-channel
maps (512 MB each).  Every step is local along the rows (bilinear taps, 3x3 convolutions), so the
same numbers can be produced band by band, keeping only sliding windows of rows of ``shallow`` and of
the two half-resolution maps.  Rows are dropped as soon as everything they feed is computed.

On the CPU, bands of 32 rows keep every full-resolution temporary under 32 MB at 1024 (fp32, 128
channels), the size up to which glibc's malloc reuses freed memory instead of mapping fresh pages for
each one: the page faults of larger bands cost a fifth of the tail's time.  On a GPU every band is
another round of kernel launches, so bands there are as large as ``device_band_rows`` allows
(usually the whole map: one band).  The bookkeeping of which rows exist is Python integers
(``host_taps``), never read back from the device.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..common.layers import DEVICE_CHUNK_BYTES, ConvRMSSiLU, host_taps, linear_taps, resize_rows


def conv_rows(conv: nn.Conv2d, x: torch.Tensor, pad_top: int, pad_bottom: int) -> torch.Tensor:
    """A 3x3 'same' conv on a band: halo rows come from ``x``, zero rows only at the image edge."""
    if pad_top or pad_bottom:
        x = F.pad(x, (0, 0, pad_top, pad_bottom))
    return F.conv2d(x, conv.weight, conv.bias, padding=(0, conv.padding[1]))


def crs_rows(block: ConvRMSSiLU, x: torch.Tensor, pad_top: int, pad_bottom: int) -> torch.Tensor:
    return block.norm_act(conv_rows(block[0], x, pad_top, pad_bottom))


class _Rows:
    """A window of consecutive rows [lo, hi) of a [B,C,H,W] map that is produced top to bottom."""

    def __init__(self):
        self.data: torch.Tensor | None = None
        self.lo = 0

    @property
    def hi(self) -> int:
        return self.lo + (0 if self.data is None else self.data.shape[-2])

    def append(self, rows: torch.Tensor) -> None:
        self.data = rows if self.data is None else torch.cat([self.data, rows], dim=-2)

    def rows(self, a: int, z: int) -> torch.Tensor:
        return self.data[..., a - self.lo:z - self.lo, :]

    def drop_before(self, row: int) -> None:
        if self.data is not None and row > self.lo:
            cut = min(row, self.hi) - self.lo
            self.data = self.data[..., cut:, :].clone() if cut < self.data.shape[-2] else None
            self.lo += cut


def _last_ready(taps_hi: np.ndarray, available: int, total_available: int) -> int:
    """Number of leading output rows whose highest source row is below ``available``."""
    if available >= total_available:
        return len(taps_hi)
    return int(np.searchsorted(taps_hi, available, side="left"))


def device_band_rows(batch: int, channels: int, width: int) -> int:
    """Rows per band off the CPU: a full-resolution band of ``channels`` float32 maps within
    DEVICE_CHUNK_BYTES (its largest temporary), so a usual batch is one band."""
    return max(1, DEVICE_CHUNK_BYTES // (batch * channels * width * 4))


def streamed_tail(shallow: nn.Sequential, upsample1: ConvRMSSiLU, upsample2: ConvRMSSiLU, head: nn.Conv2d,
                  x6: torch.Tensor, mix: torch.Tensor, band_rows: int) -> torch.Tensor:
    """final logits [B,1,S,S] from the raw 6-channel input x6 [B,6,S,S] and mix_L1 [B,C,S/4,S/4].

    x6 may be float32 beside a half-precision model: its 4x upsampling then runs in float32 (CPU
    bilinear kernels are slower in bf16) and each band is cast for the stride-4 convolution.
    """
    b, _, s, w = x6.shape
    conv4, crs = shallow[0], shallow[1]
    h2, w2 = mix.shape[-2] * 2, mix.shape[-1] * 2
    half_lo, half_hi = host_taps(s, h2)                 # shallow rows feeding half-res row k
    full_lo, full_hi = host_taps(h2, s)                 # f rows feeding full-res row j
    # the device taps of the four row resizes, computed once for all bands
    up_taps, mix_taps = linear_taps(s, 4 * s, x6.device), linear_taps(mix.shape[-2], h2, x6.device)
    half_taps, full_taps = linear_taps(s, h2, x6.device), linear_taps(h2, s, x6.device)

    sh = _Rows()                                       # window of shallow rows
    g = _Rows()                                        # window of resize(mix) + resize(shallow) rows
    f = _Rows()                                        # window of upsample1(g) rows
    out = x6.new_empty(b, 1, s, w, dtype=mix.dtype)
    out_done = 0
    step = max(1, band_rows)
    for a in range(0, s, step):
        z = min(s, a + step)
        # shallow rows [a, z): the 3x3 conv needs stride-4 rows a-1 .. z (zero outside the image)
        ca, cz = max(a - 1, 0), min(z + 1, s)
        up = resize_rows(x6, 4 * s, slice(4 * ca, 4 * cz), 4 * w, taps=up_taps)
        sh.append(crs_rows(crs, conv4(up.to(conv4.weight.dtype)), ca - (a - 1), (z + 1) - cz))
        del up

        # half-resolution fuse rows whose shallow taps are all computed
        g_end = _last_ready(half_hi, z, s)
        if g_end > g.hi:
            rows = slice(g.hi, g_end)
            g.append(resize_rows(mix, h2, rows, w2, taps=mix_taps)
                     .add_(resize_rows(sh.data, h2, rows, w2, n_in=s, offset=sh.lo, taps=half_taps)))
        # upsample1 rows whose 3x3 neighbourhood in g is complete
        f_end = h2 if g.hi == h2 else max(g.hi - 1, 0)
        if f_end > f.hi:
            f0 = f.hi
            ga, gz = max(f0 - 1, 0), min(f_end + 1, h2)
            f.append(crs_rows(upsample1, g.rows(ga, gz), ga - (f0 - 1), (f_end + 1) - gz))
            g.drop_before(f_end - 1)
        # final rows r need shallow rows up to r+2 and f rows feeding full-res rows up to r+2
        f_ready = _last_ready(full_hi, f.hi, h2)       # full-res rows whose f taps are computed
        out_end = min(s if z == s else z - 2, s if f_ready == s else f_ready - 2)
        if out_end > out_done:
            r0, r1 = out_done, out_end
            ua, uz = max(r0 - 1, 0), min(r1 + 1, s)     # upsample2 rows needed by the head
            xa, xz = max(ua - 1, 0), min(uz + 1, s)     # its input rows
            x = resize_rows(f.data, s, slice(xa, xz), w, n_in=h2, offset=f.lo, taps=full_taps).add_(sh.rows(xa, xz))
            u = crs_rows(upsample2, x, xa - (ua - 1), (uz + 1) - xz)
            out[..., r0:r1, :] = conv_rows(head, u, ua - (r0 - 1), (r1 + 1) - uz)
            out_done = out_end
            f.drop_before(int(full_lo[max(out_done - 2, 0)]))
        # shallow rows still needed: by the next half-res rows and by the next final rows
        keep_from = min(int(half_lo[g.hi]) if g.hi < h2 else s, max(out_done - 2, 0))
        sh.drop_before(keep_from)
    assert out_done == s and g.hi == h2 and f.hi == h2
    return out
