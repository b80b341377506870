"""A model runs where it is *after* ``before_run``: every entry point reads device and dtype after
the residency call, every batch.

Inside ComfyUI, ``before_run`` is ``load_models_gpu``, which moves a model from the offload device to
the GPU; reading the placement first sends the inputs to the CPU while the weights sit on CUDA (the
first run after every load or offload crashed).  On a CPU the same mistake shows with a
``before_run`` that changes the model's placement another way: it converts the model to bfloat16,
and inputs still made for float32 then fail inside the first convolution ("Input type (float) and
bias type (c10::BFloat16) should be the same").
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pdfnet_core
from nodes import adapters as ad
from pdfnet_core.models.common.swin import SwinConfig
from pdfnet_core.models.depth_anything.net import DepthAnythingConfig, DepthAnythingV2
from pdfnet_core.models.pdfnet.net import PDFNet, PDFNetConfig
from synthetic_birefnet import synthetic_state_dict as birefnet_weights
from test_nodes import FakeRuntime


def _scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 40, np.uint8)
    img[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = (200, 120, 60)
    return np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)


MOVED = torch.bfloat16


EVENTS: list[str] = []


class Moves:
    """A ``before_run`` that moves the model (to bfloat16) and records what it was asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, module: torch.nn.Module, memory_required: int) -> None:
        self.calls.append((type(module).__name__, memory_required))
        EVENTS.append(f"resident {type(module).__name__}")
        module.to(MOVED)


@pytest.fixture(autouse=True)
def placement_reads(monkeypatch):
    """Every read of a model's placement by the pipeline, in order with the residency calls."""
    import pdfnet_core.depth
    import pdfnet_core.pipeline
    from pdfnet_core.specs import parameter_placement

    def recorded(module):
        EVENTS.append(f"placement {type(module).__name__}")
        return parameter_placement(module)

    EVENTS.clear()
    for module in (pdfnet_core.pipeline, pdfnet_core.depth):
        monkeypatch.setattr(module, "parameter_placement", recorded)
    yield EVENTS


def _read_after_residency(events: list[str]) -> bool:
    """Each placement read follows the residency call of its model, with nothing in between."""
    return all(i > 0 and events[i - 1] == "resident " + e.split(" ", 1)[1]
               for i, e in enumerate(events) if e.startswith("placement"))


# Small builds of the real module trees (bf16 is emulated, hence slow, on CPUs without AVX-512 BF16).
TINY_PDFNET = PDFNetConfig(emb=16, swin=SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2),
                                                   window_size=4, ape=True, pretrain_img_size=64))
TINY_DEPTH = DepthAnythingConfig("vits", 32, 4, 2, 16, (8, 16, 32, 32), (0, 1, 2, 3), "Apache-2.0")


@pytest.fixture()
def pdfnet():
    torch.manual_seed(0)
    return PDFNet(TINY_PDFNET).eval().requires_grad_(False)


@pytest.fixture()
def depth_anything():
    torch.manual_seed(0)
    return DepthAnythingV2(TINY_DEPTH).eval().requires_grad_(False)


def _moved(model: torch.nn.Module) -> torch.nn.Module:
    return model.to(MOVED)


def test_segment_with_given_depth(pdfnet):
    image, depth = _scene(64, 64), np.random.default_rng(1).random((64, 64))
    moves = Moves()
    got = pdfnet_core.segment([image, image], [depth, depth], pdfnet, size=64, before_run=moves)
    assert moves.calls == [("PDFNet", moves.calls[0][1])] * 2 and moves.calls[0][1] > 0   # before each batch
    assert _read_after_residency(EVENTS) and EVENTS.count("placement PDFNet") == 2
    want = pdfnet_core.segment(image, depth, _moved(pdfnet), size=64)[0]
    assert all(torch.equal(g, want) for g in got)


def test_segment_computing_the_depth_prior(pdfnet, depth_anything):
    image = _scene(70, 90)
    moves = Moves()
    got = pdfnet_core.segment(image, model=pdfnet, depth_model=depth_anything, size=64, before_run=moves)[0]
    assert [name for name, _ in moves.calls] == ["DepthAnythingV2", "PDFNet"]
    assert EVENTS == ["resident DepthAnythingV2", "placement DepthAnythingV2", "resident PDFNet", "placement PDFNet"]
    EVENTS.clear()
    want = pdfnet_core.segment(image, model=_moved(pdfnet), depth_model=_moved(depth_anything), size=64)[0]
    assert torch.equal(got, want)


def test_estimate_depth_and_depth_prior(depth_anything):
    image = _scene(56, 70)
    moves = Moves()
    got = pdfnet_core.estimate_depth(image, depth_anything, before_run=moves)[0]
    assert moves.calls and got.dtype == torch.float32
    assert _read_after_residency(EVENTS) and "placement DepthAnythingV2" in EVENTS
    torch.manual_seed(0)
    other = DepthAnythingV2(TINY_DEPTH).eval().requires_grad_(False)
    prior = pdfnet_core.depth_prior(image, other, before_run=Moves())[0]
    assert torch.equal(prior, pdfnet_core.normalize_depth(got))


def test_birefnet(reference_dir):
    model = pdfnet_core.load_birefnet(birefnet_weights(reference_dir, "swin_v1_t"))
    moves = Moves()
    got = pdfnet_core.segment(_scene(50, 70), model=model, size=64, before_run=moves)[0]
    assert [name for name, _ in moves.calls] == ["BiRefNet"] and got.shape == (50, 70)
    assert EVENTS == ["resident BiRefNet", "placement BiRefNet"]


class MovingRuntime(FakeRuntime):
    """The node layer's runtime whose ``resident`` moves the model, as ComfyUI's load_models_gpu does."""

    def resident(self, model, memory_required):
        super().resident(model, memory_required)
        EVENTS.append(f"resident {type(model).__name__}")
        model.to(MOVED)


def test_the_nodes_segment_and_depth_estimate(pdfnet, depth_anything):
    images = torch.from_numpy(np.stack([_scene(64, 64, s) for s in range(2)])).float() / 255
    runtime = MovingRuntime()
    masks = ad.segment_images(images, pdfnet_core.as_loaded(pdfnet), pdfnet_core.SegmentOptions(size=64), runtime,
                              depth_model=pdfnet_core.as_loaded(depth_anything))
    assert masks.shape == (2, 64, 64)
    assert [n for n, _ in runtime.resident_calls] == ["DepthAnythingV2", "PDFNet", "PDFNet"]
    assert _read_after_residency(EVENTS)
    depth = ad.estimate_depth_images(images, pdfnet_core.as_loaded(depth_anything.float()), MovingRuntime())
    assert depth.shape == (2, 64, 64)


def test_segrefiner_reads_its_placement_when_it_runs():
    from test_nodes_families import fake_segrefiner

    model = fake_segrefiner()
    placements = []
    model.module.refine = (lambda refine: lambda *a, **k: (placements.append(
        next(model.module.parameters()).dtype), refine(*a, **k))[1])(model.module.refine)
    ad.segrefiner_images(torch.rand(2, 20, 24, 3), torch.ones(1, 20, 24), model, "hr", 0, MovingRuntime())
    assert placements == [MOVED, MOVED]
