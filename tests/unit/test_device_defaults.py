"""Defaults that fit the device: the command line and the default models take the resolved device
(auto: CUDA, then MPS, then the CPU), run auto precision on CUDA (fp32 elsewhere), may use TF32 for
fp32 on CUDA, and size ``--batch-size auto`` from the free memory."""
from __future__ import annotations

import pytest
import torch

from pdfnet_core import cli
from pdfnet_core.batch.stages import CutoutModels, auto_batch_size
from pdfnet_core.families import family
from pdfnet_core.memory import HEADROOM, fitting_batch
from pdfnet_core.precision import default_dtype_name, dtype_for


@pytest.fixture()
def tf32_restored():
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _config(*flags: str):
    return cli._cutout_config(cli._parser().parse_args(["cutout", "a.png", "--out", "o", *flags]))


def test_precision_follows_the_device(tf32_restored):
    assert default_dtype_name(torch.device("cpu")) == "fp32" and default_dtype_name("cuda:1") == "auto"
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu = _config("--device", "cpu")
    assert cpu.dtype == "fp32" and not torch.backends.cuda.matmul.allow_tf32   # the CPU's numbers stay official
    gpu = _config("--device", "cuda")
    assert gpu.dtype == "auto" and gpu.prefetch == 2
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert _config("--device", "cuda", "--dtype", "fp32").dtype == "fp32"
    # auto on a CPU without native bf16 is fp32; PDFNet and Depth-Anything take bf16 where it is native
    assert dtype_for("fp16", family("pdfnet").auto_dtypes, "cpu") == torch.float16
    assert family("segrefiner").auto_dtypes == () and dtype_for("auto", (), "cuda") == torch.float32


def test_batch_size_auto_fits_the_free_memory():
    per_image = 100
    assert fitting_batch(per_image, None) == 1                               # a CPU: one image at a time
    assert fitting_batch(per_image, 1_000) == int(1_000 * HEADROOM) // per_image == 8
    assert fitting_batch(per_image, 1_000, reserve_bytes=750) == 1          # the weights take the room
    assert fitting_batch(per_image, 10**12) == 16 and fitting_batch(per_image, 10**12, images=3) == 3
    cfg = _config("--batch-size", "auto", "--device", "cpu")
    assert cfg.auto_batch and cfg.segment.batch_size == 1
    assert not _config("--batch-size", "4").auto_batch and _config("--batch-size", "4").segment.batch_size == 4
    assert auto_batch_size(cfg, CutoutModels(None, None)) == 1
    with pytest.raises(SystemExit):
        _config("--batch-size", "many")
