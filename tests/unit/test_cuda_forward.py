"""The CUDA forward of every family, checked on the CPU: no host sync, no stray CPU tensor, few ops.

``FakeTensorMode`` fakes tensors on device "cuda" without a GPU (or a CUDA build): shapes, dtypes and
devices are propagated, no arithmetic is done.  On a GPU, an op whose result depends on tensor values
(``.item()``, ``bool(tensor)``, ``nonzero``, boolean-mask indexing, ``.tolist()``...) makes the host
wait for the device; under FakeTensorMode it raises (DataDependentOutputException,
DynamicOutputShapeException), and so does a tensor created on the CPU inside forward and mixed with
CUDA ones (a device mismatch).  The dispatch mode below also records every copy between host and
device (``torch.tensor(..., device="cuda")``, ``.cpu()``): blocking copies, syncs as well.

It counts the aten ops of a forward too (what a GPU launches or dispatches).  One exception:
``scaled_dot_product_attention`` is one fused kernel on a GPU, but a CPU-only build has no fused
CUDA kernel to pick, so fake CUDA runs its math decomposition (about 20 ops); those ops are still
checked for syncs and devices, and counted as the one op they are on a GPU.  The counts come from
the second forward: the first one at a shape also builds the Swin window plans kept for it.

Measured counts are printed (pytest -s) and recorded as test properties (--junitxml).
"""
from __future__ import annotations

import collections

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import (DataDependentOutputException, DynamicOutputShapeException,
                                           FakeTensorMode)
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from pdfnet_core.models.birefnet.net import VARIANTS, BiRefNet, check_image
from pdfnet_core.models.common.layers import host_taps, linear_taps
from pdfnet_core.models.common.swin import SwinConfig, SwinStage, WindowLayout
from pdfnet_core.models.depth_anything.net import build_depth_anything
from pdfnet_core.models.pdfnet.net import PDFNet, PDFNetConfig, check_inputs
from pdfnet_core.models.segrefiner.diffusion import reverse_step
from pdfnet_core.models.segrefiner.unet import SegRefinerNet

PDFNET_OP_LIMIT = 4000   # issue #24: PDFNet at 1024², batch 8, bf16, on CUDA

# ops whose result (or output shape) depends on tensor values: each a host sync on a GPU
_VALUE_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2",
              "unique_consecutive", "unique_dim"}


def _syncs(func, args, kwargs) -> bool:
    name = func._schema.name.split("::")[-1]
    if name in _VALUE_OPS:
        return True
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):   # boolean-mask indexing
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)
    if name == "repeat_interleave" and len(args) > 1 and isinstance(args[1], torch.Tensor):
        return kwargs.get("output_size") is None
    if name in ("_to_copy", "copy_"):                                   # host <-> device copies
        src = args[1] if name == "copy_" else args[0]
        dst = args[0].device if name == "copy_" else kwargs.get("device")
        return isinstance(src, torch.Tensor) and dst is not None and \
            {src.device.type, torch.device(dst).type} == {"cpu", "cuda"}
    return False


class OpCounter(TorchDispatchMode):
    """Counts aten ops and records the ones that would sync the host with the device."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.syncs: collections.Counter = collections.Counter()
        self.muted = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _syncs(func, args, kwargs):
            self.syncs[str(func)] += 1
        if not self.muted and func.namespace == "aten":
            self.ops[str(func)] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.ops.values())


class FusedAttention(TorchFunctionMode):
    """Counts ``scaled_dot_product_attention`` as one op (its fused GPU kernel), still running and
    checking the decomposition a CPU-only build gives it."""

    def __init__(self, counter: OpCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        self.counter.ops["aten.scaled_dot_product_attention"] += 1
        self.counter.muted += 1
        try:
            return func(*args, **kwargs)
        finally:
            self.counter.muted -= 1


def fake_cuda(build, mode: FakeTensorMode, dtype: torch.dtype = torch.float32, channels_last: bool = False):
    """``build()`` on the meta device, then every parameter and buffer an empty fake CUDA tensor
    (floating ones in ``dtype``, 4-d ones channels-last where the family's loader makes them so)."""
    with torch.device("meta"):
        module = build().eval()

    def fake(t: torch.Tensor) -> torch.Tensor:
        x = torch.empty(t.shape, dtype=dtype if t.is_floating_point() else t.dtype, device="cuda")
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x

    with mode:
        for m in module.modules():
            for name, p in list(m._parameters.items()):
                if p is not None:
                    m._parameters[name] = nn.Parameter(fake(p), requires_grad=False)
            for name, b in list(m._buffers.items()):
                if b is not None:
                    m._buffers[name] = fake(b)
    return module


def run_counted(mode: FakeTensorMode, fn) -> tuple[object, OpCounter]:
    counter = OpCounter()
    with mode, torch.no_grad(), counter, FusedAttention(counter):
        out = fn()
    return out, counter


def assert_no_syncs(counter: OpCounter) -> None:
    assert not counter.syncs, f"host syncs on CUDA: {dict(counter.syncs)}"


# --------------------------------------------------------------------------------------------
# the harness catches what it is meant to catch


class _Item(nn.Module):
    def forward(self, x):
        return x * x.sum().item()


class _If(nn.Module):
    def forward(self, x):
        return x if torch.isfinite(x).all() else x * 0


class _Mask(nn.Module):
    def forward(self, x):
        return x[x > 0]


class _Nonzero(nn.Module):
    def forward(self, x):
        return x.nonzero()


class _Tolist(nn.Module):
    def forward(self, x):
        return x + len(x.tolist())


class _CpuTensor(nn.Module):
    def forward(self, x):
        return x + torch.arange(x.shape[-1])


@pytest.mark.parametrize("module, error", [
    (_Item, DataDependentOutputException), (_If, DataDependentOutputException),
    (_Tolist, DataDependentOutputException), (_Mask, DynamicOutputShapeException),
    (_Nonzero, DynamicOutputShapeException), (_CpuTensor, RuntimeError)])
def test_the_harness_catches_syncs_and_device_mismatches(module, error):
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    model = fake_cuda(module, mode)
    with pytest.raises(error):
        run_counted(mode, lambda: model(torch.randn(4, 8, device="cuda")))


def test_the_harness_records_host_device_copies():
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    with mode:
        x = torch.randn(4, 8, device="cuda")
    _, counter = run_counted(mode, lambda: x + torch.tensor([1.0], device="cuda"))
    assert counter.syncs
    _, counter = run_counted(mode, lambda: x.cpu())
    assert counter.syncs
    _, counter = run_counted(mode, lambda: x * 2.0 + x.sum())   # Python scalars travel with the launch
    assert not counter.syncs and counter.total == 3


def test_the_harness_counts_attention_as_one_op():
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    with mode:
        q = torch.randn(2, 4, 16, 8, device="cuda", dtype=torch.bfloat16)
    _, counter = run_counted(mode, lambda: F.scaled_dot_product_attention(q, q, q))
    assert dict(counter.ops) == {"aten.scaled_dot_product_attention": 1}


# --------------------------------------------------------------------------------------------
# the families


@pytest.fixture(scope="module")
def pdfnet_bf16():
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    return mode, fake_cuda(PDFNet, mode, torch.bfloat16, channels_last=True)


def _pdfnet_inputs(mode, batch, size):
    with mode:
        return torch.randn(batch, 3, size, size, device="cuda"), torch.rand(batch, 1, size, size, device="cuda")


@pytest.mark.parametrize("batch", [8, 1])
def test_pdfnet_cuda_forward_is_sync_free_and_lean(pdfnet_bf16, batch, record_property):
    mode, model = pdfnet_bf16
    image, depth = _pdfnet_inputs(mode, batch, 1024)
    _, first = run_counted(mode, lambda: model(image, depth))
    logits, counter = run_counted(mode, lambda: model(image, depth))
    assert_no_syncs(first)
    assert_no_syncs(counter)
    assert logits.shape == (batch, 1, 1024, 1024) and logits.device.type == "cuda" and logits.dtype == torch.bfloat16
    record_property("aten_ops", counter.total)
    record_property("aten_ops_first_forward", first.total)
    print(f"\nPDFNet 1024² batch {batch} bf16 on fake CUDA: {counter.total} aten ops "
          f"({first.total} in the first forward, which builds the window plans)")
    if batch == 8:
        assert counter.total <= PDFNET_OP_LIMIT, counter.ops.most_common(20)


@pytest.mark.parametrize("revision", ["v1", "v2"])
def test_pdfnet_cuda_forward_other_revision_size_and_dtype(revision):
    """Both FSE formulas, fp32, the sides output, and a side whose maps need padded Swin windows and
    odd patch merges (320: tiles of 40, token maps of 10, 5, 3 and 2), on a narrow Swin."""
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    config = PDFNetConfig(emb=32, swin=SwinConfig(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), ape=True),
                          revision=revision)
    model = fake_cuda(lambda: PDFNet(config), mode, channels_last=True)
    image, depth = _pdfnet_inputs(mode, 2, 320)
    out, counter = run_counted(mode, lambda: model(image, depth, with_sides=True))
    assert_no_syncs(counter)
    assert out.logits.shape == (2, 1, 320, 320) and len(out.sides) == 5


def test_birefnet_cuda_forward_is_sync_free(record_property):
    """Swin-T (the code of every variant): at 256 its maps need padded windows, at 128 one window."""
    size = 256
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    model = fake_cuda(lambda: BiRefNet(VARIANTS["swin_v1_t"]), mode, torch.bfloat16)
    with mode:
        image = torch.randn(2, 3, size, size, device="cuda")
    logits, counter = run_counted(mode, lambda: model(image))
    assert_no_syncs(counter)
    assert logits.shape == (2, 1, size, size) and logits.device.type == "cuda"
    record_property("aten_ops", counter.total)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_depth_anything_cuda_forward_is_sync_free(dtype, record_property):
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    model = fake_cuda(lambda: build_depth_anything("vits"), mode, dtype, channels_last=True)
    with mode:
        x = torch.randn(2, 3, 518, 392, device="cuda", dtype=dtype)
    depth, counter = run_counted(mode, lambda: model(x))
    assert_no_syncs(counter)
    assert depth.shape == (2, 518, 392) and depth.device.type == "cuda"
    record_property("aten_ops", counter.total)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_segrefiner_cuda_unet_step_is_sync_free(dtype, record_property):
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    model = fake_cuda(SegRefinerNet, mode, dtype)
    with mode:
        image = torch.randn(4, 3, 256, 256, device="cuda", dtype=dtype)
        mask = torch.rand(4, 1, 256, 256, device="cuda")
        fine = torch.zeros(4, 1, 256, 256, device="cuda")
    (logits, fine), counter = run_counted(mode, lambda: reverse_step(model, image, mask, fine, 3))
    assert_no_syncs(counter)
    assert logits.shape == (4, 1, 256, 256) and fine.device.type == "cuda"
    record_property("aten_ops", counter.total)


# --------------------------------------------------------------------------------------------
# what the sync-free code replaced still computes the same, and the CPU keeps its checks


def test_cpu_inputs_are_still_checked_for_nan():
    bad = torch.zeros(1, 3, 32, 32)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="image contains NaN or inf values"):
        check_inputs(bad, torch.zeros(1, 1, 32, 32), 32)
    with pytest.raises(ValueError, match="depth contains NaN or inf values"):
        check_inputs(torch.zeros(1, 3, 32, 32), bad[:, :1], 32)
    with pytest.raises(ValueError, match="image contains NaN or inf values"):
        check_image(bad, 32)


@pytest.mark.parametrize("h, w, window, shift", [(7, 9, 7, 3), (12, 12, 12, 6), (30, 17, 12, 6), (5, 5, 12, 0),
                                                 (25, 24, 12, 0), (8, 8, 12, 6)])
def test_window_layout_scatter_inverts_gather(h, w, window, shift):
    layout = WindowLayout.build(h, w, window, shift, "cpu")
    real = layout.gather < h * w
    expected = torch.empty(h * w, dtype=torch.long)
    expected[layout.gather[real]] = torch.arange(layout.gather.numel())[real]
    assert torch.equal(layout.scatter, expected)


@pytest.mark.parametrize("n_in, n_out", [(1024, 512), (512, 1024), (1024, 4096), (37, 100), (100, 37), (5, 1),
                                         (64, 64)])
def test_host_taps_equal_the_device_taps(n_in, n_out):
    i0, i1, _ = linear_taps(n_in, n_out)
    h0, h1 = host_taps(n_in, n_out)
    assert torch.equal(torch.from_numpy(h0.copy()), i0) and torch.equal(torch.from_numpy(h1.copy()), i1)


def test_kept_attention_biases_follow_the_weights():
    torch.manual_seed(0)
    stage = SwinStage(32, 2, 2, 7, 4.0, 1e-5, downsample=False).eval()
    for p in stage.parameters():
        nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 5, 6, 32)   # one padded window: the small biases that are kept

    def fresh():
        copy = SwinStage(32, 2, 2, 7, 4.0, 1e-5, downsample=False).eval()
        copy.load_state_dict(stage.state_dict())
        return copy(x)

    with torch.no_grad():
        before = stage(x)
        assert torch.equal(stage(x), before)
        stage.blocks[1].attn.relative_position_bias_table.mul_(3)   # in place: a new version
        assert torch.equal(stage(x), fresh())
        stage.half().float()                                        # new data under the same tensor
        assert torch.equal(stage(x), fresh())
    assert torch.equal(stage(x), fresh())                          # with autograd: computed, not kept


def test_a_stage_built_in_inference_mode_keeps_its_biases():
    """ComfyUI runs its nodes, the loaders too, under torch.inference_mode: the weights are then
    inference tensors, which keep no version counter to compare."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 32)
    with torch.inference_mode():
        stage = SwinStage(32, 2, 2, 7, 4.0, 1e-5, downsample=False).eval()
        assert stage.blocks[0].attn.relative_position_bias_table.is_inference()
        first = stage(x)
        assert torch.equal(stage(x), first) and stage._cache
        stage.half().float()                                         # new storage: rebuilt
        fresh = SwinStage(32, 2, 2, 7, 4.0, 1e-5, downsample=False).eval()
        fresh.load_state_dict(stage.state_dict())
        assert torch.equal(stage(x), fresh(x)) and not torch.equal(stage(x), first)


def test_plans_kept_in_inference_mode_do_not_reach_training():
    stage = SwinStage(16, 2, 2, 4, 4.0, 1e-5, downsample=False)
    x = torch.randn(1, 6, 7, 16)
    with torch.inference_mode():
        stage(x)
    stage(x).sum().backward()   # would fail on index tensors made in inference mode
    assert stage.blocks[0].attn.relative_position_bias_table.grad is not None


def test_kept_biases_take_the_attention_dtype_under_autocast():
    stage = SwinStage(16, 2, 2, 4, 4.0, 1e-5, downsample=False).eval()
    x = torch.randn(1, 6, 7, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(stage(x), stage(x))


def test_a_stage_with_kept_plans_copies_and_pickles_without_them():
    import copy
    import pickle
    stage = SwinStage(16, 2, 2, 4, 4.0, 1e-5, downsample=False).eval()
    x = torch.randn(1, 6, 7, 16)
    with torch.no_grad():
        out = stage(x)
        for clone in (copy.deepcopy(stage), pickle.loads(pickle.dumps(stage))):
            assert not clone._cache and torch.equal(clone(x), out)
    assert stage._cache
