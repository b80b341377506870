"""Mask refinement on synthetic shapes with exact expectations."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from pdfnet_core.ops.refine import (
    RefineConfig,
    box_blur,
    feather_mask,
    fill_holes,
    gaussian_blur,
    grow_mask,
    guided_filter,
    label_components,
    refine_mask,
    remove_islands,
    shrink_mask,
    temporal_smooth,
    threshold_mask,
)


def disk(h: int, w: int, cy: int, cx: int, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int, value: float = 1.0) -> torch.Tensor:
    m = torch.zeros(h, w)
    m[y0:y1, x0:x1] = value
    return m


def disk_offsets(r: int) -> set[tuple[int, int]]:
    return {(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= r * r}


# ------------------------------------------------------------------ validation


def test_nan_and_shape_errors_name_the_argument():
    bad = torch.zeros(1, 8, 8)
    bad[0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="mask contains NaN"):
        grow_mask(bad, 2)
    with pytest.raises(ValueError, match=r"mask: expected a \[B,H,W\]"):
        feather_mask(torch.zeros(8, 8), 1.0)
    image = torch.zeros(1, 8, 8, 3)
    image[0, 0, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="image contains NaN"):
        guided_filter(torch.zeros(1, 8, 8), image)
    with pytest.raises(ValueError, match=r"mask is 8x8 \(WxH\) but image is 9x8"):
        guided_filter(torch.zeros(1, 8, 8), torch.zeros(1, 8, 9, 3))
    with pytest.raises(ValueError, match="mask has 2 items and image has 1"):
        guided_filter(torch.zeros(2, 8, 8), torch.zeros(1, 8, 8, 3))


# ------------------------------------------------------------------ threshold


def test_threshold_binary_and_ramp():
    m = torch.tensor([[[0.0, 0.2, 0.3, 0.5, 0.7, 0.8, 1.0]]])
    assert threshold_mask(m, 0.5).tolist() == [[[0, 0, 0, 1, 1, 1, 1]]]
    ramp = threshold_mask(m, 0.3, 0.7)
    assert torch.allclose(ramp, torch.tensor([[[0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0]]]), atol=1e-6)
    with pytest.raises(ValueError, match="low"):
        threshold_mask(m, 0.7, 0.3)


# ------------------------------------------------------------------ morphology


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_single_pixel_grows_into_exact_disk(n):
    m = torch.zeros(1, 21, 21)
    m[0, 10, 10] = 1
    grown = grow_mask(m, n)[0]
    lit = {(int(y) - 10, int(x) - 10) for y, x in grown.nonzero().tolist()}
    assert lit == disk_offsets(n)


def test_disk_grown_matches_minkowski_sum_and_radius():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    m = disk(41, 41, 20, 20, 6)[None]
    grown = grow_mask(m, 4)[0]
    footprint = np.array([[dy * dy + dx * dx <= 16 for dx in range(-4, 5)] for dy in range(-4, 5)])
    expected = scipy_ndimage.binary_dilation(m[0].numpy() > 0, structure=footprint)
    assert np.array_equal(grown.numpy() > 0, expected)
    # along the axes the radius is exactly 6 + 4
    assert grown[20, 20 + 10] == 1 and grown[20, 20 + 11] == 0
    assert grown[20 - 10, 20] == 1 and grown[20 - 11, 20] == 0


def test_square_shrunk_by_n_loses_n_per_side():
    m = box(30, 30, 5, 25, 5, 25)[None]  # 20x20
    shrunk = shrink_mask(m, 3)[0]
    assert torch.equal(shrunk, box(30, 30, 8, 22, 8, 22))
    assert torch.equal(grow_mask(m, -3), shrink_mask(m, 3))


def test_morphology_ignores_outside_and_keeps_soft_values():
    full = torch.ones(1, 12, 12)
    assert torch.equal(shrink_mask(full, 4), full)  # the frame does not eat in
    m = torch.full((1, 15, 15), 0.3)
    m[0, 7, 7] = 0.7
    grown = grow_mask(m, 2)[0]
    expected = torch.full((15, 15), 0.3)
    for dy, dx in disk_offsets(2):
        expected[7 + dy, 7 + dx] = 0.7
    assert torch.equal(grown, expected)
    eroded = shrink_mask(m, 1)
    assert torch.equal(eroded, torch.full((1, 15, 15), 0.3))
    assert torch.equal(grow_mask(m, 0), m)


# ------------------------------------------------------------------ components, holes, islands


def test_label_components_matches_scipy():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(1)
    binary = torch.rand(3, 31, 45, generator=g) < 0.5
    for conn, structure in ((4, scipy_ndimage.generate_binary_structure(2, 1)), (8, np.ones((3, 3)))):
        labels = label_components(binary, conn)
        assert torch.equal(labels >= 0, binary)
        for i in range(3):
            ref, count = scipy_ndimage.label(binary[i].numpy(), structure=structure)
            ours = labels[i].numpy()
            pairs = set(zip(ref[ref > 0].tolist(), ours[ref > 0].tolist()))
            assert len(pairs) == count == len(np.unique(ours[ours >= 0]))
        # labels are the flat index of each component's first pixel: unique across the batch
        first = labels.reshape(-1)[labels.reshape(-1) >= 0]
        assert torch.equal(binary.reshape(-1)[first], torch.ones_like(first, dtype=torch.bool))


def test_diagonal_touch_is_one_component_only_with_8_connectivity():
    m = torch.zeros(1, 6, 6, dtype=torch.bool)
    m[0, 1:3, 1:3] = True
    m[0, 3:5, 3:5] = True
    assert len(label_components(m, 8).unique()) == 2  # -1 and one label
    assert len(label_components(m, 4).unique()) == 3


def ring_with_hole(hole_h: int = 5, hole_w: int = 10) -> torch.Tensor:
    m = box(30, 30, 5, 25, 5, 25)
    m[10:10 + hole_h, 8:8 + hole_w] = 0  # hole of area hole_h * hole_w
    return m[None]


def test_hole_of_area_50_filled_at_60_kept_at_40():
    m = ring_with_hole()
    assert torch.equal(fill_holes(m, 60), box(30, 30, 5, 25, 5, 25)[None])
    assert torch.equal(fill_holes(m, 50), box(30, 30, 5, 25, 5, 25)[None])
    assert torch.equal(fill_holes(m, 49), m)
    assert torch.equal(fill_holes(m, 40), m)
    assert torch.equal(fill_holes(m, None), box(30, 30, 5, 25, 5, 25)[None])


def test_background_touching_border_is_not_a_hole():
    m = box(20, 20, 0, 20, 0, 20)
    m[0:6, 8:12] = 0  # a notch open to the top edge, area 24
    m[10:12, 10:12] = 0  # a real hole, area 4
    out = fill_holes(m[None], 100)[0]
    assert out[0:6, 8:12].sum() == 0
    assert out[10:12, 10:12].sum() == 4


def test_soft_hole_is_filled_with_one_and_rest_untouched():
    m = ring_with_hole() * 0.8
    m[0, 10:15, 8:18] = 0.2  # below threshold: background
    out = fill_holes(m, 60)
    expected = box(30, 30, 5, 25, 5, 25)[None] * 0.8
    expected[0, 10:15, 8:18] = 1.0
    assert torch.equal(out, expected)


def test_island_of_area_50_removed_at_60_kept_at_40():
    m = box(40, 40, 2, 22, 2, 22)  # main body, area 400
    m[30:35, 25:35] = 1  # island, area 50
    m = m[None]
    without = m.clone()
    without[0, 30:35, 25:35] = 0
    assert torch.equal(remove_islands(m, 60), without)
    assert torch.equal(remove_islands(m, 51), without)
    assert torch.equal(remove_islands(m, 50), m)
    assert torch.equal(remove_islands(m, 40), m)
    assert torch.equal(remove_islands(m, 401), torch.zeros_like(m))


def test_holes_and_islands_counted_per_image_of_a_batch():
    a = ring_with_hole()  # hole 50
    b = ring_with_hole(4, 5)  # hole 20
    out = fill_holes(torch.cat([a, b]), 30)
    assert torch.equal(out[0], a[0])
    assert torch.equal(out[1], box(30, 30, 5, 25, 5, 25))


# ------------------------------------------------------------------ linear filters


@pytest.mark.parametrize("size", [1, 4, 6, 9, 40, 257, 300])  # 257+: running-sum path
def test_box_blur_matches_scipy_uniform_filter(size):
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 17, 23, generator=g, dtype=torch.float64)
    ours = box_blur(x, size)
    ref = np.stack([scipy_ndimage.uniform_filter(x[i].numpy(), size, mode="mirror") for i in range(2)])
    assert np.abs(ours.numpy() - ref).max() < 1e-12


@pytest.mark.parametrize("sigma", [0.7, 2.0, 5.0])
def test_gaussian_matches_scipy_mirror(sigma):
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    m = disk(32, 40, 14, 22, 9)[None]
    ours = gaussian_blur(m.double(), sigma)[0].numpy()
    ref = scipy_ndimage.gaussian_filter(m[0].double().numpy(), sigma, mode="mirror", truncate=4.0)
    assert np.abs(ours - ref).max() < 1e-12
    f32 = feather_mask(m, sigma)
    assert f32.dtype == torch.float32 and (f32 - torch.from_numpy(ref).float()).abs().max() < 1e-6


def test_feather_zero_is_identity_and_keeps_dtype():
    m = disk(16, 16, 8, 8, 5)[None].half()
    assert torch.equal(feather_mask(m, 0.0), m)
    out = feather_mask(m, 1.5)
    assert out.dtype == torch.float16 and 0 < out[0, 8, 13] < 1


def step_scene(h: int = 24, w: int = 32, edge: int = 16):
    """Guide with a vertical step at `edge`, and a noisy mask (0.2 | 0.8) of the same step."""
    image = torch.zeros(1, h, w, 3)
    image[:, :, edge:] = 0.9
    image[:, :, :edge] = 0.1
    g = torch.Generator().manual_seed(3)
    truth = torch.full((1, h, w), 0.2)
    truth[:, :, edge:] = 0.8
    noisy = truth + 0.06 * torch.randn(1, h, w, generator=g)
    return image, truth, noisy


@pytest.mark.parametrize("guide", ["color", "gray"])
def test_guided_filter_keeps_step_edge_better_than_gaussian(guide):
    image, truth, noisy = step_scene()
    guided = guided_filter(noisy, image, radius=4, eps=1e-3, guide=guide)
    blurred = feather_mask(noisy, 2.0)
    err_guided = (guided - truth).abs()
    err_blur = (blurred - truth).abs()
    # the two columns either side of the edge: the blur is half-way, the guided filter is not
    assert err_guided[..., 15:17].max() < 0.1
    assert err_blur[..., 15:17].min() > 0.15
    band = slice(12, 20)
    assert err_guided[..., band].mean() < 0.3 * err_blur[..., band].mean()
    # and it still smooths the noise away from the edge
    assert err_guided[..., :10].mean() < 0.5 * (noisy - truth)[..., :10].abs().mean()


def test_color_guide_sees_an_edge_of_equal_luma():
    image = torch.zeros(1, 16, 24, 3)
    image[:, :, :12, 0] = 0.587  # red and green of the same Rec.601 luma
    image[:, :, 12:, 1] = 0.299
    mask = torch.zeros(1, 16, 24)
    mask[:, :, 12:] = 1
    color = guided_filter(mask, image, radius=3, eps=1e-4, guide="color")
    gray = guided_filter(mask, image, radius=3, eps=1e-4, guide="gray")
    assert (color - mask).abs().max() < 0.02
    assert (gray - mask).abs()[..., 11:13].min() > 0.3  # gray guide has no edge: plain box blur


def test_guided_filter_constant_mask_stays_constant():
    g = torch.Generator().manual_seed(4)
    image = torch.rand(2, 20, 20, 3, generator=g)
    mask = torch.full((2, 20, 20), 0.6)
    assert (guided_filter(mask, image, radius=3) - 0.6).abs().max() < 1e-5


# ------------------------------------------------------------------ temporal


def test_temporal_window_and_ema_exact_values():
    frames = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0]).view(5, 1, 1).expand(5, 2, 2)
    window = temporal_smooth(frames, "window", radius=1)[:, 0, 0]
    assert torch.allclose(window, torch.tensor([0.5, 1 / 3, 2 / 3, 2 / 3, 1.0]), atol=1e-6)
    ema = temporal_smooth(frames, "ema", decay=0.5)[:, 0, 0]
    assert torch.allclose(ema, torch.tensor([0.0, 0.5, 0.25, 0.625, 0.8125]), atol=1e-7)
    assert torch.equal(temporal_smooth(frames, "window", radius=0), frames)
    with pytest.raises(ValueError, match="method"):
        temporal_smooth(frames, "median")


# ------------------------------------------------------------------ batches, dtypes, the chain


def test_batch_of_three_equals_three_singles():
    g = torch.Generator().manual_seed(5)
    masks = torch.stack([ring_with_hole()[0], disk(30, 30, 15, 15, 8), box(30, 30, 3, 9, 3, 27)])
    masks = (masks * 0.8 + 0.2 * torch.rand(3, 30, 30, generator=g)).clamp(0, 1)
    images = torch.rand(3, 30, 30, 3, generator=g)
    ops = [
        lambda m, i: threshold_mask(m, 0.3, 0.6),
        lambda m, i: grow_mask(m, 3),
        lambda m, i: shrink_mask(m, 2),
        lambda m, i: fill_holes(m, 60),
        lambda m, i: remove_islands(m, 30),
        lambda m, i: feather_mask(m, 1.5),
        lambda m, i: guided_filter(m, i, 3, 1e-3, "color"),
        lambda m, i: guided_filter(m, i, 3, 1e-3, "gray"),
    ]
    for op in ops:
        batched = op(masks, images)
        singles = torch.cat([op(masks[k:k + 1], images[k:k + 1]) for k in range(3)])
        assert torch.equal(batched, singles)


def test_refine_chain_applies_steps_in_order():
    m = ring_with_hole()
    m[0, 30 - 3:30, 0:3] = 1  # a 9-pixel island in the corner
    cfg = RefineConfig(island_min_area=10, fill_holes=True, hole_max_area=60, grow_pixels=-2)
    expected = shrink_mask(fill_holes(remove_islands(m, 10), 60), 2)
    assert torch.equal(refine_mask(m, cfg), expected)
    assert torch.equal(expected, box(30, 30, 7, 23, 7, 23)[None])
    with pytest.raises(ValueError, match="needs the image"):
        refine_mask(m, RefineConfig(guided_radius=2))


def test_float64_and_float16_keep_their_dtype():
    m = disk(20, 20, 10, 10, 6)[None]
    image = m[..., None].expand(1, 20, 20, 3)
    for dtype in (torch.float16, torch.float64):
        out = guided_filter(m.to(dtype), image.to(dtype), radius=2)
        assert out.dtype == dtype
        assert (out.float() - guided_filter(m, image, radius=2)).abs().max() < 2e-3
        assert grow_mask(m.to(dtype), 2).dtype == dtype
        assert fill_holes(m.to(dtype)).dtype == dtype
