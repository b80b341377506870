"""PDFNet's training losses, as the official code computes them (models/utils.py, PDFNet_process).

Every function takes [B,1,H,W] maps and returns a 0-d tensor.  The structure loss takes LOGITS;
the SSIM, integrity-prior and SiLog losses take PROBABILITIES (the caller applies the sigmoid).
Half-precision inputs are computed in float32: the SSIM variance terms cancel badly and the
official loop's fp16 convolutions here were a source of noise, not of signal.

Two statistics of the official code are pooled over the whole batch where a per-item statistic is
the natural choice: the object-depth mean of the integrity prior and the scale-invariant terms of
SiLog.  They are reproduced by default (``per_item=False``), because the published numbers come
from that code; ``per_item=True`` makes each item's loss independent of its batch mates (the two
agree at batch size 1, the official setting).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

# structure loss: boundary weight from a 31x31 local mean (padded zeros counted, as PyTorch's default)
_BOUNDARY_POOL = 31
_BOUNDARY_GAIN = 5.0
_IOU_EPS = 1e-6
# SSIM: 11-tap Gaussian window, sigma 1.5, "same" zero padding
_SSIM_TAPS = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = 0.01 ** 2
_SSIM_C2 = 0.03 ** 2
_LOG_EPS = 1e-8          # integrity prior: -log(p + eps)
_MASK_EPS = 1e-8         # integrity prior: object-depth mean denominator
_SILOG_EPS = 1e-6
_SILOG_LAMBDA = 0.5
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))

# total: final output weight 1, side outputs 0.5; L_seg + L_int / 2 + L_depth / 10
_SIDE_WEIGHT = 0.5
_SSIM_WEIGHT = 0.5
_INTEGRITY_WEIGHT = 0.5
_DEPTH_WEIGHT = 0.1


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_maps(name: str, *tensors: torch.Tensor) -> None:
    shape = tensors[0].shape
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1] != 1:
            raise ValueError(f"{name}: expected [B,1,H,W] tensors, got "
                             f"{list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.shape != shape:
            raise ValueError(f"{name}: the maps differ in shape ({list(shape)} vs {list(t.shape)}); "
                             "resize the prediction to the target first (total_loss does)")


# --------------------------------------------------------------------------------------------
# the four terms


def structure_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Boundary-weighted BCE + weighted IoU, per item, then the batch mean."""
    _check_maps("structure_loss", logits, mask)
    dtype = _compute_dtype(logits, mask)
    x, m = logits.to(dtype), mask.to(dtype)
    local_mean = F.avg_pool2d(m, _BOUNDARY_POOL, stride=1, padding=_BOUNDARY_POOL // 2)
    weight = 1 + _BOUNDARY_GAIN * (local_mean - m).abs()
    bce = F.binary_cross_entropy_with_logits(x, m, reduction="none")
    wbce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
    q = x.sigmoid()
    inter = (q * m * weight).sum(dim=(2, 3))
    union = ((q + m) * weight).sum(dim=(2, 3))
    wiou = 1 - (inter + _IOU_EPS) / (union - inter + _IOU_EPS)
    return (wbce + wiou).mean()


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    k = torch.arange(_SSIM_TAPS, dtype=torch.float64) - _SSIM_TAPS // 2
    g = torch.exp(-k ** 2 / (2 * _SSIM_SIGMA ** 2))
    g = g / g.sum()
    return torch.outer(g, g).to(dtype=dtype, device=device)[None, None]


def ssim_loss(prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1 - mean SSIM) / 2 with an 11x11 Gaussian window and zero 'same' padding."""
    _check_maps("ssim_loss", prob, mask)
    dtype = _compute_dtype(prob, mask)
    q, m = prob.to(dtype), mask.to(dtype)
    window = _gaussian_window(dtype, q.device)
    pad = _SSIM_TAPS // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, padding=pad)

    mu_q, mu_m = blur(q), blur(m)
    s_qq = blur(q * q) - mu_q ** 2
    s_mm = blur(m * m) - mu_m ** 2
    s_qm = blur(q * m) - mu_q * mu_m
    ssim = ((2 * mu_q * mu_m + _SSIM_C1) * (2 * s_qm + _SSIM_C2)) / \
           ((mu_q ** 2 + mu_m ** 2 + _SSIM_C1) * (s_qq + s_mm + _SSIM_C2))
    return 1 - (1 + ssim.mean()) / 2


def _sobel_magnitude(d: torch.Tensor) -> torch.Tensor:
    """|sobel_x * d| + |sobel_y * d| with zero padding (so a non-zero border reads as an edge)."""
    kx = torch.tensor(_SOBEL_X, dtype=d.dtype, device=d.device)
    kernels = torch.stack([kx, kx.t()])[:, None]           # [2,1,3,3]
    return F.conv2d(d, kernels, padding=1).abs().sum(dim=1, keepdim=True)


def integrity_prior_loss(prob: torch.Tensor, depth: torch.Tensor, gt: torch.Tensor, *,
                         per_item: bool = False) -> torch.Tensor:
    """Depth-stability + depth-continuity terms of the integrity prior.

    ``depth`` and ``gt`` must be in [0, 1].  The object-depth mean is one scalar over the whole batch
    (official); ``per_item=True`` takes it per item instead.
    """
    _check_maps("integrity_prior_loss", prob, depth, gt)
    dtype = _compute_dtype(prob, depth, gt)
    q, d, m = prob.to(dtype), depth.to(dtype), gt.to(dtype)
    p = m * q + (1 - m) * (1 - q)          # probability given to the true class
    false_pos = (1 - p) * q
    false_neg = (1 - p) * m
    log_loss = -torch.log(p + _LOG_EPS)
    dims = (1, 2, 3) if per_item else (0, 1, 2, 3)
    mu = (d * m).sum(dim=dims, keepdim=True) / (m.sum(dim=dims, keepdim=True) + _MASK_EPS)
    spread = (d - mu) ** 2
    stability = (log_loss * (spread * false_pos + (1 - spread) * false_neg) * p).mean()
    continuity = (_sobel_magnitude(d) * log_loss).mean()
    return stability + continuity


def silog_loss(prob: torch.Tensor, target: torch.Tensor, *, per_item: bool = False) -> torch.Tensor:
    """Scale-invariant log loss (lambda 0.5) of a depth probability map against a 0..1 target.

    The means run over the whole batch (official); ``per_item=True`` averages per-item losses.
    """
    _check_maps("silog_loss", prob, target)
    dtype = _compute_dtype(prob, target)
    r = torch.log(target.to(dtype) + _SILOG_EPS) - torch.log(prob.to(dtype) + _SILOG_EPS)
    dims = (1, 2, 3) if per_item else (0, 1, 2, 3)
    value = torch.sqrt((r ** 2).mean(dim=dims) - _SILOG_LAMBDA * r.mean(dim=dims) ** 2 + _SILOG_EPS)
    return value.mean()


# --------------------------------------------------------------------------------------------
# the training total


@dataclass(frozen=True)
class LossTerms:
    """``total = seg + integrity / 2 + depth / 10``; ``target`` is the final output's seg term alone
    (what the official loop logs)."""

    total: torch.Tensor
    seg: torch.Tensor
    integrity: torch.Tensor
    depth: torch.Tensor
    target: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {name: float(getattr(self, name).detach()) for name in ("total", "seg", "integrity", "depth", "target")}


def _to_size(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # The loss resize is bilinear with align_corners=False (F.interpolate's default), unlike the
    # network's own align_corners=True resizes.
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def _weight(i: int) -> float:
    return 1.0 if i == 0 else _SIDE_WEIGHT


def loss_terms(logits6: Sequence[torch.Tensor], depth_logits5: Sequence[torch.Tensor], gt: torch.Tensor,
               depth_gt: torch.Tensor, *, per_item: bool = False) -> LossTerms:
    """All terms of the official training loss.

    ``logits6``: decoder logits, final output first, then side 1..5; ``depth_logits5``: depth-head
    logits, final first.  Maps of any size are resized to the targets' size (logits first, sigmoid
    after).  ``depth_gt`` must already be min-max normalised to [0, 1].
    """
    if not logits6 or not depth_logits5:
        raise ValueError("loss_terms needs at least one segmentation map and one depth map")
    _check_maps("total_loss targets", gt)
    _check_maps("total_loss targets", depth_gt)
    dtype = _compute_dtype(gt, depth_gt, *logits6, *depth_logits5)
    gt, depth_gt = gt.to(dtype), depth_gt.to(dtype)
    seg = integrity = depth = target = None
    for i, logits in enumerate(logits6):
        x = logits.to(dtype)
        x_seg = _to_size(x, gt)
        term = structure_loss(x_seg, gt) + _SSIM_WEIGHT * ssim_loss(x_seg.sigmoid(), gt)
        x_int = _to_size(x, depth_gt)
        prior = integrity_prior_loss(x_int.sigmoid(), depth_gt, gt, per_item=per_item)
        if i == 0:
            target = term
        seg = _weight(i) * term if seg is None else seg + _weight(i) * term
        integrity = _weight(i) * prior if integrity is None else integrity + _weight(i) * prior
    for j, logits in enumerate(depth_logits5):
        q = _to_size(logits.to(dtype), depth_gt).sigmoid()
        term = _weight(j) * silog_loss(q, depth_gt, per_item=per_item)
        depth = term if depth is None else depth + term
    total = seg + _INTEGRITY_WEIGHT * integrity + _DEPTH_WEIGHT * depth
    return LossTerms(total, seg, integrity, depth, target)


def total_loss(logits6: Sequence[torch.Tensor], depth_logits5: Sequence[torch.Tensor], gt: torch.Tensor,
               depth_gt: torch.Tensor, *, per_item: bool = False) -> torch.Tensor:
    """The official training loss over six decoder outputs and five depth outputs (see loss_terms)."""
    return loss_terms(logits6, depth_logits5, gt, depth_gt, per_item=per_item).total
