"""SegRefiner's fast paths give the results of the plain ones: batched HR patches, the low-precision
CPU kernels (bf16 models used to fail on a CPU), and the optional bf16 patch pass of HR mode.

The narrow synthetic model (width 32) and small inputs keep these fast; exact float32 parity with
the official run is tests/parity/test_segrefiner.py.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pdfnet_core.models.segrefiner.loader import load_segrefiner
from pdfnet_core.models.segrefiner.modes import HRConfig, local_logits, patch_batch
from pdfnet_core.models.segrefiner.refiner import SegRefiner
from pdfnet_core.models.segrefiner.unet import GroupNorm32
from synthetic_segrefiner import disc_scene, synthetic_state_dict


@pytest.fixture(scope="module")
def state(reference_dir) -> dict:
    return synthetic_state_dict(reference_dir, narrow=True)


@pytest.fixture(scope="module")
def fp32(state) -> SegRefiner:
    return load_segrefiner(state)


@pytest.fixture(scope="module")
def bf16(state) -> SegRefiner:
    return load_segrefiner(state, dtype=torch.bfloat16)


def _inputs(n: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 3, size, size, generator=g)
    mask = (torch.rand(n, 1, size, size, generator=g) > 0.5).float()
    return image, mask


def test_hr_patches_batched_equal_one_at_a_time(fp32):
    image, _ = _inputs(1, 128)
    glob = (torch.rand(128, 128, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    boxes = torch.tensor([[0, 0, 64, 64], [64, 0, 128, 64], [30, 50, 94, 114]], dtype=torch.int32)
    with torch.inference_mode():
        batched = local_logits(fp32.unet, image, glob, boxes, batch_max=32)
        single = local_logits(fp32.unet, image, glob, boxes, batch_max=1)
        first = fp32.unet(image[:, :, :64, :64], glob[None, None, :64, :64], torch.zeros(1, dtype=torch.int64))
    assert batched.shape == (3, 1, 64, 64) and torch.equal(single[:1], first)
    # the per-sample GroupNorm keeps patches independent: only float32 summation noise differs
    assert (batched - single).abs().max() <= 2e-4


@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_low_precision_matches_the_float32_round_trip(channels_last):
    g = torch.Generator().manual_seed(2)
    norm = GroupNorm32(32, 64)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(64, generator=g) + 0.5)
        norm.bias.copy_(torch.randn(64, generator=g))
    x = torch.randn(2, 64, 8, 8, generator=g) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.equal(norm(x), F.group_norm(x, 32, norm.weight, norm.bias, norm.eps))
        half = norm.to(torch.bfloat16)
        xb = x.to(torch.bfloat16)
        expected = F.group_norm(xb.float(), 32, half.weight.float(), half.bias.float(), half.eps).to(torch.bfloat16)
        out = half(xb)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)


def test_bf16_model_runs_on_cpu_and_agrees_with_fp32(fp32, bf16):
    image, mask = _inputs(2, 64)
    t = torch.tensor([0, 5])
    with torch.inference_mode():
        a = fp32.unet(image, mask, t)
        b = bf16.unet(image, mask, t)
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert (a - b).abs().mean() <= 0.05 and (a - b).abs().max() <= 0.5
    confident = a.abs() > 0.5
    assert torch.equal(a[confident] >= 0, b[confident] >= 0)


def test_fp32_forward_keeps_layout_and_trains(fp32):
    """The in-place activations are only taken when no autograd graph is recorded."""
    image, mask = _inputs(1, 32)
    with torch.enable_grad():
        image.requires_grad_(True)
        logits = fp32(image, mask, torch.zeros(1, dtype=torch.int64))
        logits.square().mean().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all()
    assert logits.is_contiguous()


def test_unet_in_converts_a_twin_and_leaves_the_model_alone(fp32):
    assert fp32.unet_in(None) == fp32.unet and fp32.unet_in(torch.float32) == fp32.unet
    image, mask = _inputs(1, 64, seed=3)
    t = torch.zeros(1, dtype=torch.int64)
    with torch.inference_mode():
        twin = fp32.unet_in(torch.bfloat16)
        low = twin(image, mask, t)
        own = fp32.unet(image, mask, t)
    assert twin.__self__ is not fp32 and twin.__self__.placement() == (torch.device("cpu"), torch.bfloat16)
    assert fp32.placement() == (torch.device("cpu"), torch.float32)
    assert low.dtype == torch.float32 and 0 < (low - own).abs().max() <= 0.5


def test_hr_bf16_patches_keep_the_global_pass_and_agree(fp32):
    model = copy.deepcopy(fp32)
    model.hr_config = dataclasses.replace(HRConfig(), model_size=32)
    image, coarse = disc_scene(64, 96)
    exact: dict = {}
    ref = model.refine(image, coarse, "hr", seed=5, trace=exact)
    model.hr_config = dataclasses.replace(model.hr_config, patch_dtype=torch.bfloat16)
    fast: dict = {}
    out = model.refine(image, coarse, "hr", seed=5, trace=fast)
    # the global pass (stochastic, thresholded) and so the patches are the float32 ones
    assert torch.equal(exact["g_up"], fast["g_up"]) and torch.equal(exact["patch_boxes"], fast["patch_boxes"])
    assert exact["patch_boxes"].shape[0] > 0
    la, lb = exact["patch_logits"], fast["patch_logits"]
    assert (la - lb).abs().mean() <= 0.05
    assert torch.equal(la[la.abs() > 0.5] >= 0, lb[la.abs() > 0.5] >= 0)
    assert out.shape == ref.shape and (out != ref).mean() <= 0.01
    assert model.placement()[1] == torch.float32


def test_the_loader_option_sets_the_patch_precision_and_refuses_unknown_ones(state):
    from pdfnet_core.families import family

    model = load_segrefiner(state, hr_patches="bf16")
    assert model.hr_config.patch_dtype == torch.bfloat16 and model.placement()[1] == torch.float32
    assert load_segrefiner(state).hr_config.patch_dtype is None
    with pytest.raises(ValueError, match="hr_patches must be one of model, bf16, fp16"):
        load_segrefiner(state, hr_patches="int8")
    option = family("segrefiner").option("hr_patches")
    assert option.choices == ("model", "bf16", "fp16") and option.default == "model"


def test_hr_patches_run_one_at_a_time_on_the_cpu_and_batched_elsewhere():
    assert patch_batch(HRConfig(), torch.device("cpu")) == 1
    assert patch_batch(HRConfig(batch_max=7), torch.device("cuda")) == 7
