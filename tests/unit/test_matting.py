"""The matting stage (pdfnet_core.ops.matting, .trimap, .despill) on small generated cases."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pdfnet_core.ops.checks import InputError
from pdfnet_core.ops.despill import DespillConfig, despill, estimate_key, key_color
from torch.utils._python_dispatch import TorchDispatchMode

from pdfnet_core.ops import matting
from pdfnet_core.ops.matting import MattingConfig, _band_boxes, _halvings, _Laplacian, matte, matting_steps, solve_alpha
from pdfnet_core.ops.trimap import UNKNOWN, TrimapConfig, band_radii, make_trimap

RED, BLUE, GREEN = (0.9, 0.2, 0.1), (0.15, 0.3, 0.85), (0.1, 0.75, 0.2)


def disk(h: int, w: int, cy: float, cx: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return (r - torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) + 0.5).clamp(0, 1)


def compose(alpha: torch.Tensor, fg, bg) -> torch.Tensor:
    a = alpha[..., None]
    fg_t = torch.as_tensor(fg).expand(*alpha.shape, 3) if not isinstance(fg, torch.Tensor) else fg
    bg_t = torch.as_tensor(bg).expand(*alpha.shape, 3) if not isinstance(bg, torch.Tensor) else bg
    return a * fg_t + (1 - a) * bg_t


def low_res(alpha: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """What a segmenter at 1/factor resolution gives: thin parts fade away."""
    small = F.avg_pool2d(alpha[None, None], factor)
    sharp = ((small - 0.5) * 2.5 + 0.5).clamp(0, 1)
    return F.interpolate(sharp, size=alpha.shape, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)


@pytest.fixture(scope="module")
def strand_case():
    """A red disk with a 1-pixel strand sticking out, over a blue background with a gentle gradient."""
    h = w = 64
    alpha = disk(h, w, 40, 32, 14)
    alpha[10:27, 31] = 1.0                      # the strand, 1 px wide, above the disk
    bg = torch.tensor(BLUE) * (0.8 + 0.2 * torch.linspace(0, 1, w))[None, :, None].expand(h, w, 1)
    image = compose(alpha, RED, bg)
    return image, alpha, low_res(alpha)


def config(fine_hair: float = 0.0, **kw) -> MattingConfig:
    kw.setdefault("foreground", "blur_fusion")
    return MattingConfig(trimap=TrimapConfig(network_size=16, fine_hair=fine_hair), **kw)


# ------------------------------------------------------------------ alpha


def test_matting_recovers_alpha_the_mask_lost(strand_case):
    image, alpha, mask = strand_case
    strand = (slice(12, 21), 31)
    assert float(mask[strand].max()) < 0.2            # the low-resolution mask lost the strand
    out, fg = matte(image[None], mask[None], config(fine_hair=1.0))
    assert out.shape == (1, 64, 64) and fg.shape == (1, 64, 64, 3)
    assert float(out[0][strand].mean()) > 0.7         # matting found it in the photo
    assert float((out[0] - alpha).abs().sum()) < 0.5 * float((mask - alpha).abs().sum())
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_laplacian_is_symmetric_with_the_diagonal_it_reports():
    torch.manual_seed(0)
    image = torch.rand(3, 12, 10)
    lap = _Laplacian(image, 2, 1e-5)
    x, y = torch.rand(12, 10), torch.rand(12, 10)
    assert torch.allclose((lap(x) * y).sum(), (lap(y) * x).sum(), rtol=1e-4)
    assert float(lap(torch.ones(12, 10)).abs().max()) < 1e-4          # constants cost nothing
    assert float((lap(x) * x).sum()) > 0
    diag = lap.diagonal()
    for i, j in ((0, 0), (5, 4), (11, 9), (0, 7)):
        e = torch.zeros(12, 10)
        e[i, j] = 1
        assert float(lap(e)[i, j]) == pytest.approx(float(diag[i, j]), rel=1e-3, abs=1e-3)


def test_tiles_with_halos_agree_with_one_window(strand_case):
    image, _, mask = strand_case
    trimap = make_trimap(mask[None], config().trimap)[0]
    whole = solve_alpha(image, trimap, mask, config(tile_size=0, tolerance=1e-6, max_iterations=1000))
    tiled = solve_alpha(image, trimap, mask, config(tile_size=24, halo=12, tolerance=1e-6, max_iterations=1000))
    assert float((whole - tiled).abs().mean()) < 0.01
    assert float((whole - tiled).abs().max()) < 0.2


def test_only_a_wide_band_is_solved_coarse_to_fine_and_lands_near_the_one_level_solution(strand_case):
    assert _halvings(768, 1024, MattingConfig()) == 0            # a 1024² mask on its own photo size
    assert _halvings(4000, 6000, MattingConfig()) == 1           # band radius 9: one halving
    assert _halvings(4000, 6000, MattingConfig(coarse_band=0)) == 0
    image, alpha, mask = (F.interpolate(x.movedim(-1, 0)[None] if x.ndim == 3 else x[None, None], scale_factor=2,
                                        mode="bilinear")[0].movedim(0, -1).squeeze(-1).contiguous() for x in strand_case)
    wide = TrimapConfig(network_size=16)                          # radius 12 on this 128² photo
    trimap = make_trimap(mask[None], wide)[0]
    assert _halvings(128, 128, MattingConfig(trimap=wide)) == 1
    one = solve_alpha(image, trimap, mask, MattingConfig(trimap=wide, coarse_band=0))
    coarse_start = solve_alpha(image, trimap, mask, MattingConfig(trimap=wide))
    assert not torch.equal(one, coarse_start)                     # the coarse start did run
    mask_error = float((mask - alpha).abs().sum())
    one_error, coarse_error = float((one - alpha).abs().sum()), float((coarse_start - alpha).abs().sum())
    assert coarse_error < 0.2 * mask_error and abs(coarse_error - one_error) < 0.05 * mask_error


def test_band_boxes_are_each_tiles_bounding_box_of_the_band():
    torch.manual_seed(3)
    inside = torch.rand(70, 53) > 0.97
    inside[:, 40:] = False                       # a column of tiles without band
    for tile in (0, 16, 25, 53):
        boxes = _band_boxes(inside, tile)
        side = tile or 70
        tiles = [(slice(y, min(70, y + side)), slice(x, min(53, x + (tile or 53))))
                 for y in range(0, 70, side) for x in range(0, 53, tile or 53)]
        assert len(boxes) == len(tiles)
        for (ys, xs), box in zip(tiles, boxes):
            part = inside[ys, xs]
            if not part.any():
                assert box is None
                continue
            rows, cols = part.any(1).nonzero()[:, 0], part.any(0).nonzero()[:, 0]
            assert box == (slice(ys.start + int(rows[0]), ys.start + int(rows[-1]) + 1),
                           slice(xs.start + int(cols[0]), xs.start + int(cols[-1]) + 1))


def test_progress_counts_every_tile_of_every_level_and_a_raise_stops_the_work(strand_case, monkeypatch):
    image, _, mask = (F.interpolate(x.movedim(-1, 0)[None] if x.ndim == 3 else x[None, None], scale_factor=2,
                                    mode="bilinear")[0].movedim(0, -1).squeeze(-1).contiguous() for x in strand_case)
    cfg = MattingConfig(trimap=TrimapConfig(network_size=16), tile_size=32, foreground="blur_fusion")
    assert _halvings(128, 128, cfg) == 1
    steps = matting_steps(128, 128, cfg)
    assert steps == 4 + 16 + 16                  # 64² level, 128² level, colours: 32² tiles
    reports = []
    matte(image[None].expand(2, -1, -1, -1), mask[None], cfg, lambda done, total: reports.append((done, total)))
    assert [d for d, _ in reports] == list(range(1, 2 * steps + 1)) and {t for _, t in reports} == {2 * steps}

    class Stop(Exception):
        pass

    def stop_at_3(done: int, total: int) -> None:
        if done == 3:
            raise Stop

    solved = []
    real = matting._solve_window
    monkeypatch.setattr(matting, "_solve_window", lambda *a: solved.append(1) or real(*a))
    with pytest.raises(Stop):
        matte(image[None], mask[None], cfg, stop_at_3)
    assert len(solved) <= 3                      # nothing ran after the raise


class HostSyncs(TorchDispatchMode):
    """Counts the ops that wait for the device on a GPU: a tensor's value read on the host
    (``.item()``, ``bool()``), a data-dependent shape (``nonzero``) and copies to the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in ("_local_scalar_dense", "nonzero", "masked_select") or (
                name in ("_to_copy", "copy_") and kwargs.get("device", None) == torch.device("cpu")):
            self.count += 1
        return func(*args, **kwargs)


def test_the_solver_waits_for_the_device_once_per_level_and_once_per_ten_iterations(strand_case, monkeypatch):
    """On a GPU a host sync stalls the launch queue: the band boxes come over in one copy per level,
    CG checks convergence every ``check_every`` iterations and nothing else reads a value."""
    image, _, mask = strand_case
    iterations = []
    real = matting._pcg

    def counted(apply, b, x, inv_diag, cfg):
        def step(v):
            iterations[-1] += 1
            return apply(v)
        iterations.append(-1)                        # the first apply is the starting residual
        return real(step, b, x, inv_diag, cfg)

    monkeypatch.setattr(matting, "_pcg", counted)
    trimap = make_trimap(mask[None], config().trimap)[0]
    for tile in (0, 24):
        iterations.clear()
        cfg = config(tile_size=tile, halo=12)
        with HostSyncs() as syncs:
            solve_alpha(image, trimap, mask, cfg)
        checks = sum(n // cfg.check_every for n in iterations)
        assert sum(iterations) > 3 * checks > 0      # CG ran, far more iterations than checks
        assert syncs.count <= checks + 2 * (_halvings(64, 64, cfg) + 1)   # + the boxes' two copies a level


# ------------------------------------------------------------------ trimap


def test_trimap_never_takes_an_unsure_value_as_definite():
    torch.manual_seed(1)
    coarse = torch.rand(1, 1, 8, 8)
    mask = F.interpolate(coarse, size=(40, 40), mode="bilinear")[0]   # soft everywhere in places
    mask = ((mask - 0.5) * 4 + 0.5).clamp(0, 1)
    cfg = TrimapConfig(low=0.1, high=0.9, network_size=None, band=0, min_radius=0)
    trimap = make_trimap(mask, cfg)
    assert set(trimap.unique().tolist()) <= {0.0, UNKNOWN, 1.0}
    unsure = (mask > cfg.low) & (mask < cfg.high)
    assert bool(unsure.any())
    assert bool((trimap[unsure] == UNKNOWN).all())
    assert bool((mask[trimap == 1] >= cfg.high).all()) and bool((mask[trimap == 0] <= cfg.low).all())


def test_band_follows_the_photo_to_network_ratio_and_fine_hair_widens_the_outside():
    assert band_radii(1024, 768, TrimapConfig(band=1.5, network_size=1024)) == (2, 2)
    inside, outside = band_radii(4000, 6000, TrimapConfig(band=1.5, network_size=1024))
    assert inside == outside == 9                       # 1.5 network pixels x 6000/1024
    hair = band_radii(4000, 6000, TrimapConfig(band=1.5, network_size=1024, fine_hair=1.0))
    assert hair == (9, 27)
    mask = torch.zeros(1, 60, 60)
    mask[:, :, 30:] = 1.0
    plain = make_trimap(mask, TrimapConfig(network_size=None, band=3))
    wide = make_trimap(mask, TrimapConfig(network_size=None, band=3, fine_hair=1.0))
    assert bool((plain[0, 30, 27:33] == UNKNOWN).all()) and float(plain[0, 30, 26]) == 0.0
    assert float(wide[0, 30, 22]) == UNKNOWN and float(wide[0, 30, 33]) == 1.0  # only the outside widens


# ------------------------------------------------------------------ bad and degenerate input


def test_bad_masks_get_errors_that_say_what_to_do():
    image = torch.rand(1, 32, 32, 3)
    with pytest.raises(InputError, match="resize the mask to the image's 32x32"):
        matte(image, torch.rand(1, 16, 32))
    with pytest.raises(InputError, match="single-channel"):
        matte(image, torch.rand(1, 32, 32, 3))
    with pytest.raises(InputError, match="image has 2 items and mask has 3"):
        matte(torch.rand(2, 32, 32, 3), torch.rand(3, 32, 32))
    nan = torch.rand(1, 32, 32)
    nan[0, 3, 3] = float("nan")
    with pytest.raises(InputError, match="mask contains NaN"):
        matte(image, nan)
    with pytest.raises(InputError, match="despill key 'purple'"):
        matte(image, torch.rand(1, 32, 32), config(despill=DespillConfig(key="purple")))
    with pytest.raises(ValueError, match="low < high"):
        matte(image, torch.rand(1, 32, 32), MattingConfig(trimap=TrimapConfig(low=0.6, high=0.4)))


def test_empty_and_full_masks_give_defined_results():
    torch.manual_seed(2)
    image = torch.rand(2, 24, 24, 3)
    masks = torch.stack([torch.zeros(24, 24), torch.ones(24, 24)])
    alpha, fg = matte(image, masks, config(despill=DespillConfig(key="auto")))
    assert bool((alpha[0] == 0).all()) and bool((alpha[1] == 1).all())
    assert bool(torch.isfinite(fg).all())
    assert torch.allclose(fg[1], image[1], atol=1e-5)       # all subject: its colours are the photo's
    # one mask for a batch of images, and a lone [H,W] mask, are taken as ComfyUI nodes hand them
    assert matte(image, torch.ones(24, 24), config())[0].shape == (2, 24, 24)


def test_a_mask_unsure_everywhere_stays_near_itself():
    torch.manual_seed(3)
    image = torch.rand(1, 20, 20, 3)
    alpha, _ = matte(image, torch.full((1, 20, 20), 0.5), config())
    assert bool(torch.isfinite(alpha).all()) and float((alpha - 0.5).abs().max()) < 0.5


# ------------------------------------------------------------------ despill and edge


def test_despill_removes_a_green_cast_at_the_edge_and_only_a_little_inside():
    fg = torch.tensor([[[[0.6, 0.8, 0.5], [0.6, 0.8, 0.5], [0.5, 0.5, 0.5], [0.8, 0.3, 0.8]]]])
    alpha = torch.tensor([[[0.5, 1.0, 0.5, 0.5]]])
    out = despill(fg, alpha, key_color("green"))
    edge, inside, grey, magenta = out[0, 0]
    assert float(edge[1]) == pytest.approx(float(edge[0] + edge[2]) / 2, abs=1e-5)   # no green above the rest
    assert float(edge.mean()) == pytest.approx(float(fg[0, 0, 0].mean()), abs=1e-5)   # brightness kept
    assert 0.7 < float(inside[1]) < 0.8                                   # interior: a capped removal
    assert torch.allclose(grey, fg[0, 0, 2]) and torch.allclose(magenta, fg[0, 0, 3])
    assert torch.allclose(despill(fg, alpha, key_color("green"), strength=0.0), fg)


def test_matte_with_auto_despill_finds_the_screen_and_cleans_the_edge_colours():
    h = w = 48
    alpha = disk(h, w, 24, 24, 12)
    subject = torch.tensor(RED) + 0.2 * torch.tensor([-0.5, 1.0, -0.5]) * (alpha < 1)[..., None]   # spill at the rim
    image = compose(alpha, subject.clamp(0, 1), GREEN)
    key = estimate_key(image[0] if image.ndim == 4 else image, alpha < 0.01)
    assert key is not None and float(key[1]) == pytest.approx(0.75, abs=0.02)
    assert estimate_key(torch.full((8, 8, 3), 0.5), torch.ones(8, 8, dtype=torch.bool)) is None  # grey: not a screen
    mask = low_res(alpha)
    # The photo's own colours at the edge (foreground "none") are part screen: despill must take the
    # cast out of them.  (A colour estimate may already have removed it, leaving despill nothing to show.)
    _, plain = matte(image[None], mask[None], config(foreground="none"))
    _, cleaned = matte(image[None], mask[None], config(foreground="none", despill=DespillConfig(key="auto")))
    rim = (alpha > 0.02) & (alpha < 0.98)

    def greenness(c):
        return float((c[..., 1] - (c[..., 0] + c[..., 2]) / 2)[rim].mean())

    assert greenness(cleaned[0]) < greenness(plain[0]) - 0.1


def test_edge_shift_expands_and_chokes_the_edge(strand_case):
    image, _, mask = strand_case
    base, _ = matte(image[None], mask[None], config(foreground="none"))
    grown, _ = matte(image[None], mask[None], config(foreground="none", edge_shift=2))
    choked, _ = matte(image[None], mask[None], config(foreground="none", edge_shift=-2))
    row = 40   # across the disk's left edge (centre x 32, radius 14: edge near x 18)
    edge = lambda a: int((a[0, row, :32] >= 0.5).nonzero()[0])   # noqa: E731  first subject column
    assert edge(grown) == edge(base) - 2 and edge(choked) == edge(base) + 2
    assert float(grown.sum()) > float(base.sum()) > float(choked.sum())


def test_an_edge_shift_past_the_limit_is_refused_with_the_range():
    assert MattingConfig.from_options(network_size=1024, edge_shift=64).edge_shift == 64
    with pytest.raises(ValueError, match=r"edge_shift must be within -64\.\.64 pixels, got 65"):
        MattingConfig.from_options(network_size=1024, edge_shift=65)
