"""BiRefNet's CPU fast paths give what the plain formulations give (the parity tests cover the whole net)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pdfnet_core.models.birefnet import deform_conv
from pdfnet_core.models.birefnet.net import ASPPDeformable


def _dcn_inputs(n=2, c=3, h=7, w=5, k=3, o=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    offset = 3.0 * torch.randn(n, 2 * k * k, h, w, generator=g, dtype=torch.float64)   # many outside the map
    mask = 2 * torch.rand(n, k * k, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(o, c, k, k, generator=g, dtype=torch.float64)
    return x, offset, weight, mask, k // 2


def test_cpu_tensors_use_the_pure_torch_backend():
    assert deform_conv.default_backend(torch.device("cpu")) == "torch"
    assert deform_conv.default_backend(torch.device("cuda")) == deform_conv.DEFAULT_BACKEND


def test_chunked_rows_and_batch_give_the_unchunked_result(monkeypatch):
    args = _dcn_inputs()
    whole = deform_conv.deform_conv2d_torch(*args)
    monkeypatch.setattr(deform_conv, "_COLUMN_BUDGET", 1)   # one output row per chunk
    chunked = deform_conv.deform_conv2d_torch(*args)
    assert chunked.shape == (2, 4, 7, 5)
    assert torch.equal(chunked, whole)
    x, offset, weight, mask, padding = args
    single = torch.cat([deform_conv.deform_conv2d_torch(x[i:i + 1], offset[i:i + 1], weight, mask[i:i + 1], padding)
                        for i in range(2)])
    assert (single - whole).abs().max().item() <= 1e-12


def test_aspp_sum_of_weight_slices_equals_the_concatenation():
    torch.manual_seed(0)
    aspp = ASPPDeformable(4).double().eval()
    for bn in (m for m in aspp.modules() if hasattr(m, "running_var")):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        branches = [aspp.aspp1(x)] + [b(x) for b in aspp.aspp_deforms]
        branches.append(aspp.global_avg_pool(x).expand_as(branches[0]))
        plain = F.relu(aspp.bn1(aspp.conv1(torch.cat(branches, dim=1))))
        assert (aspp(x) - plain).abs().max().item() <= 1e-12
