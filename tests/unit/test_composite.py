"""Compositing identities, fit modes, RGBA and ComfyUI mask polarity."""
from __future__ import annotations

import pytest
import torch

from pdfnet_core.ops.composite import (
    FIT_MODES,
    composite_over_color,
    composite_over_image,
    fit_background,
    parse_color,
    premultiply,
    split_rgba,
    to_rgba,
    unpremultiply,
)
import pdfnet_core.ops.images
from pdfnet_core.ops.images import to_uint8
from nodes.adapters import foreground_to_loadimage_mask, loadimage_mask_to_foreground


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def soft_alpha(n: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    a = rand(n, h, w, seed=seed)
    a[:, :, : w // 3] = 0.0
    a[:, :, -(w // 3):] = 1.0
    return a


# ------------------------------------------------------------------ identities


def test_alpha_one_gives_foreground_and_zero_gives_background_exactly():
    fg, bg = rand(2, 9, 12, 3, seed=2), rand(2, 9, 12, 3, seed=3)
    a = soft_alpha(2, 9, 12)
    out = composite_over_image(fg, a, bg, fit="stretch")
    opaque, clear = a == 1, a == 0
    assert torch.equal(out[opaque], fg[opaque])
    assert torch.equal(out[clear], bg[clear])
    soft = (a > 0) & (a < 1)
    assert torch.allclose(out[soft], (fg * a[..., None] + bg * (1 - a[..., None]))[soft])
    # values where bg + a*(fg - bg) would not give fg back in float32
    tiny = torch.full((1, 2, 2, 3), 1e-9)
    assert torch.equal(composite_over_image(tiny, torch.ones(1, 2, 2), torch.full((1, 2, 2, 3), 0.7)), tiny)
    assert torch.equal(composite_over_color(tiny, torch.ones(1, 2, 2), (0.7, 0.7, 0.7)), tiny)
    over = composite_over_color(fg, a, "#3366CC")
    assert torch.equal(over[opaque], fg[opaque])
    color = torch.tensor([0x33, 0x66, 0xCC]) / 255.0
    assert torch.equal(over[clear], color.expand_as(over[clear]))


def test_premultiplied_is_foreground_times_alpha_and_equals_over_black():
    fg, a = rand(3, 8, 10, 3, seed=4), soft_alpha(3, 8, 10)
    pm = premultiply(fg, a)
    assert torch.equal(pm, fg * a[..., None])
    assert torch.equal(composite_over_color(fg, a, (0, 0, 0)), pm)
    assert torch.equal(composite_over_color(fg, a, "#000000"), pm)
    back = unpremultiply(pm, a)
    visible = a > 0.05
    assert (back[visible] - fg[visible]).abs().max() < 1e-5
    assert torch.equal(back[a == 0], torch.zeros_like(back[a == 0]))


def test_rgba_packing_round_trip():
    fg, a = rand(2, 5, 7, 3, seed=5), rand(2, 5, 7, seed=6)
    rgba = to_rgba(fg, a)
    assert rgba.shape == (2, 5, 7, 4)
    rgb, alpha = split_rgba(rgba)
    assert torch.equal(rgb, fg) and torch.equal(alpha, a)
    with pytest.raises(ValueError, match="rgba"):
        split_rgba(fg)


def test_parse_color_forms():
    assert parse_color("#FF8000") == (1.0, 128 / 255, 0.0)
    assert parse_color("ff8000") == parse_color("#FF8000") == parse_color((255, 128, 0))
    assert parse_color("#fff") == (1.0, 1.0, 1.0)
    assert parse_color((0.5, 0.25, 1.0)) == (0.5, 0.25, 1.0)
    for bad in ("#12345", "#GG0000", "red", (256, 0, 0), (0.5, 1.5, 0.0), (1, 2), (True, 0, 0)):
        with pytest.raises(ValueError, match="color"):
            parse_color(bad)


# ------------------------------------------------------------------ fit modes


def thirds(h: int, w: int) -> torch.Tensor:
    """[1,h,w,3]: left third red, middle green, right third blue (w divisible by 3)."""
    bg = torch.zeros(1, h, w, 3)
    t = w // 3
    bg[:, :, :t, 0] = 1
    bg[:, :, t:2 * t, 1] = 1
    bg[:, :, 2 * t:, 2] = 1
    return bg


def test_cover_crops_the_centre():
    bg = thirds(10, 30)
    out = fit_background(bg, 10, 10, "cover")
    assert torch.equal(out, bg[:, :, 10:20])


def test_contain_letterboxes_with_fill():
    bg = thirds(10, 30)
    out = fit_background(bg, 30, 30, "contain", fill="#808080")
    assert torch.equal(out[:, 10:20], bg)
    gray = torch.full((1, 10, 30, 3), 128 / 255)
    assert torch.equal(out[:, :10], gray) and torch.equal(out[:, 20:], gray)


def test_stretch_and_scaled_fits_have_the_target_size():
    bg = thirds(10, 30)
    for fit in FIT_MODES:
        assert fit_background(bg, 17, 23, fit).shape == (1, 17, 23, 3)
    assert torch.equal(fit_background(bg, 10, 30, "stretch"), bg)
    big = fit_background(torch.full((1, 5, 6, 3), 0.25), 40, 20, "cover")
    assert (big - 0.25).abs().max() < 1e-6
    # contain with upscaling: 10x30 into 60x60 -> 20x60 band in the middle
    up = fit_background(thirds(10, 30), 60, 60, "contain", fill=(1.0, 1.0, 1.0))
    assert torch.equal(up[:, :20], torch.ones(1, 20, 60, 3))
    assert torch.equal(up[:, 40:], torch.ones(1, 20, 60, 3))
    assert up[0, 30, 30, 1] == 1 and up[0, 30, 5, 0] == 1 and up[0, 30, 55, 2] == 1
    with pytest.raises(ValueError, match="fit"):
        fit_background(bg, 10, 10, "tile")


def test_background_sized_differently_is_fitted_before_compositing():
    fg, a = rand(1, 10, 10, 3, seed=7), torch.zeros(1, 10, 10)
    out = composite_over_image(fg, a, thirds(10, 30), fit="cover")
    assert torch.equal(out, thirds(10, 30)[:, :, 10:20])


# ------------------------------------------------------------------ batches and errors


def test_one_background_for_n_or_n_for_n():
    fg, a = rand(3, 6, 6, 3, seed=8), torch.zeros(3, 6, 6)
    one = rand(1, 6, 6, 3, seed=9)
    assert torch.equal(composite_over_image(fg, a, one, "stretch"), one.expand(3, -1, -1, -1))
    many = rand(3, 6, 6, 3, seed=10)
    assert torch.equal(composite_over_image(fg, a, many, "stretch"), many)
    with pytest.raises(ValueError, match=r"foreground has 3 images and background has 2"):
        composite_over_image(fg, a, rand(2, 6, 6, 3), "stretch")


def test_one_alpha_for_n_images_and_count_mismatch():
    fg = rand(3, 4, 4, 3, seed=11)
    out = composite_over_color(fg, torch.ones(1, 4, 4), "#FFFFFF")
    assert torch.equal(out, fg)
    with pytest.raises(ValueError, match=r"foreground has 3 items and alpha has 2"):
        composite_over_color(fg, torch.ones(2, 4, 4))


def test_size_mismatch_and_nan_are_clear_errors():
    with pytest.raises(ValueError, match=r"foreground is 8x6 \(WxH\) but alpha is 7x6"):
        composite_over_color(torch.zeros(1, 6, 8, 3), torch.zeros(1, 6, 7))
    bad = torch.zeros(1, 4, 4)
    bad[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="alpha contains NaN"):
        premultiply(torch.zeros(1, 4, 4, 3), bad)
    with pytest.raises(ValueError, match=r"background: expected a \[B,H,W,3\]"):
        composite_over_image(torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))


def test_batch_of_three_equals_three_singles():
    fg, bg, a = rand(3, 12, 16, 3, seed=12), rand(3, 20, 14, 3, seed=13), soft_alpha(3, 12, 16)
    for fit in FIT_MODES:
        batched = composite_over_image(fg, a, bg, fit, fill="#102030")
        singles = torch.cat([composite_over_image(fg[k:k + 1], a[k:k + 1], bg[k:k + 1], fit, "#102030")
                             for k in range(3)])
        assert torch.equal(batched, singles)


def test_dtype_is_kept():
    fg, a = rand(1, 4, 4, 3).half(), rand(1, 4, 4).half()
    assert composite_over_color(fg, a, "#FFFFFF").dtype == torch.float16
    assert composite_over_image(fg.double(), a, rand(1, 8, 8, 3)).dtype == torch.float64
    for fit in FIT_MODES:  # the resize runs in float32 for half (no CPU half kernel)
        bg = torch.full((1, 7, 5, 3), 0.5).half()
        out = composite_over_image(fg, torch.zeros(1, 4, 4).half(), bg, fit, fill=(0.5, 0.5, 0.5))
        assert out.dtype == torch.float16 and (out.float() - 0.5).abs().max() < 1e-3


# ------------------------------------------------------------------ polarity


def load_image_mask(rgba: torch.Tensor) -> torch.Tensor:
    """What ComfyUI's LoadImage returns as MASK for an RGBA file: 1 - alpha."""
    return 1.0 - rgba[..., 3]


def join_image_with_alpha(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What ComfyUI's JoinImageWithAlpha builds: RGBA with alpha = 1 - mask."""
    return torch.cat([image[..., :3], (1.0 - mask)[..., None]], -1)


def test_polarity_helpers_match_comfyui_semantics():
    # dyadic values, so 1 - (1 - x) is exact and equality is a fair test
    alpha = torch.randint(0, 257, (2, 5, 6), generator=torch.Generator().manual_seed(14)) / 256.0
    image = rand(2, 5, 6, 3)
    rgba = to_rgba(image, alpha)
    assert torch.equal(loadimage_mask_to_foreground(load_image_mask(rgba)), alpha)
    joined = join_image_with_alpha(image, foreground_to_loadimage_mask(alpha))
    assert torch.equal(joined, rgba)
    assert torch.equal(loadimage_mask_to_foreground(foreground_to_loadimage_mask(alpha)), alpha)
    assert torch.equal(foreground_to_loadimage_mask(torch.ones(1, 2, 2)), torch.zeros(1, 2, 2))
    soft = rand(1, 7, 7, seed=15)
    assert (loadimage_mask_to_foreground(foreground_to_loadimage_mask(soft)) - soft).abs().max() < 1e-7


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_uint8_encode_in_bands_equals_the_whole_image_formula(channels, dtype, monkeypatch):
    monkeypatch.setattr(pdfnet_core.ops.images, "UINT8_BAND_VALUES", 3 * 61 * channels)  # 3-row bands
    image = (rand(37, 61, channels) * 1.4 - 0.2).to(dtype)
    expected = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    out = to_uint8(image)
    assert out.flags.c_contiguous and out.dtype.name == "uint8"
    assert torch.equal(torch.from_numpy(out), expected[..., 0] if channels == 1 else expected)
    with pytest.raises(ValueError, match="to_uint8"):
        to_uint8(torch.rand(1, 4, 4, 3))
