"""segment(): any input type and size, squash/pad placement, TTA, batching, the automatic depth prior."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import pdfnet_core
import pdfnet_core.ops.images
from pdfnet_core.pipeline import Placement, pad_placement, squash_placement, tta_logits
from pdfnet_fixtures import case_dir, load
from synthetic_dam2 import key_shapes, synth_state_dict
from synthetic_pdfnet import synthetic_state_dict


@pytest.fixture(scope="module")
def model(reference_dir):
    return pdfnet_core.load_pdfnet(synthetic_state_dict(reference_dir))


@pytest.fixture(scope="module")
def depth_model(reference_dir):
    return pdfnet_core.load_depth_anything(synth_state_dict(key_shapes(reference_dir, "vits")))


@pytest.fixture(scope="module")
def case256(reference_dir):
    folder = case_dir(reference_dir, "case256")
    return np.load(folder / "image_u8.npy")[0], np.load(folder / "depth_u8.npy")[0]


def _scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 40, np.uint8)
    img[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = (200, 120, 60)
    return np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)


def test_squash_at_native_size_is_the_official_mask(model, case256, reference_dir):
    image, depth = case256
    expected = load(reference_dir, "case256", "logits")[0, 0].sigmoid()
    for img in (image, Image.fromarray(image), torch.from_numpy(image)[None].float() / 255):
        alpha = pdfnet_core.segment(img, depth, model=model, size=256)
        assert len(alpha) == 1 and alpha[0].shape == (256, 256) and alpha[0].dtype == torch.float32
        assert (alpha[0] - expected).abs().max() <= 1e-4
    # segment(model, images, depth) call form
    assert (pdfnet_core.segment(model, image, depth, size=256)[0] - expected).abs().max() <= 1e-4


def test_any_size_and_aspect_comes_back_at_source_size(model):
    images = [_scene(90, 170), _scene(200, 60, 1)]
    depths = [np.linspace(0, 1, 90 * 170).reshape(90, 170), np.ones((200, 60)) * np.arange(60)]
    for mode in ("squash", "pad"):
        out = pdfnet_core.segment(images, depths, model, size=64, resize=mode)
        assert [tuple(a.shape) for a in out] == [(90, 170), (200, 60)]
        assert all(0 <= a.min() and a.max() <= 1 for a in out)


def test_photo_sized_inputs_are_not_copied_or_changed():
    # read_image's layout (a [3,H,W] buffer seen as [H,W,3]) passes through as it is
    chw = torch.rand(3, 20, 30)
    assert pdfnet_core.ops.images.to_rgb_list(chw.permute(1, 2, 0)[None])[0].data_ptr() == chw.data_ptr()
    # slightly out of range: clamped in a copy, the caller's tensor stays as it was
    over = torch.rand(3, 20, 30) * 1.2 - 0.1
    before = over.clone()
    out = pdfnet_core.ops.images.to_rgb_list(over.permute(1, 2, 0))[0]
    assert torch.equal(over, before) and torch.equal(out, before.clamp(0, 1))
    # 8-bit arrays: converted straight to channels-first, the same values as float / 255
    arr = np.random.default_rng(0).integers(0, 256, (9, 7, 4), dtype=np.uint8)
    expected = torch.from_numpy(arr[..., :3].copy()).float().permute(2, 0, 1) / 255.0
    assert torch.equal(pdfnet_core.ops.images.to_rgb_list(arr)[0], expected)
    gray = torch.from_numpy(arr[..., 0].copy()).float().expand(3, 9, 7) / 255.0
    assert torch.equal(pdfnet_core.ops.images.to_rgb_list(arr[..., 0])[0], gray)
    with pytest.raises(ValueError, match="NaN or inf"):
        pdfnet_core.ops.images.to_rgb_list(torch.tensor([[[0.5, float("inf"), 0.2]]]))
    with pytest.raises(ValueError, match="is empty"):
        pdfnet_core.ops.images.to_rgb_list(np.zeros((0, 3, 3), np.uint8))


def test_depth_preprocess_in_bands_equals_one_resize(monkeypatch):
    import torch.nn.functional as F

    from pdfnet_core import depth as depth_module
    from pdfnet_core.ops.images import imagenet_normalize

    monkeypatch.setattr(depth_module, "_BAND_VALUES", 3 * 61 * 5)  # 5 rows per band
    image = torch.rand(1, 3, 47, 61, generator=torch.Generator().manual_seed(0))
    for size in ((518, 686), (28, 42), (47, 28)):
        whole = F.interpolate(image.double(), size=size, mode="bicubic", align_corners=False, antialias=False)
        expected = imagenet_normalize(whole).float()
        assert torch.equal(depth_module.preprocess(image, size), expected)


def test_placements():
    assert pad_placement(200, 400, 256) == Placement(256, 128, 256, 64, 0)
    assert pad_placement(300, 100, 96) == Placement(96, 96, 32, 0, 32)
    assert squash_placement(300, 100, 96) == Placement(96, 96, 96, 0, 0)
    place = pad_placement(50, 100, 64)
    x = torch.rand(1, 1, 50, 100)
    canvas = place.to_network(x, "constant")
    assert canvas.shape == (1, 1, 64, 64)
    assert canvas[..., :place.top, :].abs().sum() == 0 and canvas[..., place.top + place.h:, :].abs().sum() == 0
    # a map that is 1 inside the picture comes back as all ones
    ones = place.to_network(torch.ones(1, 1, 50, 100), "constant")
    assert torch.allclose(place.from_network(ones, 50, 100), torch.ones(1, 1, 50, 100))


def test_pad_equals_squash_for_square_images(model):
    img, depth = _scene(96, 96), np.tile(np.arange(96.0), (96, 1))
    a = pdfnet_core.segment(img, depth, model, size=64, resize="squash")[0]
    b = pdfnet_core.segment(img, depth, model, size=64, resize="pad")[0]
    assert torch.equal(a, b)


def test_tta_averages_flip_passes(model):
    torch.manual_seed(0)
    x, d = torch.randn(1, 3, 64, 64), torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        expected = (model(x, d) + model(x.flip(-1), d.flip(-1)).flip(-1)) / 2
        assert torch.allclose(tta_logits(pdfnet_core.segmenter(model), x, d, (1.0,)), expected, atol=1e-6)
    out = pdfnet_core.segment(_scene(64, 80), np.ones((64, 80)), model, size=64, tta=True)[0]
    plain = pdfnet_core.segment(_scene(64, 80), np.ones((64, 80)), model, size=64)[0]
    assert out.shape == (64, 80) and not torch.equal(out, plain)


def test_batches_equal_single_images_and_report_progress(model):
    images = [_scene(64, 64, s) for s in range(3)]
    depths = [np.random.default_rng(s).random((64, 64)) * (s + 1) for s in range(3)]
    calls = []
    batched = pdfnet_core.segment(images, depths, model, size=64, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    single = [pdfnet_core.segment(i, d, model, size=64)[0] for i, d in zip(images, depths)]
    assert calls == [(2, 3), (3, 3)]
    for a, b in zip(batched, single):
        assert (a - b).abs().max() <= 1e-5


def test_depth_prior_is_computed_when_no_depth_is_given(model, depth_model):
    img = _scene(70, 90)
    prior = pdfnet_core.depth_prior(img, depth_model)
    assert prior[0].shape == (70, 90) and prior[0].min() == 0 and prior[0].max() == 1
    assert torch.equal(prior[0] * 255, torch.round(prior[0] * 255))  # 8-bit levels, as in training
    auto = pdfnet_core.segment(img, model=model, depth_model=depth_model, size=64)[0]
    given = pdfnet_core.segment(img, prior, model, size=64)[0]
    assert torch.equal(auto, given)
    raw = pdfnet_core.segment(img, model=model, depth_model=depth_model, size=64, quantize_depth=False)[0]
    assert raw.shape == auto.shape


@pytest.mark.parametrize("kwargs, match", [
    (dict(depth=[np.ones((64, 64))] * 2), "2 depth maps"),
    (dict(depth=np.ones((32, 64))), "depth\\[0\\] is 32x64 but images\\[0\\] is 64x64"),
    (dict(depth=np.ones((64, 64)), size=100), "multiple of 32"),
    (dict(depth=np.ones((64, 64)), resize="crop"), "resize must be one of"),
    (dict(depth=np.full((64, 64), np.nan)), "NaN"),
])
def test_bad_arguments_are_clear_errors(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pdfnet_core.segment(_scene(64, 64), model=model, **kwargs)


def test_default_models_come_from_the_models_folder_once(model, depth_model, reference_dir, tmp_path, monkeypatch):
    from pdfnet_core.cache import default_cache
    from pdfnet_core.download import ModelDownloadError

    monkeypatch.setenv("PDFNET_MODELS_DIR", str(tmp_path))
    monkeypatch.delenv("PDFNET_DOWNLOAD", raising=False)
    with pytest.raises(ModelDownloadError) as err:
        pdfnet_core.segment(_scene(64, 64), np.ones((64, 64)))
    assert "PDFNet_Best.pth" in str(err.value) and str(tmp_path / "pdfnet") in str(err.value)
    with pytest.raises(ModelDownloadError, match="depth_anything_v2_vits.pth"):
        pdfnet_core.segment(_scene(64, 64), model=model)  # no depth, no depth model: the default one

    (tmp_path / "pdfnet").mkdir()
    (tmp_path / "depthanything").mkdir()
    torch.save(synthetic_state_dict(reference_dir), tmp_path / "pdfnet" / "PDFNet_Best.pth")
    torch.save(synth_state_dict(key_shapes(reference_dir, "vits")), tmp_path / "depthanything" / "depth_anything_v2_vits.pth")
    loads = default_cache().stats().loads
    img = _scene(64, 64)
    first = pdfnet_core.segment(img, size=64)[0]
    second = pdfnet_core.segment(img, size=64)[0]
    assert default_cache().stats().loads == loads + 2  # one PDFNet, one depth model, then none
    assert torch.equal(first, second)
    assert torch.equal(first, pdfnet_core.segment(img, model=model, depth_model=depth_model, size=64)[0])


def test_unknown_option_and_unknown_model_type():
    with pytest.raises(TypeError, match="unexpected options"):
        pdfnet_core.segment(_scene(8, 8), np.ones((8, 8)), torch.nn.Linear(1, 1), sizee=64)
    with pytest.raises(TypeError, match="model is a Linear, not a model of this pack"):
        pdfnet_core.segment(_scene(8, 8), np.ones((8, 8)), torch.nn.Linear(1, 1))


def test_segment_runs_a_birefnet_without_depth(reference_dir):
    from synthetic_birefnet import synthetic_state_dict as birefnet_weights

    model = pdfnet_core.load_birefnet(birefnet_weights(reference_dir, "swin_v1_t"))
    img = _scene(50, 70)
    out = pdfnet_core.segment(img, model=model, size=64, resize="pad")[0]
    assert out.shape == (50, 70) and 0 <= out.min() and out.max() <= 1
    with torch.no_grad():
        x = torch.nn.functional.interpolate(
            pdfnet_core.ops.images.imagenet_normalize(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255),
            size=(64, 64), mode="bilinear", align_corners=True)
        expected = torch.nn.functional.interpolate(model(x).sigmoid(), size=(50, 70), mode="bilinear",
                                                   align_corners=False, antialias=True)[0, 0]
    squash = pdfnet_core.segment(img, model=model, size=64)[0]
    assert (squash - expected).abs().max() <= 1e-5
