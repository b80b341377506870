"""Depth-Anything-V2: parity with the official code's fixtures, the loader's rules, and the API.

Weights are synthetic (reference/dam2/README.md recipe) and always go through the user-facing loader,
in both official and transformers naming.  Fixtures were made by the official code; none is ever
written from this project's output.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from pdfnet_core.depth import depth_prior, estimate_depth, network_size, normalize_depth, preprocess
from pdfnet_core.models.depth_anything.loader import (detect_variant, hf_to_official, load_depth_anything,
                                               official_to_hf)
from pdfnet_core.ops.images import to_rgb_list
from pdfnet_core.models.depth_anything.net import CONFIGS, get_config
from pdfnet_core.weights import CheckpointError, save_safetensors
from synthetic_dam2 import empty_state_dict, formula_image, key_shapes, synth_state_dict

MAX_ABS = 1e-3     # reference README tolerance on forward / infer outputs
MEAN_ABS = 1e-4
PREP_MAX_ABS = 1e-4  # on the preprocessed tensor (we resize in float64 like the official cv2 call)
SMALL = 56         # input_size for API tests, where parity is not the point and speed is


@pytest.fixture(scope="module")
def dam2(reference_dir):
    return reference_dir / "dam2"


@pytest.fixture(scope="module")
def vits_state(reference_dir):
    return synth_state_dict(key_shapes(reference_dir, "vits"), seed=0)


@pytest.fixture(scope="module")
def model(vits_state, tmp_path_factory):
    """Loaded from an official-layout .pth file, as a user's download would be."""
    path = tmp_path_factory.mktemp("dam2") / "depth_anything_v2_vits.pth"
    torch.save(vits_state, path)
    return load_depth_anything(path)


@pytest.fixture(scope="module")
def hf_model(vits_state, tmp_path_factory):
    """Loaded from a transformers-layout safetensors file."""
    path = tmp_path_factory.mktemp("dam2_hf") / "model.safetensors"
    save_safetensors(official_to_hf(vits_state), path)
    return load_depth_anything(path, variant="vits")


def _diff(actual: torch.Tensor, expected: np.ndarray) -> tuple[float, float]:
    d = np.abs(actual.detach().float().numpy() - expected)
    return float(d.max()), float(d.mean())


def _assert_parity(actual: torch.Tensor, expected: np.ndarray, what: str) -> None:
    assert tuple(actual.shape) == expected.shape, what
    max_abs, mean_abs = _diff(actual, expected)
    assert max_abs <= MAX_ABS and mean_abs <= MEAN_ABS, f"{what}: max-abs {max_abs:.3g}, mean-abs {mean_abs:.3g}"


# --------------------------------------------------------------------------------------------
# the synthetic weights and images are the ones the fixtures were made with


def test_synthetic_weights_match_reference_checksum(dam2, vits_state):
    expected = json.loads((dam2 / "weights_checksum_vits_seed0.json").read_text())
    assert set(vits_state) == set(expected)
    for key, t in vits_state.items():
        ref = expected[key]
        t64 = t.double()
        assert t.flatten()[:4].tolist() == pytest.approx(ref["first4"], rel=0, abs=0), key
        assert t64.sum().item() == pytest.approx(ref["sum"], rel=1e-9, abs=1e-9), key
        assert t64.abs().sum().item() == pytest.approx(ref["abs_sum"], rel=1e-9), key


def test_formula_image_matches_fixture(dam2):
    assert np.array_equal(formula_image(300, 400, 0), np.load(dam2 / "vits_s0_image_300x400_rgb_u8.npy"))


# --------------------------------------------------------------------------------------------
# parity with the official code


FORWARD_CASES = [
    ("vits_s0_prep_300x400_to_1x3x518x686.npy", "vits_s0_forward_1x518x686.npy"),   # interpolated, landscape
    ("vits_s0_sq518_input_1x3x518x518.npy", "vits_s0_sq518_forward_1x518x518.npy"),  # stored pos_embed
    ("vits_s0_sq266_input_1x3x266x266.npy", "vits_s0_sq266_forward_1x266x266.npy"),  # interpolated, square
]


@pytest.mark.parametrize("inp,out", FORWARD_CASES, ids=["518x686", "sq518", "sq266"])
def test_forward_matches_official(model, dam2, inp, out):
    x = torch.from_numpy(np.load(dam2 / inp))
    with torch.inference_mode():
        y = model(x)
    _assert_parity(y, np.load(dam2 / out), out)


def test_transformers_layout_gives_the_same_model(model, hf_model, dam2):
    theirs, ours = hf_model.state_dict(), model.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)
    inp, out = FORWARD_CASES[2]
    with torch.inference_mode():
        y = hf_model(torch.from_numpy(np.load(dam2 / inp)))
    _assert_parity(y, np.load(dam2 / out), f"{out} via transformers names")


PREP_CASES = [  # (h, w, formula variant, input_size, official image2tensor output)
    (300, 400, 0, 518, "vits_s0_prep_300x400_to_1x3x518x686.npy"),
    (256, 256, 1, 518, "vits_s0_sq518_input_1x3x518x518.npy"),
    (200, 200, 2, 266, "vits_s0_sq266_input_1x3x266x266.npy"),
]


@pytest.mark.parametrize("h,w,variant,input_size,fixture", PREP_CASES, ids=["300x400", "256sq", "200sq@266"])
def test_preprocessing_matches_official(dam2, h, w, variant, input_size, fixture):
    expected = np.load(dam2 / fixture)
    image = to_rgb_list(formula_image(h, w, variant))[0][None]
    x = preprocess(image, network_size(h, w, input_size))
    assert x.dtype == torch.float32 and tuple(x.shape) == expected.shape
    assert float(np.abs(x.numpy() - expected).max()) <= PREP_MAX_ABS


def test_infer_matches_official(model, dam2):
    image = np.load(dam2 / "vits_s0_image_300x400_rgb_u8.npy")   # RGB; the official call got BGR
    (depth,) = estimate_depth(image, model)
    _assert_parity(depth, np.load(dam2 / "vits_s0_infer_300x400.npy"), "infer 300x400")


@pytest.mark.parametrize("hw,expected", [((300, 400), (518, 686)), ((640, 480), (686, 518)),
                                         ((1024, 1024), (518, 518)), ((250, 333), (518, 686)),
                                         ((518, 518), (518, 518)), ((100, 1000), (518, 5180))])
def test_network_size_follows_official_resize(hw, expected):
    assert network_size(*hw) == expected


# --------------------------------------------------------------------------------------------
# names, variants and the loader's refusals


@pytest.mark.parametrize("variant", list(CONFIGS))
def test_transformers_rename_is_exact(reference_dir, variant):
    official = key_shapes(reference_dir, variant)
    hf = key_shapes(reference_dir, variant, "_hf")
    renamed = official_to_hf(empty_state_dict(official))
    assert {k: list(v.shape) for k, v in renamed.items()} == hf
    back = hf_to_official(empty_state_dict(hf))
    assert {k: list(v.shape) for k, v in back.items()} == official


def test_transformers_5_names_are_accepted(vits_state):
    hf = official_to_hf(vits_state)
    v5 = {k.replace("attention.attention.query.", "attention.q_proj.")
           .replace("attention.attention.key.", "attention.k_proj.")
           .replace("attention.attention.value.", "attention.v_proj.")
           .replace("attention.output.dense.", "attention.o_proj."): v for k, v in hf.items()}
    back = hf_to_official(v5)
    assert back.keys() == vits_state.keys()
    assert all(torch.equal(back[k], vits_state[k]) for k in back)


@pytest.mark.parametrize("variant", list(CONFIGS))
@pytest.mark.parametrize("layout", ["", "_hf"])
def test_variant_detected_from_shapes(reference_dir, variant, layout):
    state = empty_state_dict(key_shapes(reference_dir, variant, layout))
    if layout:
        state = hf_to_official(state)
    assert detect_variant(state) == variant


def test_requested_variant_must_agree(reference_dir):
    state = empty_state_dict(key_shapes(reference_dir, "vitb"))
    with pytest.raises(CheckpointError, match=r"variant='vits'.*vitb"):
        load_depth_anything(state, variant="vits")


def test_unknown_variant_name_is_refused(vits_state):
    with pytest.raises(ValueError, match="variant"):
        load_depth_anything(vits_state, variant="vitg")


def test_unsupported_size_is_described(reference_dir):
    state = empty_state_dict(key_shapes(reference_dir, "vits"))
    state = {k: v for k, v in state.items() if not k.startswith("pretrained.blocks.11.")}
    with pytest.raises(CheckpointError, match="11 blocks"):
        load_depth_anything(state)


def test_other_model_is_refused_with_what_it_looks_like():
    pdfnet_like = {"encoder.absolute_pos_embed": torch.zeros(1, 4, 8),
                   "decoder.FSE_mix.0.weight": torch.zeros(4, 4)}
    with pytest.raises(CheckpointError, match="PDFNet"):
        load_depth_anything(pdfnet_like)
    with pytest.raises(CheckpointError, match="unknown model"):
        load_depth_anything({"fc.weight": torch.zeros(2, 2)})


def test_missing_key_is_named(vits_state):
    state = dict(vits_state)
    del state["depth_head.scratch.refinenet2.out_conv.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing: depth_head\.scratch\.refinenet2\.out_conv\.bias"):
        load_depth_anything(state)


def test_misshaped_key_is_named(vits_state):
    state = dict(vits_state)
    state["depth_head.projects.1.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match=r"depth_head\.projects\.1\.bias: file \[7\]"):
        load_depth_anything(state)


def test_unexpected_key_is_named(vits_state):
    state = dict(vits_state, **{"depth_head.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected: depth_head\.extra\.weight"):
        load_depth_anything(state)


def test_non_commercial_licence_is_logged(reference_dir, caplog):
    # vitb with one key removed: the licence warning comes first, then the accounting refuses it,
    # so no 97M-parameter weights are ever materialised.
    state = empty_state_dict(key_shapes(reference_dir, "vitb"))
    del state["depth_head.scratch.output_conv1.bias"]
    with caplog.at_level(logging.WARNING, logger="pdfnet_core"), pytest.raises(CheckpointError, match="1 missing"):
        load_depth_anything(state)
    assert "CC-BY-NC-4.0" in caplog.text
    assert [get_config(v).licence for v in ("vits", "vitb", "vitl")] == ["Apache-2.0", "CC-BY-NC-4.0", "CC-BY-NC-4.0"]


def test_mask_token_is_ignored_and_logged(vits_state, caplog):
    with caplog.at_level(logging.INFO, logger="pdfnet_core"):
        loaded = load_depth_anything(vits_state)
    assert "pretrained.mask_token" in caplog.text
    assert "pretrained.mask_token" not in loaded.state_dict()
    assert "CC-BY-NC" not in caplog.text   # vits is Apache-2.0: no licence warning


def test_fp16_safetensors_is_cast_to_the_requested_dtype(vits_state, tmp_path):
    path = save_safetensors(vits_state, tmp_path / "depth_anything_v2_vits_fp16.safetensors", dtype="fp16")
    as_fp32 = load_depth_anything(path)
    key = "pretrained.blocks.3.attn.qkv.weight"
    p = as_fp32.state_dict()[key]
    assert p.dtype == torch.float32 and torch.equal(p, vits_state[key].half().float())
    as_bf16 = load_depth_anything(path, dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in as_bf16.state_dict().values())


# --------------------------------------------------------------------------------------------
# API behaviour


def test_model_refuses_inputs_it_cannot_patch(model):
    with pytest.raises(ValueError, match="smaller than one 14x14 patch"):
        model(torch.zeros(1, 3, 7, 28))
    with pytest.raises(ValueError, match="multiples of 14"):
        model(torch.zeros(1, 3, 28, 30))


def test_tiny_and_nan_images_are_refused(model):
    with pytest.raises(ValueError, match=r"images\[0\] is 10x20"):
        estimate_depth(np.zeros((10, 20, 3), np.uint8), model)
    bad = torch.rand(1, 28, 28, 3)
    bad[0, 3, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        estimate_depth(bad, model)


def test_bad_arguments_are_named(model):
    image = np.zeros((28, 28, 3), np.uint8)
    with pytest.raises(ValueError, match="input_size"):
        estimate_depth(image, model, input_size=10)
    with pytest.raises(ValueError, match="batch_size"):
        estimate_depth(image, model, batch_size=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_equals_singles_exactly_and_keeps_order(model, vits_state, dtype):
    """A batch does not change an image's depth: the CLI batches same-size photos.  In bf16 the
    results are identical (the layouts of a batch and of one image used to round differently, by up
    to 2/255 of the depth range); float32 GEMMs of other shapes may differ by summation noise."""
    if dtype != torch.float32:
        model = load_depth_anything(vits_state, dtype=dtype)
    a, b = formula_image(30, 40, 0), formula_image(30, 40, 1)
    c = formula_image(40, 30, 2)
    calls = []
    together = estimate_depth([a, c, b], model, input_size=SMALL, batch_size=2,
                              progress=lambda done, total: calls.append((done, total)))
    alone = [estimate_depth(im, model, input_size=SMALL)[0] for im in (a, c, b)]
    assert [tuple(d.shape) for d in together] == [(30, 40), (40, 30), (30, 40)]
    for t, s in zip(together, alone):
        if dtype == torch.float32:
            torch.testing.assert_close(t, s, rtol=0, atol=1e-5)
        else:
            assert torch.equal(t, s)
    assert calls == [(2, 3), (3, 3)]   # a and b share a size, so they run as one batch


def test_input_types_agree(model):
    rgb = formula_image(42, 56, 1)
    from_numpy = estimate_depth(rgb, model, input_size=SMALL)[0]
    from_pil = estimate_depth(Image.fromarray(rgb), model, input_size=SMALL)[0]
    from_comfy = estimate_depth(torch.from_numpy(rgb)[None].float() / 255.0, model, input_size=SMALL)[0]
    assert from_numpy.dtype == torch.float32 and from_numpy.device.type == "cpu"
    torch.testing.assert_close(from_pil, from_numpy, rtol=0, atol=0)
    torch.testing.assert_close(from_comfy, from_numpy, rtol=0, atol=1e-5)
    gray = estimate_depth(rgb[..., 0], model, input_size=SMALL)[0]      # converted, not refused
    assert gray.shape == from_numpy.shape


def test_output_is_float32_cpu_for_a_half_precision_model(vits_state):
    bf16 = load_depth_anything(vits_state, dtype=torch.bfloat16)
    (depth,) = estimate_depth(formula_image(28, 28, 0), bf16, input_size=SMALL)
    assert depth.dtype == torch.float32 and depth.device.type == "cpu" and torch.isfinite(depth).all()
    assert not depth.is_inference()   # callers may modify it in place


def test_normalize_depth_quantises_like_the_training_maps(dam2):
    raw = np.load(dam2 / "vits_s0_infer_300x400.npy")
    lo, hi = raw.min(), raw.max()
    scaled = (raw - lo) / (hi - lo) * np.float32(255.0)
    expected = np.clip(np.round(scaled), 0, 255).astype(np.uint8)   # what cv2.imwrite stored
    got = normalize_depth(torch.from_numpy(raw))
    assert np.array_equal((got * 255).round().to(torch.uint8).numpy(), expected)
    assert float(got.min()) == 0.0 and float(got.max()) == 1.0
    smooth = normalize_depth(torch.from_numpy(raw), quantize=False)
    np.testing.assert_allclose(smooth.numpy(), scaled / 255.0, rtol=0, atol=1e-6)
    assert not np.array_equal(smooth.numpy(), got.numpy())


def test_constant_depth_gives_zeros_not_nan():
    for quantize in (True, False):
        out = normalize_depth(torch.full((5, 7), 3.25), quantize)
        assert torch.equal(out, torch.zeros(5, 7))


def test_depth_prior_is_per_image_and_8_bit(model):
    images = [formula_image(30, 40, 0), formula_image(30, 40, 2)]
    priors = depth_prior(images, model, input_size=SMALL)
    raw = estimate_depth(images, model, input_size=SMALL)
    for p, r in zip(priors, raw):
        assert p.shape == r.shape and p.dtype == torch.float32
        assert float(p.min()) == 0.0 and float(p.max()) == 1.0
        assert torch.equal((p * 255).round() / 255, p)
        assert torch.equal(p, normalize_depth(r))   # normalised alone, not over the batch
    smooth = depth_prior(images[:1], model, quantize=False, input_size=SMALL)[0]
    assert (smooth - priors[0]).abs().max() <= 0.5 / 255 + 1e-6
