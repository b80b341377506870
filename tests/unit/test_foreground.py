"""Foreground colour estimation against pymatting and the published blur-fusion code.

Tolerances (stated, measured on these inputs; see the module docstring of pdfnet_core.ops.foreground):
* multi-level, sweep="raster" vs pymatting.estimate_foreground_ml: max abs difference < 1e-5
  (measured ~1e-6: float32 rounding only).
* multi-level, sweep="red_black" (the default) vs pymatting: mean abs < 0.01, max abs < 0.25
  (measured mean ~0.003-0.007, max ~0.05-0.15). Only the update order differs; with 2 iterations
  per large level neither order has converged. Given enough iterations both reach the same solution
  (checked below: < 5e-3 after 300).
* multi-level in tiles (MultiLevelConfig.tile_size) vs whole levels (tile_size=0): max abs < 1e-6
  (measured 0: the halo makes every tile's arithmetic the whole level's; the bound leaves room for
  a vector kernel rounding a tile's edge columns differently).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pdfnet_core.ops.foreground import (
    BlurFusionConfig,
    MultiLevelConfig,
    estimate_foreground,
    estimate_foreground_blur_fusion,
    estimate_foreground_ml,
)


def scene(h: int = 48, w: int = 64, seed: int = 0):
    """Smooth colourful F and B, and a soft alpha with wavy edges; I = a*F + (1-a)*B (float32)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    fg = np.stack([0.5 + 0.4 * np.sin(xx / 7 + c + seed) * np.cos(yy / 9) for c in range(3)], -1)
    bg = np.stack([0.5 + 0.4 * np.cos(xx / 11 + 2 * c) * np.sin(yy / 5 + c + seed) for c in range(3)], -1)
    r = np.hypot(yy - h / 2, xx - w / 2)
    angle = np.arctan2(yy - h / 2, xx - w / 2)
    alpha = np.clip((min(h, w) * 0.35 - r) / 6 + 0.5 + 0.3 * np.sin(angle * (7 + seed)), 0, 1)
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    return image.astype(np.float32), alpha.astype(np.float32), fg.astype(np.float32)


def as_batch(*arrays):
    return [torch.from_numpy(a)[None] for a in arrays]


# ------------------------------------------------------------------ multi-level vs pymatting


@pytest.fixture(scope="module")
def pymatting():
    return pytest.importorskip("pymatting")


@pytest.mark.parametrize("h,w", [(48, 64), (37, 29)])
def test_raster_sweep_equals_pymatting(pymatting, h, w):
    image, alpha, _ = scene(h, w)
    ref_f, ref_b = pymatting.estimate_foreground_ml(image, alpha, return_background=True)
    out = estimate_foreground_ml(*as_batch(image, alpha), MultiLevelConfig(sweep="raster"))
    assert np.abs(out.foreground[0].numpy() - ref_f).max() < 1e-5
    assert np.abs(out.background[0].numpy() - ref_b).max() < 1e-5


def test_default_red_black_within_stated_tolerance_of_pymatting(pymatting):
    image, alpha, _ = scene()
    ref_f, ref_b = pymatting.estimate_foreground_ml(image, alpha, return_background=True)
    out = estimate_foreground_ml(*as_batch(image, alpha))
    for ours, ref in ((out.foreground[0].numpy(), ref_f), (out.background[0].numpy(), ref_b)):
        diff = np.abs(ours - ref)
        assert diff.mean() < 0.01
        assert diff.max() < 0.25


def test_converged_solutions_agree_with_pymatting(pymatting):
    image, alpha, _ = scene(32, 40)
    ref = pymatting.estimate_foreground_ml(image, alpha, n_small_iterations=300, n_big_iterations=300)
    cfg = MultiLevelConfig(n_small_iterations=300, n_big_iterations=300)
    out = estimate_foreground_ml(*as_batch(image, alpha), cfg).foreground[0].numpy()
    assert np.abs(out - ref).max() < 5e-3


def test_non_default_parameters_follow_pymatting(pymatting):
    image, alpha, _ = scene(30, 44, seed=1)
    kwargs = dict(regularization=1e-3, n_small_iterations=4, n_big_iterations=3, small_size=8, gradient_weight=0.5)
    ref = pymatting.estimate_foreground_ml(image, alpha, **kwargs)
    out = estimate_foreground_ml(*as_batch(image, alpha), MultiLevelConfig(sweep="raster", **kwargs))
    assert np.abs(out.foreground[0].numpy() - ref).max() < 1e-5


# ------------------------------------------------------------------ blur-fusion vs the published code


def blur_fusion_reference(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Forte & Pitié's published numpy code, with cv2.blur (reflect-101) as scipy's uniform_filter."""
    ndimage = pytest.importorskip("scipy.ndimage")

    def blur(x, r):
        return ndimage.uniform_filter(x, size=(r, r) + (1,) * (x.ndim - 2), mode="mirror")

    def one_pass(image, F, B, alpha, r):
        blurred_alpha = blur(alpha, r)
        blurred_FA = blur(F * alpha, r)
        blurred_F = blurred_FA / (blurred_alpha + 1e-5)
        blurred_B1A = blur(B * (1 - alpha), r)
        blurred_B = blurred_B1A / ((1 - blurred_alpha) + 1e-5)
        F = blurred_F + alpha * (image - alpha * blurred_F - (1 - alpha) * blurred_B)
        return np.clip(F, 0, 1), blurred_B

    a = alpha[..., None].astype(np.float64)
    image = image.astype(np.float64)
    F, blur_B = one_pass(image, image, image, a, 90)
    return one_pass(image, F, blur_B, a, 6)[0]


@pytest.mark.parametrize("h,w", [(48, 64), (120, 100)])
def test_blur_fusion_matches_published_code(h, w):
    image, alpha, _ = scene(h, w)
    ref = blur_fusion_reference(image, alpha)
    out64 = estimate_foreground_blur_fusion(*as_batch(image.astype(np.float64), alpha.astype(np.float64)))
    assert np.abs(out64.foreground[0].numpy() - ref).max() < 1e-9
    out32 = estimate_foreground_blur_fusion(*as_batch(image, alpha))
    assert out32.foreground.dtype == torch.float32
    assert np.abs(out32.foreground[0].numpy() - ref).max() < 1e-4


def test_blur_fusion_keeps_opaque_pixels():
    image, alpha, _ = scene()
    out = estimate_foreground_blur_fusion(*as_batch(image, alpha)).foreground[0].numpy()
    opaque = alpha == 1
    assert opaque.sum() > 100
    assert np.abs(out[opaque] - image[opaque]).max() < 1e-5


# ------------------------------------------------------------------ both methods


def spill_scene():
    """Pure red foreground over pure green, soft edge: the raw image's edge is greenish."""
    h, w = 40, 60
    xx = np.arange(w, dtype=np.float32)[None, :].repeat(h, 0)
    alpha = np.clip((xx - 20) / 20, 0, 1).astype(np.float32)  # 0..1 over 20 px
    fg = np.zeros((h, w, 3), np.float32)
    fg[..., 0] = 1.0
    bg = np.zeros((h, w, 3), np.float32)
    bg[..., 1] = 1.0
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    return image, alpha, fg


@pytest.mark.parametrize("method,left", [("multilevel", 0.01), ("blur_fusion", 0.2)])
def test_spill_is_removed(method, left):
    # measured: multilevel leaves ~1e-7 of the raw edge error here, blur-fusion (approximate) ~14%
    image, alpha, fg = spill_scene()
    out = estimate_foreground(*as_batch(image, alpha), method=method).foreground[0].numpy()
    edge = (alpha > 0.1) & (alpha < 0.9)
    raw_error = np.abs(image[edge] - fg[edge]).mean()
    est_error = np.abs(out[edge] - fg[edge]).mean()
    assert raw_error > 0.3
    assert est_error < left * raw_error


@pytest.mark.parametrize("method", ["multilevel", "blur_fusion"])
def test_batch_of_three_equals_three_singles(method):
    scenes = [scene(40, 52, seed=s) for s in range(3)]
    images = torch.stack([torch.from_numpy(s[0]) for s in scenes])
    alphas = torch.stack([torch.from_numpy(s[1]) for s in scenes])
    batched = estimate_foreground(images, alphas, method=method)
    for k in range(3):
        single = estimate_foreground(images[k:k + 1], alphas[k:k + 1], method=method)
        assert torch.equal(batched.foreground[k], single.foreground[0])
        assert torch.equal(batched.background[k], single.background[0])


def test_raster_and_red_black_batch_the_same_way():
    scenes = [scene(20, 24, seed=s) for s in range(2)]
    images = torch.stack([torch.from_numpy(s[0]) for s in scenes])
    alphas = torch.stack([torch.from_numpy(s[1]) for s in scenes])
    batched = estimate_foreground_ml(images, alphas, MultiLevelConfig(sweep="raster")).foreground
    single = estimate_foreground_ml(images[1:], alphas[1:], MultiLevelConfig(sweep="raster")).foreground
    assert torch.equal(batched[1], single[0])


@pytest.mark.parametrize("tile", [7, 24])
def test_tiles_give_the_whole_level_result(tile):
    # odd sizes, a batch of two, tiles smaller than the halo (4 on big levels, 20 on small ones)
    scenes = [scene(45, 61, seed=s) for s in range(2)]
    images = torch.stack([torch.from_numpy(s[0]) for s in scenes])
    alphas = torch.stack([torch.from_numpy(s[1]) for s in scenes])
    whole = estimate_foreground_ml(images, alphas, MultiLevelConfig(tile_size=0))
    tiled = estimate_foreground_ml(images, alphas, MultiLevelConfig(tile_size=tile))
    assert (tiled.foreground - whole.foreground).abs().max() < 1e-6
    assert (tiled.background - whole.background).abs().max() < 1e-6
    more = MultiLevelConfig(tile_size=tile, n_big_iterations=5, small_size=8)  # halo follows n_iter
    assert (estimate_foreground_ml(images, alphas, more).foreground
            - estimate_foreground_ml(images, alphas, MultiLevelConfig(tile_size=0, n_big_iterations=5,
                                                                      small_size=8)).foreground).abs().max() < 1e-6


def test_inputs_are_not_changed():
    image, alpha, _ = scene(40, 52)
    img, a = as_batch(image, alpha)
    a = a * 1.2 - 0.1  # out of 0..1: clamped tile by tile, never in the caller's tensor
    before = img.clone(), a.clone()
    for tile in (0, 16):
        estimate_foreground_ml(img, a, MultiLevelConfig(tile_size=tile))
        assert torch.equal(img, before[0]) and torch.equal(a, before[1])


def test_dtypes_tiny_images_and_errors():
    image, alpha, _ = scene(16, 16)
    i16, a16 = (t.half() for t in as_batch(image, alpha))
    out = estimate_foreground_ml(i16, a16)
    assert out.foreground.dtype == torch.float16 and out.foreground.shape == (1, 16, 16, 3)
    one = estimate_foreground_ml(torch.full((1, 1, 1, 3), 0.5), torch.ones(1, 1, 1))  # pymatting fails here
    assert one.foreground.shape == (1, 1, 1, 3) and torch.isfinite(one.foreground).all()
    assert estimate_foreground_blur_fusion(torch.rand(2, 3, 2, 3), torch.rand(2, 3, 2)).foreground.shape == (2, 3, 2, 3)
    bad = torch.from_numpy(alpha)[None].clone()
    bad[0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="alpha contains NaN"):
        estimate_foreground(torch.from_numpy(image)[None], bad)
    with pytest.raises(ValueError, match=r"alpha is 15x16 \(WxH\) but image is 16x16"):
        estimate_foreground(torch.rand(1, 16, 16, 3), torch.rand(1, 16, 15))
    with pytest.raises(ValueError, match="alpha has 2 items and image has 1: pass one image per item of alpha"):
        estimate_foreground(torch.rand(1, 16, 16, 3), torch.rand(2, 16, 16))
    with pytest.raises(ValueError, match="method"):
        estimate_foreground(torch.rand(1, 4, 4, 3), torch.rand(1, 4, 4), method="closed_form")
    with pytest.raises(ValueError, match="sweep"):
        estimate_foreground_ml(torch.rand(1, 4, 4, 3), torch.rand(1, 4, 4), MultiLevelConfig(sweep="zigzag"))
    with pytest.raises(ValueError, match="tile_size"):
        estimate_foreground_ml(torch.rand(1, 4, 4, 3), torch.rand(1, 4, 4), MultiLevelConfig(tile_size=-1))
    with pytest.raises(ValueError, match="sizes"):
        estimate_foreground_blur_fusion(torch.rand(1, 4, 4, 3), torch.rand(1, 4, 4), BlurFusionConfig(sizes=()))
