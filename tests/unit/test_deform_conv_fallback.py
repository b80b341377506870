"""BiRefNet's deformable convolution never takes the node down (issue #24, item 6).

torchvision is imported on first use, not with the model; where its op is missing or fails on the
device, calls that name no backend run the pure-torch path, with one warning.  On the CPU the
failures are simulated: CPU tensors with the default choice forced to "torchvision", and a
torchvision whose op raises what a CPU-only build raises for CUDA tensors.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import types

import pytest
import torch

from pdfnet_core.models.birefnet import deform_conv
from pdfnet_core.models.birefnet.net import DeformableConv2d

NO_CUDA_KERNEL = ("Could not run 'torchvision::deform_conv2d' with arguments from the 'CUDA' backend. This could be "
                  "because the operator doesn't exist for this backend, or was omitted during the selective/custom "
                  "build process (if using custom build).")
OTHER_TORCH = "operator torchvision::deform_conv2d does not exist"   # a torchvision built for another torch


def _inputs(n=2, c=3, h=7, w=5, k=3, o=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    offset = 3.0 * torch.randn(n, 2 * k * k, h, w, generator=g)
    mask = 2 * torch.rand(n, k * k, h, w, generator=g)
    weight = torch.randn(o, c, k, k, generator=g)
    return x, offset, weight, mask, k // 2


@pytest.fixture
def fresh(monkeypatch):
    """deform_conv as a new process sees it (torchvision not probed, nothing failed, no pinned
    default), with the default choice forced to "torchvision" for every device, the CPU included."""
    monkeypatch.setattr(deform_conv, "_torchvision", deform_conv._UNPROBED)
    monkeypatch.setattr(deform_conv, "_import_problem", "")
    monkeypatch.setattr(deform_conv, "_failed", {})
    if "DEFAULT_BACKEND" in vars(deform_conv):   # left pinned by another test's monkeypatch
        monkeypatch.delitem(vars(deform_conv), "DEFAULT_BACKEND")
    monkeypatch.setattr(deform_conv, "default_backend", lambda device: "torchvision")
    return deform_conv


def fake_torchvision(monkeypatch, op) -> None:
    """``torchvision.ops.deform_conv2d`` is ``op`` (what the probe imports)."""
    package, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.deform_conv2d = op
    package.ops = ops
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.ops", ops)


def raising(exc: BaseException):
    calls = []

    def op(*args, **kwargs):
        calls.append(args)
        raise exc

    return op, calls


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == deform_conv.__name__]


@pytest.mark.parametrize("exc", [NotImplementedError(NO_CUDA_KERNEL), RuntimeError(OTHER_TORCH)],
                         ids=["no-kernel-for-device", "built-for-another-torch"])
def test_a_failing_torchvision_op_falls_back_to_pure_torch_with_one_warning(fresh, monkeypatch, caplog, exc):
    op, calls = raising(exc)
    fake_torchvision(monkeypatch, op)
    args = _inputs()
    want = deform_conv.deform_conv2d_torch(*args)
    with caplog.at_level(logging.WARNING, logger=deform_conv.__name__):
        first = fresh.deform_conv2d(*args)
        second = fresh.deform_conv2d(*args)
    assert torch.equal(first, want) and torch.equal(second, want)
    assert len(calls) == 1                       # tried once; the device type then stays on pure torch
    (line,) = _warnings(caplog)
    assert f"{type(exc).__name__}: {str(exc).splitlines()[0]}" in line and "\n" not in line
    assert "pure-torch" in line and "same results within float tolerance" in line
    assert fresh.fallback_reason("cpu") is not None and fresh.fallback_reason("cuda") is None


def test_a_missing_torchvision_falls_back_to_pure_torch_with_one_warning(fresh, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torchvision", None)   # import torchvision -> ImportError
    monkeypatch.setitem(sys.modules, "torchvision.ops", None)
    args = _inputs(k=7, h=9, w=11)
    want = deform_conv.deform_conv2d_torch(*args)
    with caplog.at_level(logging.WARNING, logger=deform_conv.__name__):
        outs = [fresh.deform_conv2d(*args) for _ in range(3)]
    assert all(torch.equal(out, want) for out in outs)
    (line,) = _warnings(caplog)
    assert "cannot be imported" in line and "ModuleNotFoundError" in line and "same results within float tolerance" in line
    # an explicit backend is that backend or an error: benchmarks and parity tests never measure the other
    with pytest.raises(ValueError, match="not available"):
        fresh.deform_conv2d(*args, backend="torchvision")
    assert "torchvision" not in fresh.BACKENDS and fresh.DEFAULT_BACKEND == "torch"


def test_the_model_forward_survives_a_failing_torchvision(fresh, monkeypatch, caplog):
    torch.manual_seed(0)
    layer = DeformableConv2d(4, 6, 3).eval()
    x = torch.randn(1, 4, 12, 10)
    with torch.no_grad():
        offset, mask = layer.offset_conv(x), 2.0 * torch.sigmoid(layer.modulator_conv(x))
        want = deform_conv.deform_conv2d_torch(x, offset, layer.regular_conv.weight, mask, layer.padding)
        fake_torchvision(monkeypatch, raising(NotImplementedError(NO_CUDA_KERNEL))[0])
        with caplog.at_level(logging.WARNING, logger=deform_conv.__name__):
            out = layer(x)
    assert torch.equal(out, want) and len(_warnings(caplog)) == 1


def test_a_working_torchvision_op_is_used_without_a_warning(fresh, monkeypatch, caplog):
    calls = []

    def op(x, offset, weight, bias, padding, mask):
        calls.append(x.dtype)
        return deform_conv.deform_conv2d_torch(x, offset, weight, mask, padding[0])

    fake_torchvision(monkeypatch, op)
    args = _inputs()
    with caplog.at_level(logging.WARNING, logger=deform_conv.__name__):
        out = fresh.deform_conv2d(*args)
        half = fresh.deform_conv2d(*(a.to(torch.bfloat16) for a in args[:4]), args[4])
    assert torch.equal(out, deform_conv.deform_conv2d_torch(*args))
    assert calls == [torch.float32, torch.float32]          # bfloat16 runs torchvision's op in float32
    assert half.dtype == torch.bfloat16
    assert not _warnings(caplog) and fresh.fallback_reason("cpu") is None


def test_out_of_memory_is_not_taken_for_a_missing_kernel(fresh, monkeypatch):
    fake_torchvision(monkeypatch, raising(torch.cuda.OutOfMemoryError("CUDA out of memory."))[0])
    with pytest.raises(torch.cuda.OutOfMemoryError):
        fresh.deform_conv2d(*_inputs())
    assert fresh.fallback_reason("cpu") is None


def test_the_real_default_choice_follows_a_recorded_failure(monkeypatch):
    monkeypatch.setattr(deform_conv, "_torchvision", lambda *args: None)   # "torchvision loads"
    monkeypatch.setattr(deform_conv, "_failed", {})
    if "DEFAULT_BACKEND" in vars(deform_conv):
        monkeypatch.delitem(vars(deform_conv), "DEFAULT_BACKEND")
    cuda = torch.device("cuda")
    assert deform_conv.default_backend(torch.device("cpu")) == "torch"
    assert deform_conv.default_backend(cuda) == "torchvision" == deform_conv.DEFAULT_BACKEND
    deform_conv._fall_back("cuda", "test")
    assert deform_conv.default_backend(cuda) == "torch" and deform_conv.fallback_reason(cuda) == "test"
    monkeypatch.setitem(vars(deform_conv), "DEFAULT_BACKEND", "torchvision")   # a pin does not override it
    assert deform_conv.default_backend(cuda) == "torch"


def test_importing_the_models_does_not_import_torchvision():
    code = ("import sys, pdfnet_core, pdfnet_core.families, pdfnet_core.models.birefnet.net; "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
