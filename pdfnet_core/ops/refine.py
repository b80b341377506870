"""Mask refinement: pure, batched torch functions on soft masks [B,H,W] in 0..1.

Every function keeps the caller's device and dtype, never round-trips through 8-bit or PIL, and
treats each image of a batch independently (except `temporal_smooth`, whose job is to mix frames).

Conventions shared by the filters here (and by `pdfnet_core.ops.foreground`, which reuses `box_blur`):
* Borders are reflect-101 (torch ``"reflect"``, OpenCV ``BORDER_REFLECT_101``, scipy ``"mirror"``),
  implemented with an index map so a filter may be wider than the image.
* Morphology ignores the outside of the image: growing never starts at the border and shrinking never
  eats in from it, so a subject cut by the frame keeps its edge at the frame.
* Half-precision inputs are computed in float32 and cast back, because 0..1 sums over large windows do
  not fit float16's precision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from .checks import batch_pair, check_image, check_mask, check_same_size

__all__ = [
    "threshold_mask", "grow_mask", "shrink_mask", "label_components",
    "fill_holes", "remove_islands", "keep_largest_component", "keep_central_component", "KEEP_COMPONENT", "box_blur", "gaussian_blur", "feather_mask", "guided_filter",
    "temporal_smooth", "RefineConfig", "refine_mask", "GUIDES", "TEMPORAL_METHODS",
]

def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# threshold and morphology


def threshold_mask(mask: torch.Tensor, low: float = 0.5, high: float | None = None) -> torch.Tensor:
    """Binary (`high` None: 1 where mask >= low) or a linear ramp from 0 at `low` to 1 at `high`."""
    mask = check_mask(mask)
    if high is None:
        return (mask >= low).to(mask.dtype)
    if not low < high:
        raise ValueError(f"threshold_mask: low ({low}) must be below high ({high}) for a soft ramp")
    return ((mask - low) / (high - low)).clamp(0, 1)


def grow_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grayscale dilation (pixels > 0) or erosion (pixels < 0) by a disk of radius |pixels|.

    The disk holds the offsets (dx, dy) with dx² + dy² <= pixels², so one lit pixel grows into exactly
    that disk and a square shrinks by exactly `pixels` on each side. A flat structuring element on a
    soft mask keeps it soft (a max or min of existing values, nothing invented).
    """
    mask = check_mask(mask)
    if int(pixels) != pixels:
        raise ValueError(f"grow_mask: pixels must be a whole number, got {pixels}")
    r = abs(int(pixels))
    if r == 0:
        return mask.clone()
    if pixels > 0:
        return _disk_morph(mask, r, torch.maximum, float("-inf"))
    return _disk_morph(mask, r, torch.minimum, float("inf"))


def shrink_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grayscale erosion by a disk of radius `pixels` (see `grow_mask`)."""
    return grow_mask(mask, -int(pixels))


def _disk_morph(x: torch.Tensor, r: int, op: Callable, neutral: float) -> torch.Tensor:
    # A disk is a stack of horizontal segments whose half-width shrinks away from the centre row, so
    # one running horizontal extremum, widened as |dy| decreases, serves every row: O(r) full-image
    # ops instead of the O(r²) of a 2-D pooling kernel, and no stack of per-width images in memory.
    _, h, w = x.shape
    xp = F.pad(x, (r, r, r, r), value=neutral)  # the neutral value makes the outside never win
    row = xp[:, :, r:r + w]
    k = 0
    out = None
    for dy in range(r, -1, -1):
        half = math.isqrt(r * r - dy * dy)
        while k < half:
            k += 1
            row = op(row, op(xp[:, :, r - k:r - k + w], xp[:, :, r + k:r + k + w]))
        pair = op(row[:, r - dy:r - dy + h], row[:, r + dy:r + dy + h])
        out = pair if out is None else op(out, pair)
    return out


# --------------------------------------------------------------------------------------------
# connected components, holes and islands


class _Runs(NamedTuple):
    """Horizontal runs of True pixels in raster order, and the component each belongs to."""

    starts: torch.Tensor   # [R] flat index (over the batch) of each run's first pixel
    lengths: torch.Tensor  # [R] pixels in each run
    root: torch.Tensor     # [R] index of the component's first run (the smallest run index in it)


def _find_runs(binary: torch.Tensor, connectivity: int) -> _Runs:
    # Why runs: pixels of one run are connected already, so the graph has one node per run and only
    # edges between adjacent rows; of the edges linking the same two runs in neighbouring columns only
    # the leftmost is kept. The graph shrinks from O(area) pixels to O(perimeter) runs, and no
    # per-pixel int64 tensor is ever built (run indices of edge ends come from a binary search).
    if binary.ndim != 3 or binary.dtype != torch.bool:
        raise ValueError(f"expected a [B,H,W] bool tensor, got {binary.dtype} {list(binary.shape)}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    b, h, w = binary.shape
    start = binary.clone()
    start[:, :, 1:] &= ~binary[:, :, :-1]
    end = binary.clone()
    end[:, :, :-1] &= ~binary[:, :, 1:]
    starts = start.reshape(-1).nonzero().squeeze(1)
    lengths = end.reshape(-1).nonzero().squeeze(1) - starts + 1

    ends = []
    for dx in ([0] if connectivity == 4 else [-1, 0, 1]):
        xa = max(0, -dx)
        both = binary[:, :-1, xa:w - max(0, dx)] & binary[:, 1:, max(0, dx):w - max(0, -dx)]
        keep = both.clone()
        keep[:, :, 1:] &= ~both[:, :, :-1]
        bi, yi, xi = keep.nonzero().unbind(1)
        upper = (bi * h + yi) * w + xi + xa
        ends.append(torch.stack([upper, upper + w + dx]))
    pixels = torch.cat(ends, 1) if ends else torch.zeros(2, 0, dtype=torch.int64, device=binary.device)
    pairs = torch.searchsorted(starts, pixels, right=True) - 1  # run holding each edge end

    # Vectorised Shiloach-Vishkin: every root is re-pointed to the smallest root it touches
    # (scatter_reduce "amin"), then pointer jumping flattens the forest. parent[i] <= i always, and
    # only roots are re-pointed, so no link is lost; edges that lose the amin race stay for the next
    # round, and edges inside one component are dropped as soon as they close.
    parent = torch.arange(starts.numel(), device=binary.device)
    while pairs.shape[1]:
        roots = parent[pairs]
        open_ = roots[0] != roots[1]
        if not bool(open_.any()):
            break
        pairs, roots = pairs[:, open_], roots[:, open_]
        parent.scatter_reduce_(0, roots.max(0).values, roots.min(0).values, reduce="amin")
        parent = _compress(parent)
    return _Runs(starts, lengths, parent)


def _compress(parent: torch.Tensor) -> torch.Tensor:
    while True:
        nxt = parent[parent]
        if torch.equal(nxt, parent):
            return parent
        parent = nxt


def _expand_runs(values: torch.Tensor, runs: _Runs, binary: torch.Tensor, fill) -> torch.Tensor:
    """Per-run values painted onto the run's pixels; `fill` elsewhere."""
    out = torch.full(binary.shape, fill, dtype=values.dtype, device=values.device)
    out[binary] = values.repeat_interleave(runs.lengths)  # True pixels are in raster order, as runs
    return out


def label_components(binary: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """Label the True pixels of a [B,H,W] bool tensor; returns int64 labels, -1 on False pixels.

    A label is the flat index (over the whole batch) of the component's first pixel in raster order,
    so labels are unique across the batch and never shared between images.

    Why this algorithm: it runs on the tensor's own device with whole-image and scatter ops, no
    per-pixel Python. Horizontal runs are the nodes, edges join runs of adjacent rows, and runs are
    merged by min-label hooking with pointer jumping, the vectorised Shiloach-Vishkin scheme of GPU
    labelling. Rounds are few (they grow with the nesting of U-turns, not with image size).
    Iterative max-pool propagation would need as many passes as the longest path inside a
    component; a numpy union-find needs a Python loop per pixel; scipy.ndimage.label is several
    times faster on CPU but is not a dependency of this package and would leave the device.
    """
    runs = _find_runs(binary, connectivity)
    return _expand_runs(runs.starts[runs.root], runs, binary, -1)


def _component_area(runs: _Runs) -> torch.Tensor:
    """Per run: the pixel count of its component."""
    area = torch.zeros_like(runs.lengths).scatter_add_(0, runs.root, runs.lengths)
    return area[runs.root]


def _component_touches_border(runs: _Runs, shape: torch.Size) -> torch.Tensor:
    """Per run: whether its component reaches the image border."""
    _, h, w = shape
    y = (runs.starts // w) % h
    x0 = runs.starts % w
    edge = (y == 0) | (y == h - 1) | (x0 == 0) | (x0 + runs.lengths == w)
    touches = torch.zeros_like(edge).scatter_(0, runs.root[edge], True)
    return touches[runs.root]


def fill_holes(mask: torch.Tensor, max_area: int | None = None, threshold: float = 0.5,
               connectivity: int = 4) -> torch.Tensor:
    """Set to 1 every hole of at most `max_area` pixels (None: every hole, whatever its size).

    A hole is a component of background (mask < threshold) that does not touch the image border.
    Background is 4-connected by default, the digital-topology dual of 8-connected foreground, so a
    diagonal gap in an outline does not leak the inside out.
    """
    mask = check_mask(mask)
    if max_area is not None and max_area < 0:
        raise ValueError(f"fill_holes: max_area must be >= 0 or None, got {max_area}")
    background = mask < threshold
    runs = _find_runs(background, connectivity)
    fill = ~_component_touches_border(runs, mask.shape)
    if max_area is not None:
        fill &= _component_area(runs) <= max_area
    return torch.where(_expand_runs(fill, runs, background, False), torch.ones_like(mask), mask)


def remove_islands(mask: torch.Tensor, min_area: int, threshold: float = 0.5,
                   connectivity: int = 8) -> torch.Tensor:
    """Set to 0 every foreground component (mask >= threshold) smaller than `min_area` pixels.

    Only the pixels at or above `threshold` are cleared; an island's faint fringe below it is left,
    because a soft fringe cannot be attributed to one component without guessing.
    """
    mask = check_mask(mask)
    if min_area < 0:
        raise ValueError(f"remove_islands: min_area must be >= 0, got {min_area}")
    foreground = mask >= threshold
    runs = _find_runs(foreground, connectivity)
    drop = _component_area(runs) < min_area
    return torch.where(_expand_runs(drop, runs, foreground, False), torch.zeros_like(mask), mask)


def _keep_one(mask: torch.Tensor, threshold: float, score: Callable[[_Runs, torch.Size], torch.Tensor]) -> torch.Tensor:
    """Per image, the foreground component with the lowest ``score`` (per run, equal over a component;
    ties go to the first in raster order); the other components' pixels at or above ``threshold`` become 0."""
    mask = check_mask(mask)
    foreground = mask >= threshold
    runs = _find_runs(foreground, 8)
    if runs.starts.numel() == 0:
        return mask.clone()
    _, h, w = mask.shape
    image = runs.starts // (h * w)
    value = score(runs, mask.shape).to(torch.float64)
    best = torch.full((mask.shape[0],), math.inf, dtype=torch.float64, device=mask.device)
    best = best.scatter_reduce(0, image, value, reduce="amin")
    candidate = torch.where(value == best[image], runs.root, runs.root.numel())
    first = torch.full((mask.shape[0],), runs.root.numel(), dtype=runs.root.dtype, device=mask.device)
    first = first.scatter_reduce(0, image, candidate, reduce="amin")
    drop = runs.root != first[image]
    return torch.where(_expand_runs(drop, runs, foreground, False), torch.zeros_like(mask), mask)


def _minus_area(runs: _Runs, shape: torch.Size) -> torch.Tensor:
    return -_component_area(runs)


def _distance_to_centre(runs: _Runs, shape: torch.Size) -> torch.Tensor:
    # The component's nearest pixel to the image centre, so a subject that covers the centre wins
    # whatever its shape (a centroid would favour a ring around the centre over the person inside it).
    _, h, w = shape
    y = ((runs.starts // w) % h).to(torch.float64)
    x0 = (runs.starts % w).to(torch.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    nearest_x = torch.clamp(torch.full_like(x0, cx), x0, x0 + runs.lengths - 1)
    d2 = (y - cy) ** 2 + (nearest_x - cx) ** 2
    per_component = torch.full_like(d2, math.inf).scatter_reduce(0, runs.root, d2, reduce="amin")
    return per_component[runs.root]


def keep_largest_component(mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Keep only the largest foreground component (8-connected, mask >= ``threshold``) of each image.

    As in ``remove_islands``, the dropped components' faint pixels below ``threshold`` are left.
    """
    return _keep_one(mask, threshold, _minus_area)


def keep_central_component(mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Keep only the foreground component nearest the image centre (its nearest pixel) of each image."""
    return _keep_one(mask, threshold, _distance_to_centre)


# Which single component ``RefineConfig.keep_component`` keeps.
KEEP_COMPONENT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "largest": keep_largest_component,
    "central": keep_central_component,
}


# --------------------------------------------------------------------------------------------
# linear filters


def _reflect_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def _pad_reflect(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    return x.index_select(dim, _reflect_index(x.shape[dim], before, after, x.device))


def _accumulate_dtype(x: torch.Tensor) -> torch.dtype:
    # Running sums over thousands of values need float64 (see _box_last); MPS has none.
    return torch.float32 if x.device.type == "mps" else torch.float64


def _box_last(x: torch.Tensor, size: int) -> torch.Tensor:
    """Window means along the last dim of [N,H,W] by running sums: O(1) per pixel for any size.

    The running sum is float64 because float32 loses ~1e-4 per window over thousands of pixels,
    enough to break blur-fusion's division by a small blurred alpha (MPS has no float64 and keeps
    float32). Along the last dim because torch's cumsum is several times faster there.
    """
    n = x.shape[-1]
    before, after = size // 2 + 1, size - 1 - size // 2  # one extra leading slot, zeroed below
    if before < n and after < n:
        padded = F.pad(x, (before, after), mode="reflect")  # reflect-101, fast path
    else:
        padded = _pad_reflect(x, x.ndim - 1, before, after)
    padded[..., 0] = 0
    c = torch.cumsum(padded, dim=-1, dtype=_accumulate_dtype(x))
    return (c[..., size:] - c[..., :n]).div_(size).to(x.dtype)


def box_blur(x: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over a size x size window on the last two dims (any leading dims), O(1) per pixel.

    The window of pixel i spans i - size//2 .. i - size//2 + size - 1, as OpenCV's `cv2.blur` and
    scipy's `uniform_filter` place even windows, with reflect-101 borders like both. Half
    precision is computed in float32.
    """
    if size < 1:
        raise ValueError(f"box_blur: size must be >= 1, got {size}")
    if size == 1:
        return x.clone()
    h, w = x.shape[-2:]
    flat = x.reshape(-1, h, w).to(_compute_dtype(x))
    out = torch.empty_like(flat)
    # In slices of ~1M pixels: the float64 temporaries stay small and cache-resident (a 13-channel
    # stack at once ran 2x slower per channel). Slices are independent, so the result does not
    # depend on the slicing (nor on what else is in the batch).
    step = max(1, (1 << 20) // (h * w))
    for i in range(0, flat.shape[0], step):
        rows = _box_last(flat[i:i + step], size)
        out[i:i + step] = _box_last(rows.transpose(1, 2), size).transpose(1, 2)
    return out.reshape(x.shape).to(x.dtype)


def _gaussian_taps(sigma: float, truncate: float) -> list[float]:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage's rule, so results are comparable
    k = [math.exp(-0.5 * (t / sigma) ** 2) for t in range(-radius, radius + 1)]
    total = math.fsum(k)
    return [v / total for v in k]


def _correlate_1d(x: torch.Tensor, dim: int, taps: list[float]) -> torch.Tensor:
    r = (len(taps) - 1) // 2
    n = x.shape[dim]
    padded = _pad_reflect(x, dim, r, r)
    out = padded.narrow(dim, 0, n) * taps[0]
    for j in range(1, len(taps)):
        out.add_(padded.narrow(dim, j, n), alpha=taps[j])
    return out


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of the last two dims with reflect-101 borders (scipy mode="mirror")."""
    if sigma < 0:
        raise ValueError(f"gaussian_blur: sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return x.clone()
    taps = _gaussian_taps(sigma, truncate)
    work = x.to(_compute_dtype(x))
    # A running sum of shifted slices rather than conv2d: on CPU conv2d unfolds the kernel (~1.2 GiB
    # extra at 4096² for sigma 2, and 2-3x slower here), and its blocking depends on the batch size,
    # which changed results in the last bit between a batch and its single images.
    out = _correlate_1d(_correlate_1d(work, work.ndim - 1, taps), work.ndim - 2, taps)
    return out.to(x.dtype)


def feather_mask(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Soften mask edges with a Gaussian of `sigma` pixels (reflect-101 borders)."""
    return gaussian_blur(check_mask(mask), sigma).clamp(0, 1)


# --------------------------------------------------------------------------------------------
# guided filter (He, Sun, Tang 2010/2013: the O(1) box-filter formulation)


def _guided_gray(p: torch.Tensor, guide: torch.Tensor, size: int, eps: float) -> torch.Tensor:
    gray = guide[:, 0] * 0.299 + guide[:, 1] * 0.587 + guide[:, 2] * 0.114  # Rec. 601 luma
    p = p[:, 0]
    m_i, m_p = box_blur(gray, size), box_blur(p, size)
    a = (box_blur(gray * p, size) - m_i * m_p) / (box_blur(gray * gray, size) - m_i * m_i + eps)
    b = m_p - a * m_i
    return box_blur(a, size) * gray + box_blur(b, size)


_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def _guided_color(p: torch.Tensor, guide: torch.Tensor, size: int, eps: float) -> torch.Tensor:
    # Channel by channel rather than one stacked 13-channel box: at 4096² the stack and its copies
    # cost ~1.5 GiB more, for the same arithmetic.
    g = guide.unbind(1)
    p = p[:, 0]
    m_i = [box_blur(c, size) for c in g]
    m_p = box_blur(p, size)
    cov = [box_blur(c * p, size) - m * m_p for c, m in zip(g, m_i)]
    s = {(i, j): box_blur(g[i] * g[j], size) - m_i[i] * m_i[j] for i, j in _PAIRS}
    a11, a12, a13 = s[0, 0] + eps, s[0, 1], s[0, 2]
    a22, a23, a33 = s[1, 1] + eps, s[1, 2], s[2, 2] + eps
    del s
    # Closed-form inverse of the symmetric 3x3 (Σ + εU): one fused elementwise pass on any device,
    # where a batched linalg.solve would build H*W tiny systems.
    c11, c12, c13 = a22 * a33 - a23 * a23, a13 * a23 - a12 * a33, a12 * a23 - a13 * a22
    c22, c23, c33 = a11 * a33 - a13 * a13, a12 * a13 - a11 * a23, a11 * a22 - a12 * a12
    inv_det = 1 / (a11 * c11 + a12 * c12 + a13 * c13)
    del a11, a12, a13, a22, a23, a33
    v1, v2, v3 = cov
    a_r = (c11 * v1 + c12 * v2 + c13 * v3) * inv_det
    a_g = (c12 * v1 + c22 * v2 + c23 * v3) * inv_det
    a_b = (c13 * v1 + c23 * v2 + c33 * v3) * inv_det
    b = m_p - a_r * m_i[0] - a_g * m_i[1] - a_b * m_i[2]
    return (box_blur(a_r, size) * g[0] + box_blur(a_g, size) * g[1] + box_blur(a_b, size) * g[2]
            + box_blur(b, size))


GUIDES: dict[str, Callable[[torch.Tensor, torch.Tensor, int, float], torch.Tensor]] = {
    "gray": _guided_gray,
    "color": _guided_color,
}


def guided_filter(mask: torch.Tensor, image: torch.Tensor, radius: int = 8, eps: float = 1e-3,
                  guide: str = "color") -> torch.Tensor:
    """Edge-aware smoothing of `mask` guided by `image` [B,H,W,3] (window 2*radius+1, reg. `eps`).

    The output follows the guide's edges: where the image has a step, the mask keeps a step there.
    `guide` is "color" (3x3 covariance; separates edges of equal luma) or "gray" (cheaper). `eps` is
    in squared 0..1 intensity units: edges with variance well above it are kept. Clamped to 0..1.
    """
    mask = check_mask(mask)
    image = check_image(image)
    check_same_size(mask, image, "mask", "image", "connect the image the mask was made from")
    batch_pair(mask.shape[0], image.shape[0], "mask", "image", broadcast=False)
    if guide not in GUIDES:
        raise ValueError(f"guided_filter: guide must be one of {sorted(GUIDES)}, got {guide!r}")
    if radius < 0 or eps <= 0:
        raise ValueError(f"guided_filter: need radius >= 0 and eps > 0, got radius={radius}, eps={eps}")
    if radius == 0:
        return mask.clone()
    dtype = _compute_dtype(mask)
    p = mask.to(dtype)[:, None]
    g = image.to(device=mask.device, dtype=dtype).permute(0, 3, 1, 2)
    q = GUIDES[guide](p, g, 2 * radius + 1, eps)
    return q.clamp(0, 1).to(mask.dtype)


# --------------------------------------------------------------------------------------------
# temporal smoothing (frames of a batch)


def _temporal_window(mask: torch.Tensor, radius: int, decay: float) -> torch.Tensor:
    # Centred mean over frames t-radius..t+radius, truncated at the ends of the clip: no lag, and
    # the first and last frames are not pulled towards a reflected copy of themselves.
    n = mask.shape[0]
    work = mask.to(_compute_dtype(mask))
    c = torch.cat([torch.zeros_like(work[:1]), torch.cumsum(work, 0, dtype=_accumulate_dtype(work))], 0)
    t = torch.arange(n, device=mask.device)
    lo, hi = (t - radius).clamp(min=0), (t + radius + 1).clamp(max=n)
    count = (hi - lo).to(c.dtype).view(-1, 1, 1)
    return ((c[hi] - c[lo]) / count).to(mask.dtype)


def _temporal_ema(mask: torch.Tensor, radius: int, decay: float) -> torch.Tensor:
    # Causal: frame t only sees frames <= t, so it works on a stream, at the price of lagging motion.
    out = [mask[0]]
    for frame in mask[1:]:
        out.append(decay * out[-1] + (1 - decay) * frame)
    return torch.stack(out)


TEMPORAL_METHODS: dict[str, Callable[[torch.Tensor, int, float], torch.Tensor]] = {
    "window": _temporal_window,
    "ema": _temporal_ema,
}


def temporal_smooth(mask: torch.Tensor, method: str = "window", radius: int = 1,
                    decay: float = 0.5) -> torch.Tensor:
    """Reduce flicker across the frames of a batch (the batch axis is time).

    "window": centred mean over 2*radius+1 frames (truncated at the clip ends; no lag).
    "ema": causal exponential moving average, out[t] = decay*out[t-1] + (1-decay)*mask[t].
    """
    mask = check_mask(mask)
    if method not in TEMPORAL_METHODS:
        raise ValueError(f"temporal_smooth: method must be one of {sorted(TEMPORAL_METHODS)}, got {method!r}")
    if radius < 0 or not 0.0 <= decay < 1.0:
        raise ValueError(f"temporal_smooth: need radius >= 0 and 0 <= decay < 1, got {radius}, {decay}")
    return TEMPORAL_METHODS[method](mask, radius, decay)


# --------------------------------------------------------------------------------------------
# the whole chain


@dataclass(frozen=True)
class RefineConfig:
    """A refinement recipe; every step is off by default. Steps run in the order of the fields."""

    threshold_low: float | None = None   # None: no threshold; else see threshold_mask
    threshold_high: float | None = None
    island_min_area: int = 0             # 0: keep all islands
    keep_component: str | None = None    # None, or a KEEP_COMPONENT key: keep only that one component
    fill_holes: bool = False
    hole_max_area: int | None = None     # None: fill holes of any size
    grow_pixels: int = 0                 # negative shrinks
    guided_radius: int = 0               # 0: no guided filter (needs the image)
    guided_eps: float = 1e-3
    guide: str = "color"
    feather_sigma: float = 0.0
    temporal_method: str | None = None   # None, "window" or "ema"
    temporal_radius: int = 1
    temporal_decay: float = 0.5


def refine_mask(mask: torch.Tensor, config: RefineConfig, image: torch.Tensor | None = None) -> torch.Tensor:
    """Apply `config`: threshold, islands, one component, holes, grow/shrink, guided filter, feather, temporal."""
    mask = check_mask(mask)
    if config.threshold_low is not None:
        mask = threshold_mask(mask, config.threshold_low, config.threshold_high)
    if config.island_min_area > 0:
        mask = remove_islands(mask, config.island_min_area)
    if config.keep_component is not None:
        if config.keep_component not in KEEP_COMPONENT:
            raise ValueError(f"refine_mask: keep_component must be None or one of {sorted(KEEP_COMPONENT)}, "
                             f"got {config.keep_component!r}")
        mask = KEEP_COMPONENT[config.keep_component](mask)
    if config.fill_holes:
        mask = fill_holes(mask, config.hole_max_area)
    if config.grow_pixels:
        mask = grow_mask(mask, config.grow_pixels)
    if config.guided_radius > 0:
        if image is None:
            raise ValueError("refine_mask: guided_radius > 0 needs the image to guide the filter")
        mask = guided_filter(mask, image, config.guided_radius, config.guided_eps, config.guide)
    if config.feather_sigma > 0:
        mask = feather_mask(mask, config.feather_sigma)
    if config.temporal_method is not None:
        mask = temporal_smooth(mask, config.temporal_method, config.temporal_radius, config.temporal_decay)
    return mask
