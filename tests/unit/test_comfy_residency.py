"""The node layer's residency in ComfyUI's memory manager, with the load device not the offload device.

ComfyUI is absent in CI, so its memory manager is the ``comfy`` stand-in of test_nodes.py, which keeps
ComfyUI 0.33's bookkeeping (current_loaded_models, a full load that moves nothing while the model stays
loaded, offloading under pressure) and simulates the GPU by a dtype: the load moves a model's weights
from float64 (the offload "device") to float32 (the load "device").  The models here refuse to run
anywhere but on the load device, as a CUDA model fed CPU tensors (or the reverse) would.

What ComfyUI's own code does with our modules (read at v0.33.0, comfy/model_patcher.py and
comfy/model_management.py) is in nodes/host.py (ComfyResidency, ComfyRuntime); the same path against
a real ComfyUI on a GPU is tests/comfy/test_comfy_gpu_path.py.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import sys

import pytest
import torch

from nodes import adapters as ad
from pdfnet_core import LoadedModel, SegmentOptions, segment
from pdfnet_core.cache import MemoryIdentity
from pdfnet_core.memory import HEADROOM, MAX_BATCH, fitting_batch
from test_nodes import DEPTH_SPEC, PDFNET_SPEC, FakeDepth, FakePDFNet, comfy, images  # noqa: F401  (a fixture)

OFFLOAD_DTYPE = torch.float64       # the simulated offload device (where the loader builds models)
LOAD_DTYPE = torch.float32          # the simulated load device
GPU = torch.device("cuda", 0)       # a label only: nothing is placed there


class OutOfMemoryError(RuntimeError):
    """What torch.cuda raises, matched by name (no CUDA here)."""


class Guarded:
    """Forward passes only on the load device, each recorded (batch size, where the weights live)."""

    def _guard(self, batch: int) -> None:
        assert self.w.dtype == LOAD_DTYPE, f"{type(self).__name__} ran on the offload device"
        if self.oom_above is not None and batch > self.oom_above:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batches.append(batch)
        self.pointers.append(self.w.data_ptr())

    def _init_guard(self) -> None:
        self.batches: list[int] = []
        self.pointers: list[int] = []
        self.oom_above: int | None = None
        self.after = None   # called after a forward pass (ComfyUI acting between batches)

    def _after(self) -> None:
        if self.after is not None:
            after, self.after = self.after, None
            after()


class GuardedPDFNet(Guarded, FakePDFNet):
    def __init__(self) -> None:
        FakePDFNet.__init__(self)
        self._init_guard()

    def forward(self, image, depth):
        self._guard(image.shape[0])
        out = FakePDFNet.forward(self, image, depth)
        self._after()
        return out


class GuardedDepth(Guarded, FakeDepth):
    def __init__(self) -> None:
        FakeDepth.__init__(self)
        self._init_guard()

    def forward(self, x):
        self._guard(x.shape[0])
        return FakeDepth.forward(self, x)


@pytest.fixture()
def gpu(comfy):  # noqa: F811  (the fixture imported above)
    """The stand-in ComfyUI with a GPU load device and our residency hook on the test's model cache."""
    from nodes import host

    comfy.load_device, comfy.load_dtype, comfy.offload_dtype = GPU, LOAD_DTYPE, OFFLOAD_DTYPE
    comfy.cache.set_residency_hook(host.ComfyResidency())
    return comfy


def cached(state, name: str, module: torch.nn.Module, spec) -> LoadedModel:
    model = state.cache.get_or_load(MemoryIdentity(name), OFFLOAD_DTYPE, "cpu", lambda: module.to(OFFLOAD_DTYPE))
    return LoadedModel(model, spec)


def models(state) -> tuple[LoadedModel, LoadedModel]:
    return cached(state, "pdfnet", GuardedPDFNet(), PDFNET_SPEC), cached(state, "depth", GuardedDepth(), DEPTH_SPEC)


def reference(image: torch.Tensor, **options) -> torch.Tensor:
    """The masks of the same models placed on the load device by hand, one image per pass."""
    net = LoadedModel(GuardedPDFNet().to(LOAD_DTYPE), PDFNET_SPEC)
    dam = LoadedModel(GuardedDepth().to(LOAD_DTYPE), DEPTH_SPEC)
    return torch.stack(segment(image, model=net, depth_model=dam, options=SegmentOptions(**options)))


def uploads(state, model: LoadedModel) -> int:
    return sum(1 for patcher in state.calls["uploads"] if patcher.model is model.module)


def free_for(state, net: LoadedModel, dam: LoadedModel, batch: int, size: int = 64) -> int:
    """What get_free_memory must report for ``batch`` images of the segmenter to fit beside both models."""
    per_image = net.activation_bytes(size, 1, device=GPU)
    weights = sum(t.nbytes for m in (net, dam) for t in m.module.state_dict().values())
    # fitting_batch's rule: the batch's activations within HEADROOM of what is free for them
    return math.ceil(batch * per_image / HEADROOM) + weights + state.reserved


# --------------------------------------------------------------------------------------------
# the patcher


def test_the_dynamic_vram_patcher_is_never_used_for_our_modules(gpu):
    """ComfyUI 0.33's ModelPatcherDynamic re-copies every weight of a plain nn.Module to the GPU on
    each load_models_gpu call (its partially_load always calls load, which restores the backups
    first); the plain ModelPatcher keeps it loaded.  main.py makes CoreModelPatcher the dynamic one
    where comfy-aimdo works."""
    from nodes import host

    mp = sys.modules["comfy.model_patcher"]

    class ModelPatcherDynamic(mp.ModelPatcher):
        def is_dynamic(self):
            return True

        def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
            self.offload()            # restore_loaded_backups(): the offload-device weights
            return super().partially_load(device_to, extra_memory)   # and every weight copied again

    mp.ModelPatcherDynamic = ModelPatcherDynamic
    assert host.patcher_class(mp).__name__ == "CorePatcher"          # not dynamic: ComfyUI's choice
    mp.CoreModelPatcher = ModelPatcherDynamic                         # what main.py does with aimdo
    assert host.patcher_class(mp) is mp.ModelPatcher
    net, dam = models(gpu)
    image = images(6)
    got = ad.segment_images(image, net, SegmentOptions(size=64), host.ComfyRuntime(), depth_model=dam)
    torch.testing.assert_close(got, reference(image, size=64), rtol=0, atol=1e-6)
    assert type(gpu.cache.handle_for(net.module)) is mp.ModelPatcher
    assert uploads(gpu, net) == uploads(gpu, dam) == 1
    # what the dynamic patcher would have done: one upload per call
    dynamic = ModelPatcherDynamic(FakePDFNet(), GPU, torch.device("cpu"))
    mm = sys.modules["comfy.model_management"]
    for _ in range(3):
        mm.load_models_gpu([dynamic], force_full_load=True)
    assert sum(1 for p in gpu.calls["uploads"] if p is dynamic) == 3


# --------------------------------------------------------------------------------------------
# one residency call per node execution


def test_segment_moves_the_weights_once_per_execution_and_batches_to_the_free_memory(gpu):
    from nodes import host

    net, dam = models(gpu)
    gpu.free_memory = free_for(gpu, net, dam, 3)
    image = images(11)
    side = ad.depth_side(40, 56)
    memory = max(net.activation_bytes(64, 3, device=GPU), dam.activation_bytes(side, 4, device=GPU))
    runtime = host.ComfyRuntime()
    got = ad.segment_images(image, net, SegmentOptions(size=64), runtime, depth_model=dam)
    torch.testing.assert_close(got, reference(image, size=64), rtol=0, atol=1e-6)
    # batches of 3 in chunks of 9 images (segment's chunks are a multiple of the batch)
    assert net.module.batches == [3, 3, 3, 2] and dam.module.batches == [4, 4, 1, 2]
    # one load_models_gpu call with both models, the larger of the two runs' memory, full loads
    handles = [gpu.cache.handle_for(net.module), gpu.cache.handle_for(dam.module)]
    assert len(gpu.calls["load_models_gpu"]) == 1
    (loaded, asked, full), = gpu.calls["load_models_gpu"]
    assert loaded == handles and asked == memory and full is True
    # the weights moved once each, and every batch ran on the same weights (never uploaded again)
    assert uploads(gpu, net) == uploads(gpu, dam) == 1
    assert len(set(net.module.pointers)) == len(set(dam.module.pointers)) == 1
    # the next execution: one load_models_gpu call again (ComfyUI's bookkeeping), nothing moved
    again = ad.segment_images(image, net, SegmentOptions(size=64), host.ComfyRuntime(), depth_model=dam)
    assert torch.equal(again, got) and len(gpu.calls["load_models_gpu"]) == 2
    assert uploads(gpu, net) == uploads(gpu, dam) == 1
    assert len(set(net.module.pointers)) == 1


def test_with_a_given_depth_map_only_the_segmenter_is_loaded(gpu):
    from nodes import host

    net, dam = models(gpu)
    dam.module.oom_above = 0   # must not run
    depth = torch.rand(5, 40, 56)
    got = ad.segment_images(images(5), net, SegmentOptions(size=64), host.ComfyRuntime(), depth_model=dam, depth=depth)
    want = segment(images(5), depth, LoadedModel(GuardedPDFNet().to(LOAD_DTYPE), PDFNET_SPEC), size=64)
    torch.testing.assert_close(got, torch.stack(want), rtol=0, atol=1e-6)
    assert [call[0] for call in gpu.calls["load_models_gpu"]] == [[gpu.cache.handle_for(net.module)]]
    assert net.module.batches == [5] and uploads(gpu, dam) == 0


@pytest.mark.parametrize("how", ["unloaded", "partly", "evicted"])
def test_a_model_offloaded_between_batches_is_loaded_again(gpu, how):
    """ComfyUI may offload a model between two batches (another model's load, the pack's cache
    evicting it): the next batch finds out cheaply and loads it again, else it would run off the
    load device (on CUDA: the crash of weights and inputs on two devices)."""
    from nodes import host

    net, dam = models(gpu)
    gpu.free_memory = free_for(gpu, net, dam, 2)
    first = gpu.cache.handle_for(net.module)
    if how == "evicted":
        net.module.after = gpu.cache.clear   # both models leave the cache: their patchers are detached
    else:
        net.module.after = lambda: gpu.unload(first, partly=how == "partly")
    image = images(6)
    got = ad.segment_images(image, net, SegmentOptions(size=64), host.ComfyRuntime(), depth_model=dam)
    torch.testing.assert_close(got, reference(image, size=64), rtol=0, atol=1e-6)
    assert net.module.batches == [2, 2, 2]
    assert len(gpu.calls["load_models_gpu"]) == 2 and uploads(gpu, net) == 2
    assert len(set(net.module.pointers[1:])) == 1            # loaded again once, then kept
    if how == "evicted":
        assert gpu.cache.handle_for(net.module) is not first and first in gpu.calls["detached"]
    else:
        assert uploads(gpu, dam) == 1                          # the other model stayed loaded


def test_on_a_cpu_batches_stay_at_one_with_one_residency_call(comfy):  # noqa: F811
    from nodes import host

    comfy.cache.set_residency_hook(host.ComfyResidency())
    comfy.load_dtype, comfy.offload_dtype = LOAD_DTYPE, OFFLOAD_DTYPE   # still "moved": the guard holds
    net, dam = models(comfy)
    comfy.free_memory = 1 << 40
    image = images(5)
    got = ad.segment_images(image, net, SegmentOptions(size=64), host.ComfyRuntime(), depth_model=dam)
    torch.testing.assert_close(got, reference(image, size=64), rtol=0, atol=1e-6)
    assert net.module.batches == [1] * 5 and dam.module.batches == [4, 1]
    assert len(comfy.calls["load_models_gpu"]) == 1 and uploads(comfy, net) == 1


def test_depth_estimate_and_segrefine_make_one_residency_call(gpu):
    from nodes import host
    from test_nodes_families import SEGREFINER_SPEC, FakeSegRefiner

    _, dam = models(gpu)
    gpu.free_memory = 1 << 40
    image = images(20)
    depth = ad.estimate_depth_images(image, dam, host.ComfyRuntime())
    want = ad.estimate_depth_images(image, LoadedModel(GuardedDepth().to(LOAD_DTYPE), DEPTH_SPEC), ad_runtime())
    torch.testing.assert_close(depth, want, rtol=0, atol=1e-6)
    assert dam.module.batches == [16, 4]                      # MAX_BATCH, then the rest
    assert len(gpu.calls["load_models_gpu"]) == 1 and uploads(gpu, dam) == 1
    refiner = cached(gpu, "segrefiner", FakeSegRefiner(), SEGREFINER_SPEC)
    out = ad.segrefiner_images(images(3, 20, 24), torch.ones(1, 20, 24), refiner, "hr", 0, host.ComfyRuntime())
    assert out.shape == (3, 20, 24) and len(gpu.calls["load_models_gpu"]) == 2 and uploads(gpu, refiner) == 1


def test_segrefine_asks_for_the_memory_of_the_load_device_before_residency(gpu):
    """Until load_models_gpu runs, SegRefiner's weights sit on the offload device, where its
    work size is the official 32-patch batch (10.7 GiB in fp32): the request is priced for the load
    device instead."""
    from nodes import host
    from test_nodes_families import SEGREFINER_SPEC, FakeSegRefiner

    asked = []

    def work_size(model, device=None):
        asked.append(None if device is None else torch.device(device))
        return (256, 32) if device is None or torch.device(device).type == "cpu" else (256, 2)

    spec = dataclasses.replace(SEGREFINER_SPEC, work_size=work_size)
    refiner = cached(gpu, "segrefiner", FakeSegRefiner(), spec)
    want, official = (refiner.activation_bytes(256, batch, device=GPU) for batch in (2, 32))
    ad.segrefiner_images(images(2, 20, 24), torch.ones(1, 20, 24), refiner, "hr", 0, host.ComfyRuntime())
    assert asked == [GPU]
    (_, memory, _), = gpu.calls["load_models_gpu"]
    assert memory == want < official


def ad_runtime():
    from test_nodes import FakeRuntime

    return FakeRuntime()


# --------------------------------------------------------------------------------------------
# batch sizing


def test_the_batch_fits_the_free_memory_up_to_sixteen_and_the_image_count():
    assert fitting_batch(100, 350, images=10) == 2          # HEADROOM: 280 bytes of the 350
    assert fitting_batch(100, 50, images=10) == 1           # never below 1
    assert fitting_batch(100, 10**9, images=40) == MAX_BATCH == 16
    assert fitting_batch(100, 10**9, images=5) == 5
    assert ad.depth_side(40, 56) == (518, 728) and ad.depth_side(518, 518) == (518, 518)


def test_the_budget_is_free_memory_less_the_reserve_and_what_is_not_loaded_yet(gpu):
    from nodes import host

    net, dam = models(gpu)
    gpu.free_memory, gpu.reserved = 10_000, 1_000
    runtime = host.ComfyRuntime()
    assert runtime.activation_budget([net.module, dam.module, net.module]) == (GPU, 10_000 - 1_000 - 8 - 8)
    runtime.resident(net.module, 0)
    assert runtime.activation_budget([net.module, dam.module]) == (GPU, 10_000 - 1_000 - 8)
    gpu.load_device = torch.device("cpu")
    assert host.ComfyRuntime().activation_budget([net.module]) is None


# --------------------------------------------------------------------------------------------
# out of memory


def test_out_of_memory_halves_the_batch_and_retries(gpu, caplog):
    from nodes import host

    net, dam = models(gpu)
    gpu.free_memory = free_for(gpu, net, dam, 8)
    net.module.oom_above = 2
    image = images(8)
    runtime = host.ComfyRuntime()
    with caplog.at_level(logging.INFO):
        got = ad.segment_images(image, net, SegmentOptions(size=64), runtime, depth_model=dam)
    torch.testing.assert_close(got, reference(image, size=64), rtol=0, atol=1e-6)
    assert [r.getMessage() for r in caplog.records if "out of GPU memory" in r.getMessage()] == [
        "PDFNet Segment: out of GPU memory at batch 8; retrying at batch 4",
        "PDFNet Segment: out of GPU memory at batch 4; retrying at batch 2"]
    assert len(gpu.calls["empty_cache"]) == 2 and net.module.batches == [2, 2, 2, 2]
    assert len(gpu.calls["load_models_gpu"]) == 1 and uploads(gpu, net) == 1
    bar = gpu.calls["bars"][0]
    assert bar.values == sorted(bar.values) and bar.values[-1] == 16   # never went back


def test_out_of_memory_at_batch_one_says_what_to_do(gpu):
    from nodes import host

    net, dam = models(gpu)
    gpu.free_memory = free_for(gpu, net, dam, 2)
    net.module.oom_above = 0
    with pytest.raises(OutOfMemoryError, match="PDFNet Segment: out of GPU memory at batch 1. Free GPU memory") as info:
        ad.segment_images(images(3), net, SegmentOptions(size=64), host.ComfyRuntime(), depth_model=dam)
    assert "CUDA out of memory" in str(info.value.__cause__)
    assert len(gpu.calls["empty_cache"]) == 1


def test_only_out_of_memory_errors_are_retried(gpu):
    from nodes import host

    assert ad.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert ad.is_out_of_memory(OutOfMemoryError()) and not ad.is_out_of_memory(RuntimeError("out of memory"))
    net, dam = models(gpu)
    gpu.free_memory = free_for(gpu, net, dam, 4)
    net.module.after = lambda: (_ for _ in ()).throw(ValueError("not memory"))
    with pytest.raises(ValueError, match="not memory"):
        ad.segment_images(images(4), net, SegmentOptions(size=64), host.ComfyRuntime(), depth_model=dam)
    assert gpu.calls["empty_cache"] == [] and net.module.batches == [4]


def test_depth_estimate_retries_at_half_the_batch(gpu, caplog):
    from nodes import host

    _, dam = models(gpu)
    gpu.free_memory = 1 << 40
    dam.module.oom_above = 5
    with caplog.at_level(logging.INFO):
        depth = ad.estimate_depth_images(images(12), dam, host.ComfyRuntime())
    assert depth.shape == (12, 40, 56) and dam.module.batches == [3, 3, 3, 3]
    assert [r.getMessage() for r in caplog.records if "out of GPU memory" in r.getMessage()] == [
        "PDFNet Depth Estimate: out of GPU memory at batch 12; retrying at batch 6",
        "PDFNet Depth Estimate: out of GPU memory at batch 6; retrying at batch 3"]
