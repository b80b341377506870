"""Any resolution the model file supports (#25 item 4): non-square network canvases, "auto" as the
file's own size (BiRefNet_dynamic near the image's size, BiRefNet_lite-2K at 2560x1440), limits read
off the family specs, PDFNet unchanged by default.  Stand-in segmenters record what the network is
given; one real (synthetic Swin-T) BiRefNet checks that the loader records its file's facts."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from pdfnet_core import InputError, LoadedModel, SegmentOptions, family, load_birefnet, lookup, segment
from pdfnet_core.cli import _cutout_config, _parser
from pdfnet_core.cli import main as cli_main
from pdfnet_core.pipeline import Placement, pad_placement, squash_placement
from pdfnet_core.segment_options import AUTO_SIZE
from pdfnet_core.weights import save_safetensors
from synthetic_birefnet import synthetic_state_dict

BIREFNET = family("birefnet")
PDFNET = family("pdfnet")


def _canvas(filename: str):
    return BIREFNET.entry_canvas(lookup(filename))


# --------------------------------------------------------------------------------------------
# placements on a non-square canvas


@pytest.mark.parametrize("place", [squash_placement, pad_placement])
@pytest.mark.parametrize("height, width", [(300, 200), (120, 500)])
def test_a_non_square_placement_round_trips_to_the_image_size(place, height, width):
    ramp = torch.linspace(0, 1, width).expand(1, 1, height, width).contiguous()
    p = place(height, width, (1440, 2560))
    net = p.to_network(ramp, "constant")
    assert net.shape[-2:] == (1440, 2560)
    back = p.from_network(net, height, width)
    assert back.shape[-2:] == (height, width)
    # there and back through bilinear resizes: the ramp comes back within one source step
    assert (back - ramp).abs().max() < 1.5 / width


def test_pad_keeps_the_aspect_on_a_non_square_canvas_and_square_sizes_stay_as_they_were():
    # a portrait 300x200 on 1440x2560: scaled to fill the height, centred across
    assert pad_placement(300, 200, (1440, 2560)) == Placement((1440, 2560), 1440, 960, 0, 800)
    assert squash_placement(300, 200, (1440, 2560)).canvas_hw == (1440, 2560)
    assert pad_placement(200, 400, 256) == Placement(256, 128, 256, 64, 0)   # an int side: as before


# --------------------------------------------------------------------------------------------
# what each known file runs at


def test_a_dynamic_file_runs_near_the_images_own_size_in_multiples_of_32():
    canvas = _canvas("BiRefNet_dynamic.safetensors")
    assert canvas.dynamic == (256, 2304) and canvas.max_side == 2304
    assert canvas.network_hw(750, 1000) == (736, 992)          # its own size, to multiples of 32
    assert canvas.network_hw(3000, 4000) == (1728, 2304)       # over 2304: scaled down, aspect kept
    assert canvas.network_hw(80, 100) == (256, 320)            # under 256: scaled up, aspect kept
    assert canvas.network_hw(100, 3000) == (256, 2304)         # both limits: each side clamped
    assert canvas.network_hw(750, 1000, 512) == (512, 512)     # an explicit size is square, as before
    assert _canvas("BiRefNet_dynamic-matting.safetensors").dynamic == (256, 2304)


def test_lite_2k_runs_at_2560x1440_in_either_orientation_and_others_at_their_training_size():
    lite = _canvas("BiRefNet_lite-2K.safetensors")
    assert lite.network_hw(1080, 1920) == lite.network_hw(1920, 1080) == (1440, 2560)
    assert lite.max_side == 2560
    assert _canvas("BiRefNet_HR.safetensors").network_hw(500, 700) == (2048, 2048)
    assert _canvas("BiRefNet.safetensors").network_hw(500, 700) == (1024, 1024)
    assert PDFNET.canvas().network_hw(500, 700) == (1024, 1024)


def test_limits_come_from_the_specs_and_files():
    assert BIREFNET.largest_side() == 2560 and PDFNET.largest_side() == 2048
    assert _canvas("BiRefNet.safetensors").max_side == PDFNET.canvas().max_side == 2048
    assert _canvas("BiRefNet.safetensors").problem(2048) is None
    problem = _canvas("BiRefNet.safetensors").problem(2560)
    assert "2560" in problem and "supports" in problem and "at most 2048" in problem
    assert _canvas("BiRefNet_lite-2K.safetensors").problem(2560) is None
    assert "at most 2304" in _canvas("BiRefNet_dynamic.safetensors").problem(2336)
    # memory estimates see the largest input: TTA's largest scale of the non-square canvas
    tta = SegmentOptions(size=AUTO_SIZE, tta=True)
    assert tta.network_hw(_canvas("BiRefNet_lite-2K.safetensors")) == (1792, 3200)
    with pytest.raises(ValueError, match="auto"):
        tta.network_side()


def test_size_must_be_auto_or_a_multiple_of_32():
    assert SegmentOptions(size=0).validate().size == AUTO_SIZE
    assert SegmentOptions().size == AUTO_SIZE   # the default of the library, the CLI and the node
    with pytest.raises(ValueError, match="multiple of 32"):
        SegmentOptions(size=100).validate()


# --------------------------------------------------------------------------------------------
# segment() with stand-in segmenters that record their input


class _Net(nn.Module):
    def __init__(self, train_hw=(1024, 1024), dynamic_sides=None):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.train_hw, self.dynamic_sides = train_hw, dynamic_sides


def _recording(spec):
    seen: list[tuple[int, ...]] = []

    def run(model, image, depth):
        seen.append(tuple(image.shape))
        if depth is not None:
            assert depth.shape[-2:] == image.shape[-2:]
        return image[:, :1] * 4   # logits that follow the image, so the mask has its shape

    return dataclasses.replace(spec, segment=run, variant_of=lambda m: None, describe=None), seen


def _image(h, w):
    x = torch.zeros(1, h, w, 3)
    x[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
    return x


def test_segment_runs_lite_2k_facts_at_2560x1440_and_returns_source_sizes():
    spec, seen = _recording(BIREFNET)
    net = LoadedModel(_Net(train_hw=(1440, 2560)), spec)
    masks = segment([_image(90, 60)[0], _image(60, 90)[0]], None, net, size=AUTO_SIZE, second_pass=False,
                    batch_size=2)
    assert seen == [(2, 3, 1440, 2560)]
    assert [tuple(m.shape) for m in masks] == [(90, 60), (60, 90)]
    assert masks[0][45, 30] > 0.9 > 0.6 > masks[0][2, 2]       # the subject is where the image has it


def test_segment_runs_a_dynamic_file_at_each_images_own_size():
    spec, seen = _recording(BIREFNET)
    net = LoadedModel(_Net(dynamic_sides=(256, 2304)), spec)
    images = [_image(300, 400)[0], _image(290, 410)[0], _image(300, 400)[0]]
    masks = segment(images, None, net, size=AUTO_SIZE, second_pass=False, batch_size=3)
    # one batch: images of one network size run together, the other alone, each back at its size
    assert sorted(seen) == [(1, 3, 288, 416), (2, 3, 288, 384)]
    assert [tuple(m.shape) for m in masks] == [(300, 400), (290, 410), (300, 400)]
    seen.clear()
    segment(_image(300, 400), None, net, size=512, second_pass=False)
    assert seen == [(1, 3, 512, 512)]                           # an explicit size: square, as before
    seen.clear()
    segment(_image(300, 400), None, net, size=AUTO_SIZE, tta=True, second_pass=False)
    assert seen == [(1, 3, 224, 288)] * 2 + [(1, 3, 288, 384)] * 2 + [(1, 3, 352, 480)] * 2   # TTA scales each side


def test_over_limit_requests_fail_clearly_before_any_forward_pass():
    spec, seen = _recording(BIREFNET)
    with pytest.raises(InputError, match=r"network size 2560 is over the 2048 .*at most 2048"):
        segment(_image(64, 64), None, LoadedModel(_Net(), spec), size=2560)
    with pytest.raises(InputError, match=r"2336 is over the 2304"):
        segment(_image(64, 64), None, LoadedModel(_Net(dynamic_sides=(256, 2304)), spec), size=2336)
    assert seen == []


def test_pdfnet_is_unchanged_by_default_and_auto_is_its_training_size():
    spec, seen = _recording(PDFNET)
    net = LoadedModel(_Net(), spec)
    depth = torch.rand(1, 300, 400)
    for size in (SegmentOptions().size, AUTO_SIZE):
        segment(_image(300, 400), depth, net, size=size, second_pass=False)
    assert seen == [(1, 3, 1024, 1024)] * 2
    with pytest.raises(InputError, match="over the 2048"):
        segment(_image(300, 400), depth, net, size=2080)
    # refused before the default depth model would be looked for (there is none here)
    with pytest.raises(InputError, match="over the 2048"):
        segment(_image(300, 400), None, net, size=2080)


# --------------------------------------------------------------------------------------------
# a real BiRefNet (synthetic Swin-T weights) under known file names


def test_the_loader_records_a_known_files_facts(reference_dir, tmp_path):
    # Swin-T weights under the dynamic file's name: the facts come from the name's registry entry
    path = tmp_path / "BiRefNet_dynamic.safetensors"
    save_safetensors(synthetic_state_dict(reference_dir, "swin_v1_t"), path, "fp16")
    dynamic = LoadedModel(load_birefnet(path), BIREFNET)
    assert dynamic.module.dynamic_sides == (256, 2304) and dynamic.canvas.network_hw(200, 300) == (256, 384)
    assert dynamic.canvas.max_side == 2304


# --------------------------------------------------------------------------------------------
# the command line


@pytest.mark.parametrize("model, size, message", [
    ("BiRefNet.safetensors", "2560", "BiRefNet.safetensors: network size 2560 is over the 2048"),
    ("BiRefNet_dynamic.safetensors", "2336", "over the 2304"),
    ("pdfnet", "2080", "over the 2048"),
    ("birefnet", "abc", "--size must be a number or auto"),
    ("birefnet", "100", "multiple of 32"),
])
def test_cli_size_over_the_files_limit_is_a_usage_error(tmp_path, capsys, model, size, message):
    (tmp_path / "in").mkdir()
    argv = ["cutout", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--model", model, "--size", size,
            "--device", "cpu"]
    try:
        status = cli_main(argv)
    except SystemExit as exc:   # argparse's own errors
        status = exc.code
    assert status == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_takes_auto_and_the_largest_size_a_file_supports(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for size, expect in (("auto", AUTO_SIZE), ("2560", 2560)):
        args = _parser().parse_args(["cutout", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--model",
                                     "BiRefNet_lite-2K.safetensors", "--size", size, "--device", "cpu"])
        assert _cutout_config(args).segment.size == expect
