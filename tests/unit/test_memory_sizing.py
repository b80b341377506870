"""Memory estimates off the CPU (issue #24, item 6), checked on the CPU.

* BiRefNet on CUDA: torchvision's deform_conv2d allocates a whole im2col ``columns`` buffer, which
  the CPU-measured activation table does not hold; the CUDA estimate adds the largest one.
* SegRefiner's HR patch batch is sized from the free memory (a fake amount here) instead of always
  asking for batch_max patches.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pdfnet_core.models.birefnet import deform_conv
from pdfnet_core.models.birefnet import spec as birefnet_spec
from pdfnet_core.models.birefnet.net import VARIANTS, BiRefNet, DeformableConv2d
from pdfnet_core.models.segrefiner import modes, refiner
from pdfnet_core.models.segrefiner import spec as segrefiner_spec
from pdfnet_core.models.segrefiner.loader import load_segrefiner
from pdfnet_core.models.segrefiner.modes import FREE_MARGIN, HRConfig, LRConfig, patch_batch, sample_bytes
from pdfnet_core.models.segrefiner.refiner import SegRefiner
from pdfnet_core.specs import LoadedModel
from synthetic_segrefiner import disc_scene, synthetic_state_dict

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


# --------------------------------------------------------------------------------------------
# BiRefNet: the deformable-convolution columns on CUDA


@pytest.fixture
def torchvision_runs(monkeypatch):
    """Off the CPU the default backend is torchvision (as where it loads and has not failed)."""
    monkeypatch.setattr(deform_conv, "_torchvision", lambda *args: None)
    monkeypatch.setattr(deform_conv, "_failed", {})
    if "DEFAULT_BACKEND" in vars(deform_conv):
        monkeypatch.delitem(vars(deform_conv), "DEFAULT_BACKEND")


def test_the_deformable_layers_read_off_the_tree_are_those_a_forward_runs():
    """deform_layers' (stride, channels, taps) per layer = the maps a real forward gives them."""
    torch.manual_seed(0)
    model = BiRefNet(VARIANTS["swin_v1_t"]).eval()
    seen = []
    for module in model.modules():
        if isinstance(module, DeformableConv2d):
            module.register_forward_pre_hook(
                lambda m, args: seen.append((64 // args[0].shape[-1], 64 // args[0].shape[-2], args[0].shape[1],
                                             m.regular_conv.weight.shape[-1] ** 2)))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    layers = birefnet_spec.deform_layers("swin_v1_t")
    assert sorted((s, s, c, t) for s, c, t in layers) == sorted(seen) and len(seen) == 20
    assert {t for _, _, t in layers} == {1, 9, 49} and {c for _, c, _ in layers} == {64}


@pytest.mark.parametrize("variant", ["swin_v1_l", "swin_v1_t", None])
@pytest.mark.parametrize("dtype, column_bytes", [(torch.float32, 4), (torch.float16, 2), (torch.bfloat16, 4)])
def test_the_cuda_estimate_adds_the_largest_columns_buffer(torchvision_runs, variant, dtype, column_bytes):
    spec = birefnet_spec.SPEC
    h, w = 1024, 768
    # decoder_block1's 7x7 branch: 64 channels x 49 taps on the x1 map (a quarter of each side)
    columns = 64 * 49 * (h // 4) * (w // 4)
    assert birefnet_spec.deform_columns(h, w, variant) == columns
    for batch in (1, 3):
        cpu = spec.activation_bytes((h, w), batch, dtype, variant)
        assert spec.activation_bytes((h, w), batch, dtype, variant, device="cpu") == cpu
        assert spec.activation_bytes((h, w), batch, dtype, variant, device="cuda") - cpu == columns * column_bytes * batch


def test_no_columns_where_the_pure_torch_path_runs(torchvision_runs):
    spec = birefnet_spec.SPEC
    cpu = spec.activation_bytes(1024, 1, torch.float32, "swin_v1_l")
    assert spec.activation_bytes(1024, 1, torch.float32, "swin_v1_l", device="cuda") > cpu
    deform_conv._fall_back("cuda", "test: torchvision's op failed")
    assert spec.activation_bytes(1024, 1, torch.float32, "swin_v1_l", device="cuda") == cpu


def test_a_loaded_model_estimates_for_where_its_weights_are_or_the_device_given(torchvision_runs):
    with torch.device("meta"):
        model = BiRefNet(VARIANTS["swin_v1_t"])
    on_meta = LoadedModel(model, birefnet_spec.SPEC)      # "meta": not the CPU, so torchvision would run
    cpu = birefnet_spec.SPEC.activation_bytes(512, 2, torch.float32, "swin_v1_t")
    extra = 2 * 4 * birefnet_spec.deform_columns(512, 512, "swin_v1_t")
    assert on_meta.activation_bytes(512, 2) == cpu + extra
    assert on_meta.activation_bytes(512, 2, device="cpu") == cpu
    assert on_meta.activation_bytes(512, 2, device="cuda") == cpu + extra


# --------------------------------------------------------------------------------------------
# SegRefiner: the HR patch batch from the free memory


def test_the_patch_batch_is_what_fits_in_free_memory():
    cfg = HRConfig()
    per = sample_bytes(cfg, torch.float32)
    assert per == 342 * 2**20                               # the measured 256² sample
    asked = []

    def free(amount):
        return lambda device: asked.append(device) or amount

    assert patch_batch(cfg, CUDA, torch.float32, free(5 * per * FREE_MARGIN + 1)) == 5
    assert patch_batch(cfg, CUDA, torch.bfloat16, free(5 * per * FREE_MARGIN + 1)) == 10   # half the bytes
    assert patch_batch(cfg, CUDA, torch.float32, free(10**15)) == cfg.batch_max          # capped
    assert patch_batch(cfg, CUDA, torch.float32, free(per // 10)) == 1                   # at least one
    assert patch_batch(cfg, CUDA, torch.float32, free(5 * per * FREE_MARGIN + 1), reserve=2 * per) == 3
    assert patch_batch(cfg, CUDA, torch.float32, free(None)) == cfg.batch_max            # unknown: official
    assert asked == [CUDA] * 6
    assert patch_batch(cfg, CPU, torch.float32, free(10**15)) == 1                       # the CPU: as before
    assert len(asked) == 6


def test_free_bytes_is_unknown_off_cuda():
    assert modes.free_bytes(CPU) is None
    if not torch.cuda.is_available():
        assert modes.free_bytes(CUDA) is None


def test_the_work_size_asks_for_what_fits_on_cuda_and_batch_max_on_the_cpu(reference_dir):
    model = load_segrefiner(synthetic_state_dict(reference_dir, narrow=True))   # on the CPU
    per, weights = sample_bytes(model.hr_config, torch.float32), model.weight_bytes()
    free = 4 * per * FREE_MARGIN + weights + 1
    assert segrefiner_spec.SPEC.work_size(model) == (256, 32)                   # the CPU: unchanged
    # to run on CUDA: the weights (still on the CPU) will take their room first
    assert segrefiner_spec.work_size(model, CUDA, free=lambda d: free) == (256, 4)
    # with bf16 patches, their twin takes room too; the batch is priced in the model's fp32
    model.hr_config = dataclasses.replace(model.hr_config, patch_dtype=torch.bfloat16)
    twin = model.weight_bytes(torch.bfloat16)
    assert twin * 2 == weights
    assert segrefiner_spec.work_size(model, CUDA, free=lambda d: free + twin) == (256, 4)
    assert segrefiner_spec.work_size(model, CUDA, free=lambda d: free) == (256, 3)
    assert segrefiner_spec.work_size(model, CUDA, free=lambda d: 0) == (256, 1)


@pytest.fixture(scope="module")
def small(reference_dir) -> SegRefiner:
    """The narrow synthetic model at a 32 px working size: a 64x96 image gets several HR patches."""
    m = load_segrefiner(synthetic_state_dict(reference_dir, narrow=True))
    m.hr_config = dataclasses.replace(HRConfig(), model_size=32)
    m.lr_config = dataclasses.replace(LRConfig(), model_size=32, area_thr=16)
    return m


def test_hr_runs_the_patch_batch_sized_from_free_memory_with_the_same_result(small, monkeypatch):
    image, coarse = disc_scene(64, 96)
    one: dict = {}
    want = small.refine(image, coarse, "hr", seed=3, trace=one)
    asked, calls = [], []

    def sized(cfg, device, dtype, free, reserve=0):
        asked.append((cfg, device, dtype, free))
        return 3                                             # as from the free memory on a GPU

    monkeypatch.setattr(modes, "patch_batch", sized)
    hook = small.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    batched: dict = {}
    try:
        got = small.refine(image, coarse, "hr", seed=3, trace=batched)
    finally:
        hook.remove()
    patches = one["patch_boxes"].shape[0]
    assert patches > 3
    assert asked == [(small.hr_config, CPU, torch.float32, refiner.free_bytes)]
    assert calls == [1] * 5 + [3] * (patches // 3) + ([patches % 3] if patches % 3 else [])
    # each patch is independent (per-sample GroupNorm): only float32 summation noise differs
    assert (batched["patch_logits"] - one["patch_logits"]).abs().max() <= 2e-4
    assert torch.equal(torch.as_tensor(got), torch.as_tensor(want))
