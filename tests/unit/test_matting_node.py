"""The PDFNet Matting node without ComfyUI: its batch adapter (nodes.adapters.matte_images, widget
mapping matting_config) against a fake runtime, and the node class itself against the comfy_api
stand-in of tests/support/node_schemas.py (as test_locales reads the schemas)."""
from __future__ import annotations

import importlib
import sys
import types
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from node_schemas import _stand_ins

from nodes import adapters as ad
from pdfnet_core import InputError, matte
from pdfnet_core.ops import matting


class Cancelled(Exception):
    pass


class FakeRuntime:
    """The Runtime protocol's progress side: one bar per call, every report kept; optionally a cancel
    (what ComfyUI's bar raises) at the given report."""

    def __init__(self, cancel_at: int | None = None) -> None:
        self.bars: list[list[tuple[int, int]]] = []
        self.cancel_at = cancel_at

    def resident(self, model, memory_required):
        raise AssertionError("matting runs no model")

    def progress(self, total: int):
        reports: list[tuple[int, int]] = []
        self.bars.append(reports)

        def report(done: int, of: int) -> None:
            reports.append((done, of))
            if self.cancel_at is not None and len(reports) == self.cancel_at:
                raise Cancelled

        return report


def scene(n: int = 3, size: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` photos of a red disk on blue with different noise, and one blurred low-resolution mask."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    alpha = (12 - torch.sqrt((yy - size / 2) ** 2 + (xx - size / 2) ** 2) + 0.5).clamp(0, 1)
    red, blue = torch.tensor([0.9, 0.2, 0.1]), torch.tensor([0.15, 0.3, 0.85])
    base = alpha[..., None] * red + (1 - alpha[..., None]) * blue
    images = (base + 0.03 * torch.rand(n, size, size, 3, generator=g)).clamp(0, 1)
    small = F.avg_pool2d(alpha[None, None], 4)
    mask = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)[0]
    return images, mask


CONFIG = ad.matting_config(network_size=10, band=1.5, fine_hair=0.0, edge_shift=0, despill="none",
                           despill_color="#00FF00", despill_strength=1.0, foreground="blur_fusion")


# --------------------------------------------------------------------------------------------
# the batch adapter


def test_one_mask_for_a_batch_is_matted_image_by_image_with_the_bar_moving_each_time():
    images, mask = scene(3)
    runtime = FakeRuntime()
    alpha, fg = ad.matte_images(images, mask, CONFIG, runtime)
    assert alpha.shape == (3, 40, 40) and fg.shape == (3, 40, 40, 3)
    steps = ad.matting_steps(40, 40, CONFIG)    # the alpha's tile and the colours' tile
    assert steps == 2
    assert runtime.bars == [[(k, 3 * steps) for k in range(1, 3 * steps + 1)]]
    for i in range(3):   # each result is that image's own matte under the shared mask
        a, f = matte(images[i:i + 1], mask, CONFIG)
        assert torch.equal(alpha[i], a[0]) and torch.equal(fg[i], f[0])
    assert not torch.equal(alpha[0], alpha[1])    # the photos differ, so do their alphas
    assert float((alpha - mask).abs().max()) > 0.05   # matting changed the mask


def test_a_lone_hw_mask_and_a_device_are_taken_as_comfyui_hands_them():
    images, mask = scene(1)
    alpha, fg = ad.matte_images(images, mask[0], CONFIG, FakeRuntime(), device="cpu")
    assert alpha.shape == (1, 40, 40) and fg.device.type == "cpu"


def test_a_cancel_stops_the_image_at_the_tile_it_came_in(monkeypatch):
    images, mask = scene(3)
    images = F.interpolate(images.permute(0, 3, 1, 2), size=(120, 120), mode="bilinear").permute(0, 2, 3, 1)
    mask = F.interpolate(mask[None], size=(120, 120), mode="bilinear")[0]
    config = replace(CONFIG, tile_size=40)
    steps = ad.matting_steps(120, 120, config)      # 1 + 4 + 9 tiles over the three levels, 9 for the colours
    assert steps == 23
    solved = []
    real = matting._solve_window
    monkeypatch.setattr(matting, "_solve_window", lambda *a: solved.append(1) or real(*a))
    runtime = FakeRuntime(cancel_at=2)
    with pytest.raises(Cancelled):
        ad.matte_images(images, mask, config, runtime)
    assert runtime.bars[0] == [(1, 3 * steps), (2, 3 * steps)]
    assert 1 <= len(solved) <= 2                     # no tile ran after the cancel


def test_bad_batches_are_refused_before_any_image_runs(monkeypatch):
    images, mask = scene(2)
    monkeypatch.setattr(ad, "matte", lambda *a: pytest.fail("no image may run before the inputs are checked"))
    runtime = FakeRuntime()
    with pytest.raises(InputError, match="resize the mask to the image's 40x40"):
        ad.matte_images(images, mask[:, :32], CONFIG, runtime)
    with pytest.raises(InputError, match="image has 2 items and mask has 3"):
        ad.matte_images(images, mask.expand(3, 40, 40), CONFIG, runtime)
    with pytest.raises(InputError, match=r"\[B,H,W\] mask"):
        ad.matte_images(images, images, CONFIG, runtime)
    assert runtime.bars == []


def test_widgets_become_the_matting_config():
    cfg = ad.matting_config(network_size=0, band=3.0, fine_hair=0.5, edge_shift=-2, despill="color",
                            despill_color="#20C040", despill_strength=0.5, foreground="none")
    assert cfg.trimap.network_size is None and cfg.trimap.band == 3.0 and cfg.trimap.fine_hair == 0.5
    assert cfg.edge_shift == -2 and cfg.foreground == "none"
    assert cfg.despill.key == "#20C040" and cfg.despill.strength == 0.5
    assert ad.matting_config(network_size=1024, band=1.5, fine_hair=0, edge_shift=0, despill="green",
                             despill_color="#20C040", despill_strength=1, foreground="multilevel").despill.key == "green"
    with pytest.raises(InputError, match="despill key 'nope'"):
        ad.matting_config(network_size=1024, band=1.5, fine_hair=0, edge_shift=0, despill="color",
                          despill_color="nope", despill_strength=1, foreground="multilevel")


# --------------------------------------------------------------------------------------------
# the node class, against the comfy_api stand-in


@pytest.fixture
def node_module(monkeypatch):
    """nodes.matting imported against the stand-in comfy_api, with the host's ComfyUI calls faked."""
    saved = dict(sys.modules)
    try:
        for name in [n for n in sys.modules if n == "nodes" or n.startswith("nodes.")]:
            del sys.modules[name]
        sys.modules.update(_stand_ins())
        module = importlib.import_module("nodes.matting")
        runtime = FakeRuntime()
        host = sys.modules["nodes.host"]
        monkeypatch.setattr(host, "RUNTIME", runtime)
        monkeypatch.setattr(host, "load_device", lambda: torch.device("cpu"))
        monkeypatch.setattr(host, "to_output", lambda t: t.to(torch.float16))   # stands for the intermediate dtype
        yield types.SimpleNamespace(node=module.PDFNetMatting, runtime=runtime)
    finally:
        sys.modules.clear()
        sys.modules.update(saved)


def test_the_node_schema_keeps_its_id_inputs_and_defaults(node_module):
    schema = node_module.node.define_schema()
    assert schema["node_id"] == "PDFNetMatting"
    inputs = {i["id"]: i for i in schema["inputs"]}
    assert list(inputs) == ["image", "mask", "network_size", "band", "fine_hair", "edge_shift", "despill",
                            "despill_color", "despill_strength", "foreground"]
    assert inputs["despill"]["default"] == "none" and inputs["edge_shift"]["default"] == 0
    assert [o["id"] for o in schema["outputs"]] == ["alpha", "foreground"]


def test_the_node_runs_its_widgets_through_the_adapter(node_module):
    images, mask = scene(2)
    (alpha, fg), _ = node_module.node.execute(images, mask, network_size=10, band=1.5, fine_hair=0.0, edge_shift=0,
                                              despill="none", despill_color="#00FF00", despill_strength=1.0,
                                              foreground="blur_fusion")
    expected, colours = ad.matte_images(images, mask, CONFIG, FakeRuntime())
    assert alpha.dtype == fg.dtype == torch.float16
    assert torch.equal(alpha, expected.to(torch.float16)) and torch.equal(fg, colours.to(torch.float16))
    assert node_module.runtime.bars == [[(k, 4) for k in range(1, 5)]]   # two images, two tiles each
