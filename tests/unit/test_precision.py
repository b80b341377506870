"""What "auto" precision means per device (pdfnet_core.precision) and in the loader nodes (nodes.host)."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from pdfnet_core import auto_dtype, family
from pdfnet_core import precision

CPU = torch.device("cpu")
BF16 = (torch.bfloat16,)


def test_cpu_bf16_support_is_onednn_native_bf16():
    assert precision.bf16_supported(CPU) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert not precision.fp16_supported(CPU)


@pytest.mark.parametrize("native", [True, False])
def test_auto_picks_bf16_on_a_cpu_only_where_native(monkeypatch, native):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    assert auto_dtype(BF16, CPU) == (torch.bfloat16 if native else torch.float32)
    assert auto_dtype(BF16, "cpu") == auto_dtype(BF16, CPU)
    # a family that lists no half type stays fp32, and fp16 is never chosen on a CPU
    assert auto_dtype((), CPU) == torch.float32
    assert auto_dtype((torch.float16,), CPU) == torch.float32
    assert auto_dtype((torch.float16, torch.bfloat16), CPU) == (torch.bfloat16 if native else torch.float32)


def test_auto_on_cuda_follows_the_compute_capability(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, bf16, fp16 in (((6, 1), torch.float32, torch.float32), ((7, 5), torch.float32, torch.float16),
                                   ((8, 6), torch.bfloat16, torch.float16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert auto_dtype(BF16, cuda) == bf16
        assert auto_dtype((torch.float16,), cuda) == fp16
        assert auto_dtype((torch.bfloat16, torch.float16), cuda) == (bf16 if bf16 != torch.float32 else fp16)
    assert auto_dtype(BF16, torch.device("meta")) == torch.float32


def test_family_auto_dtypes_reach_the_choice(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert auto_dtype(family("pdfnet").auto_dtypes, CPU) == torch.bfloat16
    assert auto_dtype(family("segrefiner").auto_dtypes, CPU) == torch.float32


@pytest.fixture
def fake_mm(monkeypatch):
    """A comfy.model_management that says no half type is any good anywhere (as ComfyUI does on CPUs)."""
    mm = types.ModuleType("comfy.model_management")
    mm.should_use_bf16 = lambda device=None, prioritize_performance=True: False
    mm.should_use_fp16 = lambda device=None, prioritize_performance=True: False
    comfy = types.ModuleType("comfy")
    comfy.model_management = mm
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    return mm


def test_loader_nodes_auto_on_a_cpu_uses_the_core_choice(monkeypatch, fake_mm):
    from nodes import host

    for native in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda n=native: n)
        expected = torch.bfloat16 if native else torch.float32
        assert host.resolve_dtype("auto", family("pdfnet").auto_dtypes, CPU) == expected
        assert host.resolve_dtype("auto", family("segrefiner").auto_dtypes, CPU) == torch.float32
        assert host.resolve_dtype("fp32", family("pdfnet").auto_dtypes, CPU) == torch.float32
    fake_mm.FORCE_FP32 = True
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert host.resolve_dtype("auto", family("pdfnet").auto_dtypes, CPU) == torch.float32
    assert host.resolve_dtype("bf16", family("pdfnet").auto_dtypes, CPU) == torch.bfloat16


def test_loader_nodes_auto_on_a_gpu_asks_comfyui(fake_mm):
    from nodes import host

    gpu = torch.device("cuda", 0)
    assert host.resolve_dtype("auto", BF16, gpu) == torch.float32
    fake_mm.should_use_bf16 = lambda device=None, prioritize_performance=True: True
    assert host.resolve_dtype("auto", BF16, gpu) == torch.bfloat16
