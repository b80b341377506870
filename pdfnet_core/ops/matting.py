"""Matting: alpha the segmenter lost at its working resolution, recovered from the photo itself.

``matte(image, mask, config) -> (alpha, foreground)``:
1. a trimap from the soft mask (``ops.trimap``): definite where the mask is sure, unknown in a band
   whose width follows the mask's uncertainty and the photo/network size ratio;
2. alpha in the unknown band by closed-form matting (Levin, Lischinski, Weiss 2008): the alpha that
   is locally an affine function of the colour, i.e. minimises a^T L a with L the matting
   Laplacian, held to the trimap where it is definite and weakly (``prior_weight``) to the mask;
3. foreground colours re-estimated with that alpha (``ops.foreground``), then spill removed
   (``ops.despill``) and the edge choked or expanded (``edge_shift``).

The solver is matrix-free: L times a vector is a handful of box sums (He, Sun, Tang, CVPR 2010,
"Fast matting using large kernel matting Laplacian matrices"), solved by conjugate gradients with
a Jacobi preconditioner (L's diagonal, also from box sums).  Windows are truncated at the border of
the region solved, which keeps L symmetric positive semi-definite, so CG applies.  The work runs in
tiles (``tile_size``), each solved only over the bounding box of its unknown pixels plus a halo
(``halo``): a tile without unknown pixels costs nothing, one crossed by a thin band costs that box
(on the benchmark's strands photo 0.42 M pixels solved of 0.79 M at 1024x768, 5.7 M of 24 M at
6000x4000), a window's working set is ~40 float planes (~50 MiB at most), and only alpha and the
foreground are full-size.  The foreground colours are estimated the same way, per tile around the
soft alpha (``foreground_halo``), the photo's colours kept where alpha is 0 or 1 outside those boxes.
Every step is torch on the inputs' device; the only host syncs are the convergence check every
``check_every`` iterations and one copy of the tiles' band occupancy per level.  Time goes to CG,
each iteration a few dozen passes over the window's planes; its iterations grow with the band's
width (~75 per tile at 1024x768, ~185 at 6000x4000 started from the mask, where the band is 18
pixels wide: hence the half-size start there, ``coarse_band``); benchmarks/bench_matting.py --timing
measures it.  CG stops early on purpose: started from the mask, it keeps the mask where the colours
cannot tell (a converged solve moved a semi-transparent veil's SAD from 11.3 to 17.4).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .checks import InputError, batch_pair, check_image, check_mask, check_same_size
from .despill import DespillConfig, remove_spill
from .foreground import FOREGROUND_METHODS, estimate_foreground
from .refine import grow_mask, guided_filter
from .trimap import UNKNOWN, TrimapConfig, band_radii, make_trimap

# progress(done, total) after each tile; raising from it stops the work (pdfnet_core.specs.Progress)
Progress = Callable[[int, int], None]

__all__ = ["MattingConfig", "matte", "matting_steps", "solve_alpha", "MATTING_FOREGROUND", "EDGE_SHIFT_MAX",
           "ALPHA_SOURCES", "alpha_from_mask"]

MATTING_FOREGROUND = (*FOREGROUND_METHODS, "none")
EDGE_SHIFT_MAX = 64   # pixels either way: a wider shift is a different mask, not an edge control


@dataclass(frozen=True)
class MattingConfig:
    trimap: TrimapConfig = field(default_factory=TrimapConfig)
    # Window radius 2 (5x5, He et al.'s larger kernels): on the benchmark's scenes 0.45x the mask's
    # SAD against 0.52x with Levin's 3x3, and CG carries information twice as far per iteration.
    radius: int = 2
    eps: float = 1e-6             # colour-line regulariser: larger gives smoother alpha
    prior_weight: float = 1e-4    # pull towards the mask inside the band (keeps flat regions defined)
    max_iterations: int = 300
    tolerance: float = 1e-3       # relative residual at which CG stops
    check_every: int = 10         # iterations between convergence checks (each one a host sync)
    tile_size: int = 512          # core side of a solve tile (0: the whole image at once)
    halo: int = 24                # pixels of context around each tile
    # Coarse to fine where the band is wide: CG's first guess comes from the image halved (again and
    # again) while the band's inner radius stays at least this many pixels at the coarser level (0:
    # never).  CG's iterations grow with the band's width: at 6000x4000 from a 1024² mask (radius 9)
    # one halving saves a third of the time, at SAD +2% on the benchmark's stretched strands photo
    # (68.5 -> 69.7 against the mask's 80.8).  Narrow bands (1024x768 from 1024², the benchmark's
    # 512² scenes at radius 6) never halve: there a coarse start moves CG's early-stopped solution
    # away from the mask where the colours cannot tell (the veil: SAD 12.2 against the mask's 11.7).
    coarse_band: int = 4
    foreground: str = "multilevel"   # foreground colours: multilevel | blur_fusion | none (the photo's)
    # Colours are estimated only in the bounding box of each tile's soft alpha plus this margin; where
    # alpha is 0 or 1 outside it they are the photo's (at 6000x4000 a third of the image's work).
    foreground_halo: int = 32
    despill: DespillConfig = field(default_factory=DespillConfig)
    edge_shift: int = 0           # pixels: > 0 expands the alpha edge, < 0 chokes it

    def validate(self) -> "MattingConfig":
        self.trimap.validate()
        self.despill.validate()
        if self.radius < 1 or self.eps <= 0 or self.prior_weight < 0:
            raise ValueError(f"matting: need radius >= 1, eps > 0, prior_weight >= 0; got {self.radius}, "
                             f"{self.eps}, {self.prior_weight}")
        if self.max_iterations < 0 or self.tolerance <= 0 or self.check_every < 1:
            raise ValueError("matting: need max_iterations >= 0, tolerance > 0, check_every >= 1")
        if self.tile_size < 0 or self.halo < 0 or self.coarse_band < 0 or self.foreground_halo < 0:
            raise ValueError(f"matting: tile_size and halo must be >= 0, got {self.tile_size}, {self.halo}")
        if abs(self.edge_shift) > EDGE_SHIFT_MAX:
            raise ValueError(f"matting: edge_shift must be within -{EDGE_SHIFT_MAX}..{EDGE_SHIFT_MAX} pixels, "
                             f"got {self.edge_shift}")
        if self.foreground not in MATTING_FOREGROUND:
            raise ValueError(f"matting: foreground must be one of {', '.join(MATTING_FOREGROUND)}, "
                             f"got {self.foreground!r}")
        return self

    @classmethod
    def from_options(cls, *, network_size: int | None, band: float = TrimapConfig.band, fine_hair: float = 0.0,
                     edge_shift: int = 0, despill: str = "none", despill_strength: float = DespillConfig.strength,
                     foreground: str = "multilevel") -> "MattingConfig":
        """The settings users choose (PDFNet Matting's widgets, the cutout command's flags), validated;
        ``network_size`` None: the mask was made at the photo's own size."""
        return cls(trimap=TrimapConfig(network_size=network_size, band=band, fine_hair=fine_hair),
                   edge_shift=int(edge_shift), foreground=foreground,
                   despill=DespillConfig(key=despill, strength=despill_strength)).validate()


# --------------------------------------------------------------------------------------------
# the matting Laplacian, matrix-free


def _box_sum(x: torch.Tensor, r: int) -> torch.Tensor:
    """Sums over (2r+1)² windows of [C,h,w], zero outside (so windows are truncated at the border)."""
    # Shifted in-place slice adds, separable, with no padded copy: for the small radii used here
    # several times faster than avg_pool2d on a CPU (and 15% faster than adding slices of a padded
    # copy), and the same arithmetic on any device.
    rows = x.clone()
    for d in range(1, r + 1):
        rows[..., :, d:] += x[..., :, :-d]
        rows[..., :, :-d] += x[..., :, d:]
    out = rows.clone()
    for d in range(1, r + 1):
        out[..., d:, :] += rows[..., :-d, :]
        out[..., :-d, :] += rows[..., d:, :]
    return out


class _Laplacian:
    """Levin's L on one region: (L p)_i = sum over windows k holding i of p_i - (a_k . I_i + b_k),
    where (a_k, b_k) is the least-squares affine fit of p to the colour in window k (regularised)."""

    def __init__(self, image: torch.Tensor, r: int, eps: float) -> None:
        self.image, self.r = image, r                      # [3,h,w] float32
        # The window statistics once, in float64 where the device has it: the covariance is a
        # difference of nearly equal sums, and its float32 rounding (~1e-7) is the size of eps/n,
        # enough to make a flat window's 3x3 indefinite and CG diverge.
        wide = image.to(torch.float32 if image.device.type == "mps" else torch.float64)
        count = _box_sum(torch.ones_like(wide[:1]), r)[0]   # pixels per (truncated) window
        mean = _box_sum(wide, r) / count
        pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
        products = torch.stack([wide[i] * wide[j] for i, j in pairs])
        cov = _box_sum(products, r) / count - torch.stack([mean[i] * mean[j] for i, j in pairs])
        reg = eps / count
        a11, a12, a13, a22, a23, a33 = cov[0] + reg, cov[1], cov[2], cov[3] + reg, cov[4], cov[5] + reg
        # The inverse of each window's symmetric 3x3 by cofactors: one elementwise pass on any device.
        c11, c12, c13 = a22 * a33 - a23 * a23, a13 * a23 - a12 * a33, a12 * a23 - a13 * a22
        c22, c23, c33 = a11 * a33 - a13 * a13, a12 * a13 - a11 * a23, a11 * a22 - a12 * a12
        det = a11 * c11 + a12 * c12 + a13 * c13
        inv = torch.stack([c11, c12, c13, c22, c23, c33]) / det                           # pairs order
        # The product below works on whole stacks of planes (a handful of kernels instead of ~30);
        # the window sums are centred (S_I / n - mu S_1 / n) before D multiplies them: folding the
        # means into D would cancel large float32 terms and stall CG.
        full = torch.empty(3, 3, *count.shape, dtype=inv.dtype, device=inv.device)
        for (i, j), plane in zip(pairs, inv):
            full[i, j] = full[j, i] = plane
        self.full_inv = full.to(image.dtype)
        self.lifted = torch.cat([image, torch.ones_like(image[:1])])          # (I, 1) per pixel
        self.inv, self.count, self.mean = inv.to(image.dtype), count.to(image.dtype), mean.to(image.dtype)
        self.scale = 1 / self.count

    @staticmethod
    def _symmetric_times(d: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.stack([d[0] * v[0] + d[1] * v[1] + d[2] * v[2],
                            d[1] * v[0] + d[3] * v[1] + d[4] * v[2],
                            d[2] * v[0] + d[4] * v[1] + d[5] * v[2]])

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        s = _box_sum(self.lifted * p, self.r) * self.scale      # window means of (I p, p)
        fit = torch.empty_like(s)                               # each window's (a, b)
        torch.sum(self.full_inv * (s[:3] - self.mean * s[3]), 1, out=fit[:3])
        torch.sub(s[3], (fit[:3] * self.mean).sum(0), out=fit[3])
        t = _box_sum(fit, self.r)
        return self.count * p - (t * self.lifted).sum(0)

    def diagonal(self) -> torch.Tensor:
        """L_ii = sum over k holding i of 1 - (1 + (I_i - mu_k)^T D_k (I_i - mu_k)) / n_k, expanded
        into box sums of per-window terms so no per-pixel-per-window tensor is built."""
        d, mu, n = self.inv, self.mean, self.count
        d_mu = self._symmetric_times(d, mu)
        terms = torch.cat([d / n, d_mu / n, ((d_mu * mu).sum(0) / n)[None], (1 / n)[None]])
        s = _box_sum(terms, self.r)
        im = self.image
        quad = (s[0] * im[0] * im[0] + s[3] * im[1] * im[1] + s[5] * im[2] * im[2]
                + 2 * (s[1] * im[0] * im[1] + s[2] * im[0] * im[2] + s[4] * im[1] * im[2]))
        cross = (s[6:9] * im).sum(0)
        return n - s[10] - (quad - 2 * cross + s[9])


def _pcg(apply, b: torch.Tensor, x: torch.Tensor, inv_diag: torch.Tensor, cfg: MattingConfig) -> torch.Tensor:
    """Preconditioned conjugate gradients from ``x``; stops at ``tolerance`` (checked every
    ``check_every`` iterations, the loop's only host sync) or ``max_iterations``."""
    r = b - apply(x)
    z = inv_diag * r
    p = z.clone()
    rz = (r * z).sum()
    stop = cfg.tolerance * b.norm().clamp_min(1e-12)
    for it in range(1, cfg.max_iterations + 1):
        ap = apply(p)
        curvature = (p * ap).sum()
        step = torch.where(curvature > 0, rz / curvature.clamp_min(1e-30), torch.zeros_like(rz))
        x.add_(step * p)
        r.sub_(step * ap)
        if it % cfg.check_every == 0 and bool(r.norm() <= stop):
            break
        z = inv_diag * r
        rz_new = (r * z).sum()
        p = z + (rz_new / rz.clamp_min(1e-30)) * p
        rz = rz_new
    return x


def _solve_window(image: torch.Tensor, free: torch.Tensor, fixed: torch.Tensor, prior: torch.Tensor,
                  start: torch.Tensor, cfg: MattingConfig) -> torch.Tensor:
    """Alpha [h,w] of one window: image [3,h,w]; ``free`` [h,w] 1 where alpha is solved for, else 0;
    ``fixed`` the values held elsewhere; ``prior`` the mask; ``start`` CG's first guess."""
    lap = _Laplacian(image, cfg.radius, cfg.eps)
    known = fixed * (1 - free)
    lam = cfg.prior_weight

    def apply(x: torch.Tensor) -> torch.Tensor:
        # L restricted to the free pixels, plus the prior: symmetric positive definite there.
        return free * (lap(free * x) + lam * x)

    b = free * (lam * prior - lap(known))
    inv_diag = free / (lap.diagonal() + lam).clamp_min(1e-6)
    x = _pcg(apply, b, free * start, inv_diag, cfg)
    return (known + free * x).clamp_(0, 1)


def _tile_count(h: int, w: int, tile: int) -> int:
    return 1 if tile <= 0 else -(-h // tile) * -(-w // tile)


def _band_boxes(inside: torch.Tensor, tile: int) -> list[tuple[slice, slice] | None]:
    """For each ``tile``-sized tile (row by row; 0: the whole image is one), the bounding box (image
    coordinates) of the True pixels of ``inside`` [h,w] in it, None where there are none.  Each
    tile's row and column occupancy comes to the host in one copy: one device sync for all tiles,
    not one per tile."""
    h, w = inside.shape
    th, tw = (tile, tile) if tile > 0 else (h, w)
    ny, nx = -(-h // th), -(-w // tw)
    grid = F.pad(inside, (0, nx * tw - w, 0, ny * th - h)).view(ny, th, nx, tw)
    rows, cols = grid.any(3).cpu().numpy(), grid.any(1).cpu().numpy()    # [ny,th,nx], [ny,nx,tw]
    boxes: list[tuple[slice, slice] | None] = []
    for ty in range(ny):
        for tx in range(nx):
            r, c = rows[ty, :, tx].nonzero()[0], cols[ty, tx].nonzero()[0]
            boxes.append(None if r.size == 0 else
                         (slice(ty * th + int(r[0]), ty * th + int(r[-1]) + 1),
                          slice(tx * tw + int(c[0]), tx * tw + int(c[-1]) + 1)))
    return boxes


def _grown(box: tuple[slice, slice], by: int, h: int, w: int) -> tuple[slice, slice]:
    ys, xs = box
    return slice(max(0, ys.start - by), min(h, ys.stop + by)), slice(max(0, xs.start - by), min(w, xs.stop + by))


def _coarser(img: torch.Tensor, tri: torch.Tensor, pri: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The half-size level: area-averaged image and prior; a block is definite only if all of it is."""
    hi = F.max_pool2d(tri[None, None], 2, ceil_mode=True)[0, 0]
    lo = -F.max_pool2d(-tri[None, None], 2, ceil_mode=True)[0, 0]
    small_tri = torch.where(hi == lo, hi, torch.full_like(hi, UNKNOWN))
    size = small_tri.shape
    small_img = F.adaptive_avg_pool2d(img[None], size)[0]
    small_pri = F.adaptive_avg_pool2d(pri[None, None], size)[0, 0]
    return small_img, small_tri, small_pri


class _Ticks:
    """A matte call's progress in tiles: every tile of every level and of the colours counts one
    (a tile without band costs nothing and passes at once).  ``progress(done, total)`` is called
    after each; raising from it (a cancel) stops the work there."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, n: int = 1) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)

    def reach(self, done: int) -> None:
        """Skip to ``done`` (the work left out of the plan: levels or colours not needed)."""
        if done > self.done:
            self(done - self.done)


def _level_sizes(h: int, w: int, halvings: int) -> list[tuple[int, int]]:
    """Image sizes from the coarsest level to the full one (each halving rounds up)."""
    sizes = [(h, w)]
    for _ in range(halvings):
        h, w = -(-h // 2), -(-w // 2)
        sizes.insert(0, (h, w))
    return sizes


def _level_steps(h: int, w: int, config: MattingConfig) -> int:
    return sum(_tile_count(*size, config.tile_size) for size in _level_sizes(h, w, _halvings(h, w, config)))


def matting_steps(height: int, width: int, config: MattingConfig = MattingConfig()) -> int:
    """The progress steps (tiles) ``matte`` reports for one image of this size."""
    colours = 0 if config.foreground == "none" else _tile_count(height, width, config.tile_size)
    return _level_steps(height, width, config) + colours


def _solve_level(img: torch.Tensor, tri: torch.Tensor, pri: torch.Tensor, cfg: MattingConfig,
                 halvings: int, ticks: _Ticks) -> torch.Tensor:
    h, w = tri.shape
    unknown = tri == UNKNOWN
    # Only the band's bounding box in a tile, with its halo, is solved: a tile crossed by a thin band
    # costs that box, not the whole tile (half the pixels at 1024x768, a quarter at 6000x4000 on the
    # benchmark's scene).
    boxes = _band_boxes(unknown, cfg.tile_size)
    start = pri
    if halvings > 0 and min(h, w) >= 2 and any(boxes):
        # Coarse to fine: the half-size solution is CG's first guess here and holds the edges of
        # each tile's window, so a tile needs fewer iterations and agrees with its neighbours.
        coarse = _solve_level(*_coarser(img, tri, pri), cfg, halvings - 1, ticks)
        start = F.interpolate(coarse[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    else:
        coarser = _level_sizes(h, w, halvings)[:-1]          # the levels not run: their steps pass at once
        ticks.reach(ticks.done + sum(_tile_count(*size, cfg.tile_size) for size in coarser))
    alpha = torch.where(unknown, start, tri)
    for box in boxes:
        if box is not None:
            ys, xs = box
            wy, wx = _grown(box, cfg.halo, h, w)
            free = unknown[wy, wx].to(img.dtype)
            # A window cut out of the image keeps the starting values on its cut edges (a Dirichlet
            # condition); the image's own border needs none.
            ring = torch.ones_like(free)
            ring[cfg.radius if wy.start > 0 else 0:free.shape[0] - cfg.radius if wy.stop < h else None,
                 cfg.radius if wx.start > 0 else 0:free.shape[1] - cfg.radius if wx.stop < w else None] = 0
            free = free * (1 - ring)
            window = alpha[wy, wx]
            solved = _solve_window(img[:, wy, wx].contiguous(), free, window, pri[wy, wx], window, cfg)
            alpha[ys, xs] = solved[ys.start - wy.start:ys.stop - wy.start, xs.start - wx.start:xs.stop - wx.start]
        ticks()
    return alpha


def _alpha(image: torch.Tensor, trimap: torch.Tensor, prior: torch.Tensor, config: MattingConfig,
           ticks: _Ticks) -> torch.Tensor:
    img = image.to(torch.float32).permute(2, 0, 1)
    tri = trimap.to(device=img.device, dtype=torch.float32)
    pri = prior.to(device=img.device, dtype=torch.float32).clamp(0, 1)
    h, w = tri.shape
    return _solve_level(img, tri, pri, config, _halvings(h, w, config), ticks)


def solve_alpha(image: torch.Tensor, trimap: torch.Tensor, prior: torch.Tensor,
                config: MattingConfig = MattingConfig(), progress: Progress | None = None) -> torch.Tensor:
    """Alpha [H,W] for one image [H,W,3] given its trimap and prior mask [H,W] (see ``matte``)."""
    h, w = trimap.shape
    return _alpha(image, trimap, prior, config, _Ticks(progress, _level_steps(h, w, config)))


def _halvings(h: int, w: int, config: MattingConfig) -> int:
    """How many times the image is halved for CG's first guess (``MattingConfig.coarse_band``)."""
    radius, n = band_radii(h, w, config.trimap)[0], 0
    while config.coarse_band and radius / 2 ** (n + 1) >= config.coarse_band:
        n += 1
    return n


# --------------------------------------------------------------------------------------------
# the whole stage


def _checked_mask(mask, image: torch.Tensor) -> torch.Tensor:
    if isinstance(mask, torch.Tensor) and mask.ndim == 4:
        raise InputError(f"mask has shape {list(mask.shape)}, not a single-channel [B,H,W] mask: pass one channel "
                         "(e.g. the alpha or the luminance, through ImageToMask in ComfyUI)")
    mask = check_mask(mask, "mask", single=True)
    check_same_size(mask, image, "mask", "image",
                    f"resize the mask to the image's {image.shape[2]}x{image.shape[1]} first (the mask must be "
                    "made from this image)")
    return mask


def _foreground_in_band(image: torch.Tensor, alpha: torch.Tensor, config: MattingConfig,
                        ticks: _Ticks) -> torch.Tensor:
    """Foreground colours [1,H,W,3]: estimated tile by tile around the soft alpha, the photo's elsewhere."""
    h, w = alpha.shape[1:]
    out = image.clone()
    for box in _band_boxes((alpha[0] > 0) & (alpha[0] < 1), config.tile_size):
        if box is not None:
            (ys, xs), (wy, wx) = box, _grown(box, config.foreground_halo, h, w)
            estimate = estimate_foreground(image[:, wy, wx], alpha[:, wy, wx], config.foreground).foreground
            out[:, ys, xs] = estimate[:, ys.start - wy.start:ys.stop - wy.start,
                                      xs.start - wx.start:xs.stop - wx.start]
        ticks()
    return out


def matte(image: torch.Tensor, mask: torch.Tensor, config: MattingConfig = MattingConfig(),
          progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha [B,H,W], foreground [B,H,W,3]) of images [B,H,W,3] and their soft masks [B,H,W] (subject = 1).

    An empty mask gives alpha 0, a full one alpha 1 (nothing is unknown there); a mask and an image
    of different sizes, or a mask with channels, is an InputError saying what to pass instead.
    ``progress(done, total)`` is called after each tile (``matting_steps`` per image); raising from
    it stops the work.
    """
    image = check_image(image, "image")
    mask = _checked_mask(mask, image)
    n = batch_pair(image.shape[0], mask.shape[0], "image", "mask")
    config.validate()
    mask = mask.to(image.device)
    per_image = matting_steps(image.shape[1], image.shape[2], config)
    ticks = _Ticks(progress, n * per_image)
    alphas, foregrounds = [], []
    for i in range(n):
        im = image[i if image.shape[0] > 1 else 0][None]
        m = mask[i if mask.shape[0] > 1 else 0][None]
        trimap = make_trimap(m, config.trimap)
        alpha = _alpha(im[0], trimap[0], m[0], config, ticks)[None]
        if config.edge_shift:
            alpha = grow_mask(alpha, config.edge_shift)
        work = im.to(torch.float32)
        fg = work if config.foreground == "none" else _foreground_in_band(work, alpha, config, ticks)
        fg = remove_spill(work, fg, alpha, trimap == 0, config.despill)
        alphas.append(alpha.to(image.dtype))
        foregrounds.append(fg.to(image.dtype))
        ticks.reach((i + 1) * per_image)
    return torch.cat(alphas), torch.cat(foregrounds)


# --------------------------------------------------------------------------------------------
# where a cut-out's alpha comes from (the command line's --alpha)


def _alpha_as_is(image: torch.Tensor, mask: torch.Tensor, config: MattingConfig) -> tuple[torch.Tensor, None]:
    return mask, None


def _alpha_guided(image: torch.Tensor, mask: torch.Tensor, config: MattingConfig) -> tuple[torch.Tensor, None]:
    # The filter's window spans the band the matting would solve, so both look at the same pixels.
    radius = max(4, 2 * band_radii(mask.shape[1], mask.shape[2], config.trimap)[0])
    return guided_filter(mask, image, radius=radius, eps=1e-3), None


def _alpha_matting(image: torch.Tensor, mask: torch.Tensor, config: MattingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    return matte(image, mask, config)


# name -> (image, mask, config) -> (alpha, foreground colours, or None where they are still to estimate)
ALPHA_SOURCES: dict[str, Callable[[torch.Tensor, torch.Tensor, MattingConfig],
                                  tuple[torch.Tensor, torch.Tensor | None]]] = {
    "mask": _alpha_as_is,
    "guided": _alpha_guided,
    "matting": _alpha_matting,
}


def alpha_from_mask(image: torch.Tensor, mask: torch.Tensor, source: str,
                    config: MattingConfig = MattingConfig()) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(alpha, foreground or None) of images [B,H,W,3] and masks [B,H,W] by ``source`` (ALPHA_SOURCES)."""
    if source not in ALPHA_SOURCES:
        raise ValueError(f"alpha source must be one of {', '.join(ALPHA_SOURCES)}, got {source!r}")
    return ALPHA_SOURCES[source](image, mask, config)
