"""load_pdfnet: every key accounted for, wrappers accepted, other models refused with a reason."""
from __future__ import annotations

import json
import logging
import pickle

import pytest
import torch

from pdfnet_core.models.pdfnet.loader import load_pdfnet
from pdfnet_core.weights import CheckpointError, read_state_dict, save_safetensors
from pdfnet_fixtures import load, model_inputs
from synthetic_pdfnet import synthetic_state_dict


@pytest.fixture(scope="module")
def state(reference_dir):
    return synthetic_state_dict(reference_dir)


@pytest.fixture(scope="module")
def stale_keys(reference_dir):
    return json.loads((reference_dir / "pdfnet" / "checkpoint_extra_keys.json").read_text())["keys"]


def _released_like(state, stale_keys):
    """The layout of the real PDFNet_Best.pth: the 561 entries plus 42 stale depth_decoder ones."""
    out = dict(state)
    for key, spec in stale_keys.items():
        out[key] = torch.zeros(spec["shape"]) if isinstance(spec, dict) else torch.zeros(1)
    return out


def test_released_layout_loads_and_logs_the_ignored_entries(state, stale_keys, tmp_path, caplog, reference_dir):
    path = tmp_path / "PDFNet_Best.pth"
    torch.save(_released_like(state, stale_keys), path)
    with caplog.at_level(logging.INFO, logger="pdfnet_core"):
        model = load_pdfnet(path)
    assert "ignoring 42 checkpoint entries" in caplog.text
    assert "IntegrityPriorLoss" in caplog.text
    assert len(model.state_dict()) == 561
    # the first revision's depth head says the file was saved by v1, so auto runs v1's formulas
    assert model.config.revision == "v1"
    image, depth = model_inputs(reference_dir, "v1")
    with torch.no_grad():
        assert (model(image, depth) - load(reference_dir, "v1", "logits")).abs().max() <= 2e-4


@pytest.mark.parametrize("wrap", [
    lambda sd: {"model": sd},
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
    lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
])
def test_wrappers_and_prefixes_are_unwrapped(state, wrap):
    model = load_pdfnet(wrap(state))
    got = model.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_safetensors_and_conversion_round_trip(state, tmp_path, reference_dir):
    image, depth = model_inputs(reference_dir, "case256")
    ref = load(reference_dir, "case256", "logits")
    fp32 = save_safetensors(state, tmp_path / "pdfnet.safetensors", "fp32")
    fp16 = save_safetensors(state, tmp_path / "pdfnet_fp16.safetensors", "fp16")
    assert fp16.stat().st_size < 0.55 * fp32.stat().st_size
    stored = read_state_dict(fp16)
    assert stored["encoder.layers.0.blocks.0.attn.relative_position_index"].dtype == torch.int64
    with torch.no_grad():
        assert (load_pdfnet(fp32)(image, depth) - ref).abs().max() <= 2e-4
        # fp16 storage, fp32 compute: only the weight rounding differs
        assert (load_pdfnet(fp16)(image, depth) - ref).abs().max() <= 0.1
    assert not list(tmp_path.glob("*.partial"))


def test_missing_unexpected_and_misshaped_keys_are_named(state):
    broken = dict(state)
    del broken["decoder.Bside.3.weight"]
    broken["decoder.extra_head.weight"] = torch.zeros(3)
    broken["channel_mix2.1.weight"] = torch.zeros(64)
    with pytest.raises(CheckpointError) as err:
        load_pdfnet(broken)
    msg = str(err.value)
    assert "decoder.Bside.3.weight" in msg and "missing" in msg
    assert "decoder.extra_head.weight" in msg and "unexpected" in msg
    assert "channel_mix2.1.weight: file [64] vs model [128]" in msg


def test_only_the_known_stale_entries_are_tolerated(state, stale_keys):
    released = _released_like(state, stale_keys)
    released["depth_decoder.Decoder.9.0.0.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"depth_decoder\.Decoder\.9\.0\.0\.weight"):
        load_pdfnet(released)


def test_corrupted_relative_position_index_and_nan_weights_are_refused(state):
    bad = dict(state)
    key = "encoder.layers.1.blocks.1.attn.relative_position_index"
    bad[key] = torch.flip(state[key], dims=[0])
    with pytest.raises(CheckpointError, match="relative-position index"):
        load_pdfnet(bad)
    bad = dict(state)
    bad["decoder.Bside.0.weight"] = torch.full_like(state["decoder.Bside.0.weight"], float("nan"))
    with pytest.raises(CheckpointError, match="NaN"):
        load_pdfnet(bad)


@pytest.mark.parametrize("keys, looks_like", [
    ({"pretrained.patch_embed.proj.weight": [384, 3, 14, 14], "depth_head.projects.0.weight": [48, 384, 1, 1]},
     "Depth-Anything-V2"),
    ({"bb.patch_embed.proj.weight": [192, 3, 4, 4], "decoder.conv_out1.0.weight": [1, 32, 1, 1]}, "BiRefNet"),
    ({"denoise_model.input_blocks.0.0.weight": [128, 4, 3, 3]}, "SegRefiner"),
    ({"model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3]}, "Stable Diffusion"),
    ({"fc.weight": [10, 10]}, "unknown model"),
])
def test_other_models_are_refused_with_what_they_look_like(keys, looks_like):
    with pytest.raises(CheckpointError) as err:
        load_pdfnet({k: torch.zeros(s) for k, s in keys.items()})
    assert "not a PDFNet checkpoint" in str(err.value) and looks_like in str(err.value)


def test_files_are_read_weights_only(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"model": Payload()}, fh)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_pdfnet(path)
    truncated = tmp_path / "truncated.pth"
    torch.save({"a": torch.zeros(10)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_pdfnet(truncated)
    with pytest.raises(FileNotFoundError):
        load_pdfnet(tmp_path / "absent.pth")


def test_half_precision_models_run_and_agree_with_fp32(state):
    torch.manual_seed(0)
    image, depth = torch.randn(1, 3, 128, 128), torch.rand(1, 1, 128, 128)
    with torch.no_grad():
        reference = load_pdfnet(state)(image, depth)
        for dtype in (torch.bfloat16, torch.float16):
            model = load_pdfnet(state, dtype=dtype)
            assert next(model.parameters()).dtype == dtype
            assert model.encoder.layers[0].blocks[0].attn.relative_position_index.dtype == torch.int64
            out = model(image, depth).float()
            assert out.shape == (1, 1, 128, 128) and torch.isfinite(out).all()
            # a looser check than fp32 parity: the mask (sign of the logits) is the same almost everywhere
            assert ((out > 0) == (reference > 0)).float().mean() >= 0.99
            assert (out - reference).abs().max() <= 0.5


@pytest.fixture(scope="module")
def model(state):
    return load_pdfnet(state)


@pytest.mark.parametrize("image, depth, match", [
    (torch.zeros(1, 3, 64, 96), torch.zeros(1, 1, 64, 96), "square input whose side is a multiple of 32"),
    (torch.zeros(1, 3, 80, 80), torch.zeros(1, 1, 80, 80), "multiple of 32"),
    (torch.zeros(1, 4, 64, 64), torch.zeros(1, 1, 64, 64), "image must be a \\[B,3,S,S\\]"),
    (torch.zeros(1, 3, 64, 64), torch.zeros(1, 2, 64, 64), "depth must be a \\[B,1,S,S\\]"),
    (torch.zeros(2, 3, 64, 64), torch.zeros(1, 1, 64, 64), "different batch sizes"),
    (torch.zeros(1, 3, 64, 64), torch.zeros(1, 1, 32, 32), "depth is 32x32 but image is 64x64"),
    (torch.full((1, 3, 64, 64), float("nan")), torch.zeros(1, 1, 64, 64), "image contains NaN"),
    (torch.zeros(1, 3, 64, 64), torch.full((1, 1, 64, 64), float("inf")), "depth contains NaN or inf"),
])
def test_bad_model_inputs_are_clear_errors(model, image, depth, match):
    with pytest.raises(ValueError, match=match):
        model(image, depth)
