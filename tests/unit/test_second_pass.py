"""Subjects at full resolution (#27): the second pass on the subject's crop, region guidance, and
the component filters, with a colour-key stand-in network whose only limit is its input size."""
from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import torch
from torch import nn

import pdfnet_core
from pdfnet_core import LoadedModel, family
from pdfnet_core.ops.checks import InputError
from pdfnet_core.ops.refine import RefineConfig, keep_central_component, keep_largest_component, refine_mask
from colour_key import ColourKey
from pdfnet_core.ops.subject import (Box, blend_weights, margin_pixels, merge_crop, paste_crop, region_box,
                                     subject_box, subject_gain, with_margin)

SUBJECT = (0.9, 0.1, 0.1)        # the subject's own colour
BACKGROUND = (0.35, 0.45, 0.55)


class DepthProbe(nn.Module):
    """A depth model that records what it sees (the rows of the image as depth)."""

    config = types.SimpleNamespace(variant="vits")

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return x[:, 0] * self.w


PDFNET = dataclasses.replace(family("pdfnet"), module_type=ColourKey)
BIREFNET = dataclasses.replace(family("birefnet"), module_type=ColourKey)
DEPTH = dataclasses.replace(family("depth_anything"), module_type=DepthProbe)


def photo(h: int, w: int, boxes=(), lines=()) -> tuple[torch.Tensor, torch.Tensor]:
    """A [H,W,3] photo and its true [H,W] mask: filled boxes (top, left, height, width) and
    1-pixel lines (row, left, length) in the subject's colour."""
    truth = torch.zeros(h, w)
    for t, l, bh, bw in boxes:
        truth[t:t + bh, l:l + bw] = 1
    for r, l, n in lines:
        truth[r, l:l + n] = 1
    img = torch.tensor(BACKGROUND).expand(h, w, 3) * (1 - truth[..., None]) + torch.tensor(SUBJECT) * truth[..., None]
    return img.contiguous(), truth


def pdfnet() -> LoadedModel:
    return LoadedModel(ColourKey(), PDFNET)


def given_depth(h: int, w: int) -> torch.Tensor:
    return torch.linspace(0, 1, h)[:, None].expand(h, w).contiguous()


# --------------------------------------------------------------------------------------------
# geometry


def test_subject_box_margin_and_gain():
    mask = torch.zeros(100, 200)
    assert subject_box(mask) is None
    mask[10:20, 30:70] = 0.8
    mask[50, 199] = 0.4                                     # below the threshold: not the subject
    box = subject_box(mask)
    assert box == Box(10, 30, 10, 40)
    assert margin_pixels(box) == 16                         # at least MIN_MARGIN
    assert margin_pixels(Box(0, 0, 10, 1000)) == 100        # a tenth of the longer side
    assert with_margin(box, 100, 200, 16) == Box(0, 14, 36, 72)   # clipped at the top
    # a 4000x6000 photo at 1024 squash: the subject's crop gives it (6000*4000)/(crop area) times the pixels
    sub = Box(1000, 1000, 800, 1200)
    crop = with_margin(sub, 4000, 6000, margin_pixels(sub))
    gain = subject_gain(sub, (1024 / 4000, 1024 / 6000), (1024 / crop.height, 1024 / crop.width))
    assert gain == pytest.approx(4000 * 6000 / crop.area)
    # upsampling adds no detail: a photo smaller than the network gains nothing
    assert subject_gain(Box(0, 0, 10, 10), (2.0, 2.0), (8.0, 8.0)) == 1.0


def test_merge_is_seamless_and_exact_outside_the_crop():
    frame = torch.rand(60, 80)
    crop = Box(10, 0, 30, 50)                               # touches the left border
    inner = torch.rand(30, 50)
    out = merge_crop(frame, inner, crop, band=5)
    outside = torch.ones(60, 80, dtype=torch.bool)
    outside[crop.slices()] = False
    assert torch.equal(out[outside], frame[outside])
    assert torch.equal(out[15:35, :45], inner[5:25, :45])   # past the band: the crop's mask itself
    w = blend_weights(crop, 60, 80, 5)
    assert w[5:25, 0].min() == 1 and w[0, 25] == pytest.approx(0.1) and w[15, 49] == pytest.approx(0.1)
    # a constant crop over a constant frame: across each inner edge the step is at most a tenth
    flat = merge_crop(torch.zeros(60, 80), torch.ones(30, 50), crop, band=5)
    assert flat[10, 25] - flat[9, 25] <= 0.1 + 1e-6 and flat[25, 49] - flat[25, 50] <= 0.1 + 1e-6
    assert torch.all(flat[10:15, 25].diff() > 0)            # a ramp, not a step
    with pytest.raises(ValueError, match="crop's mask"):
        merge_crop(frame, inner[:-1], crop, 5)


def test_region_boxes_from_every_form():
    assert region_box((5, 6, 10, 20), 100, 100) == Box(6, 5, 20, 10)
    assert region_box("5, 6, 10, 20", 100, 100) == Box(6, 5, 20, 10)
    assert region_box({"x": 90, "y": 0, "width": 50, "height": 5}, 100, 100) == Box(0, 90, 5, 10)  # clipped
    m = np.zeros((40, 50), np.float32)
    m[3:9, 4:7] = 1
    assert region_box(m, 40, 50) == Box(3, 4, 6, 3)
    for bad, match in [("a,b", "not a box"), ((1, 2, 3), "got 3 values"), ((0, 0, 0, 5), "empty"), ((200, 0, 5, 5), "outside"),
                       (np.zeros((40, 50)), "mask is empty"), (np.ones((10, 10)), "10x10 but the image is 40x50")]:
        with pytest.raises(InputError, match=match):
            region_box(bad, 40, 50)
    assert torch.equal(paste_crop(torch.ones(2, 3), Box(1, 1, 2, 3), 4, 5).sum(1), torch.tensor([0., 3, 3, 0]))


# --------------------------------------------------------------------------------------------
# the second pass in segment()


def _error(mask: torch.Tensor, truth: torch.Tensor) -> float:
    return float((mask - truth).abs().sum())


def test_a_small_subject_gets_a_second_pass_on_its_crop_with_depth_from_the_crop():
    img, truth = photo(512, 768, boxes=[(200, 300, 60, 90)], lines=[(230, 200, 100), (300, 310, 80)])
    net, depth = pdfnet(), LoadedModel(DepthProbe(), DEPTH)
    one = pdfnet_core.segment(img, model=net, depth_model=depth, size=64, second_pass=False)[0]
    assert net.module.calls == [(1, 3, 64, 64)] and len(depth.module.calls) == 1
    two = pdfnet_core.segment(img, model=net, depth_model=depth, size=64)[0]
    assert len(net.module.calls) == 3 and all(c == (1, 3, 64, 64) for c in net.module.calls)
    assert len(depth.module.calls) == 3
    # the depth model ran again on the crop (aspect of the crop, not of the photo)
    crop_depth = depth.module.calls[-1]
    assert crop_depth[-2:] != depth.module.calls[0][-2:]
    assert _error(two, truth) < 0.6 * _error(one, truth)
    assert two.shape == (512, 768)


def test_a_subject_that_fills_the_frame_costs_no_second_forward():
    img, _ = photo(512, 512, boxes=[(20, 20, 470, 470)])
    net = pdfnet()
    pdfnet_core.segment(img, given_depth(512, 512), net, size=64)
    assert len(net.module.calls) == 1
    # nor does a photo no larger than the network, however small its subject
    small, _ = photo(64, 64, boxes=[(30, 30, 4, 4)])
    pdfnet_core.segment(small, given_depth(64, 64), net, size=64)
    assert len(net.module.calls) == 2
    # nor an empty first mask
    pdfnet_core.segment(photo(512, 512)[0], given_depth(512, 512), net, size=64)
    assert len(net.module.calls) == 3


@pytest.mark.parametrize("spec", [PDFNET, BIREFNET], ids=["pdfnet", "birefnet"])
def test_second_passes_of_a_batch_run_together_and_progress_counts_them(spec):
    shots = [photo(400, 400, boxes=[(50, 60, 40, 30)])[0], photo(400, 400, boxes=[(0, 0, 400, 400)])[0],
             photo(400, 400, boxes=[(300, 200, 30, 50)])[0]]
    net = LoadedModel(ColourKey(), spec)
    calls: list[tuple[int, int]] = []
    depth = [given_depth(400, 400)] * 3 if spec is PDFNET else None
    out = pdfnet_core.segment(torch.stack(shots), depth, net, size=64, batch_size=2,
                              progress=lambda d, t: calls.append((d, t)))
    # first pass: batches of 2 + 1; second pass: the two small subjects in one batch of 2
    assert [c[0] for c in net.module.calls] == [2, 1, 2]
    assert calls == [(2, 3), (3, 3), (5, 5)]
    alone = [pdfnet_core.segment(s, None if depth is None else depth[0], LoadedModel(ColourKey(), spec), size=64)[0]
             for s in shots]
    for a, b in zip(out, alone):
        assert (a - b).abs().max() <= 1e-5


def test_residency_comes_before_placement_in_the_second_pass():
    """before_run changes the model's dtype on every call: inputs made for the old placement would fail."""
    img, truth = photo(300, 300, boxes=[(100, 100, 40, 40)])
    net = pdfnet()
    dtypes = iter([torch.bfloat16, torch.float32] * 4)
    seen: list[torch.dtype] = []

    def before_run(module, memory):
        seen.append(next(dtypes))
        module.to(seen[-1])

    mask = pdfnet_core.segment(img, given_depth(300, 300), net, size=64, before_run=before_run)[0]
    assert seen == [torch.bfloat16, torch.float32] and len(net.module.calls) == 2
    assert _error(mask, truth) < 0.02 * truth.sum()


def test_pad_mode_and_tta_take_the_second_pass_too():
    img, truth = photo(256, 512, boxes=[(100, 100, 30, 60)], lines=[(150, 100, 200)])
    for opts in (dict(resize="pad"), dict(tta=True, tta_scales=(1.0,))):
        net = pdfnet()
        one = pdfnet_core.segment(img, given_depth(256, 512), net, size=64, second_pass=False, **opts)[0]
        two = pdfnet_core.segment(img, given_depth(256, 512), net, size=64, **opts)[0]
        assert _error(two, truth) < _error(one, truth)


# --------------------------------------------------------------------------------------------
# region guidance


def test_a_region_keeps_one_subject_and_zero_outside():
    img, truth = photo(300, 400, boxes=[(40, 40, 60, 60), (150, 250, 80, 100)])
    right = torch.zeros(300, 400)
    right[150:230, 250:350] = 1
    net = pdfnet()
    for region in [(240, 140, 120, 100), "240,140,120,100", {"x": 240, "y": 140, "width": 120, "height": 100},
                   right]:
        mask = pdfnet_core.segment(img, given_depth(300, 400), net, size=64, region=region)[0]
        assert mask.shape == (300, 400)
        assert mask[:, :200].max() == 0                        # the other subject is gone
        assert _error(mask, truth * (torch.arange(400) >= 200)) < 0.05 * right.sum()
    # one region per image of a batch
    both = pdfnet_core.segment(torch.stack([img, img]), [given_depth(300, 400)] * 2, net, size=64,
                               region=[(0, 0, 150, 150), (240, 140, 120, 100)])
    assert both[0][:, 200:].max() == 0 and both[1][:, :200].max() == 0 and both[0][60, 60] > 0.9
    with pytest.raises(ValueError, match="2 images but 3 regions"):
        pdfnet_core.segment(torch.stack([img, img]), [given_depth(300, 400)] * 2, net, size=64,
                            region=[(0, 0, 5, 5)] * 3)


def test_a_region_crops_the_depth_prior_the_model_computes():
    img, _ = photo(300, 400, boxes=[(150, 250, 80, 100)])
    net, depth = pdfnet(), LoadedModel(DepthProbe(), DEPTH)
    pdfnet_core.segment(img, model=net, depth_model=depth, size=64, region=(240, 140, 120, 100), second_pass=False)
    assert len(depth.module.calls) == 1
    h, w = depth.module.calls[0][-2:]
    assert w / h == pytest.approx(120 / 100 * 1.0, rel=0.35)   # the crop's aspect, not the photo's 4:3


# --------------------------------------------------------------------------------------------
# component filters


def _blobs() -> torch.Tensor:
    m = torch.zeros(2, 50, 60)
    m[:, 2:12, 2:30] = 1          # largest, off-centre
    m[:, 22:30, 26:34] = 0.9      # small, central
    m[:, 40:45, 50:55] = 0.7
    m[1] = 0
    return m


def test_keep_largest_and_most_central_components():
    m = _blobs()
    largest = keep_largest_component(m)
    assert torch.equal(largest[0], m[0] * (torch.arange(50)[:, None] < 12))
    assert torch.equal(largest[1], m[1])                      # an empty mask stays empty
    central = keep_central_component(m)
    kept = torch.zeros(50, 60)
    kept[22:30, 26:34] = 0.9
    assert torch.equal(central[0], kept)
    config = RefineConfig(keep_component="largest")
    assert torch.equal(refine_mask(m, config), largest)
    assert torch.equal(refine_mask(m, RefineConfig(keep_component="central")), central)
    with pytest.raises(ValueError, match="keep_component"):
        refine_mask(m, RefineConfig(keep_component="front"))


# --------------------------------------------------------------------------------------------
# boundary tiles


def test_boundary_tiles_recover_thin_structure_of_a_very_large_subject():
    lines = [(r, 20, 60) for r in range(40, 480, 9)]            # 1-px strands left of the body
    img, truth = photo(512, 512, boxes=[(30, 80, 450, 400)], lines=lines)
    plain = pdfnet_core.segment(img, given_depth(512, 512), pdfnet(), size=64)[0]
    net = pdfnet()
    calls: list[tuple[int, int]] = []
    tiled = pdfnet_core.segment(img, given_depth(512, 512), net, size=64, boundary_tiles=True,
                                progress=lambda d, t: calls.append((d, t)))[0]
    tiles = len(net.module.calls) - 1
    assert tiles > 0 and all(c == (1, 3, 64, 64) for c in net.module.calls)
    assert tiles < (512 // 56 + 1) ** 2                          # only along the edge, not the whole photo
    assert calls[-1] == (1 + tiles, 1 + tiles)
    assert _error(tiled, truth) < 0.5 * _error(plain, truth)
    # a subject under twice the network side gets no tiles
    small = pdfnet()
    pdfnet_core.segment(img[:100, :100].contiguous(), given_depth(100, 100), small, size=64, boundary_tiles=True)
    assert len(small.module.calls) == 1


# --------------------------------------------------------------------------------------------
# the command line


def test_cli_second_pass_is_on_by_default_and_part_of_the_settings(tmp_path):
    from pdfnet_core.cli import _cutout_config, _parser

    def config(*flags):
        return _cutout_config(_parser().parse_args(["cutout", str(tmp_path), "--out", str(tmp_path / "o"), *flags]))

    default, off, tiles = config(), config("--no-second-pass"), config("--boundary-tiles")
    assert default.segment.second_pass and not default.segment.boundary_tiles
    assert not off.segment.second_pass and tiles.segment.boundary_tiles
    # outputs made with another setting are not taken as done
    assert len({default.settings_key(), off.settings_key(), tiles.settings_key()}) == 3
