"""Node-layer logic for BiRefNet and SegRefiner, without ComfyUI (stand-ins as in test_nodes_adapters)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from nodes import adapters as ad
from pdfnet_core.pipeline import SegmentOptions, segment
from test_nodes_adapters import FakeDepth, FakeRuntime, comfy, images  # noqa: F401  (comfy is a fixture)


class BiRefNet(nn.Module):
    """Named like the real class: segment() picks how to drive a model by its class name."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.config = type("Config", (), {"name": "swin_v1_t"})()
        self.calls = 0

    def forward(self, image):
        self.calls += 1
        return (image.mean(1, keepdim=True) - 0.1) * 4 * self.w


class FakeSegRefiner(nn.Module):
    """refine() as SegRefiner.refine: binary masks of the coarse input's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.seen: list[tuple] = []

    def refine(self, image, coarse, mode, seed=None, noise=None):
        self.seen.append((tuple(image.shape), tuple(coarse.shape), mode, seed))
        return ((coarse > 0.5) & (image.mean(-1) > 0.3)).to(torch.uint8)


class StopAt:
    """A runtime whose progress raises after ``n`` steps, like ComfyUI's on a cancel request."""

    def __init__(self, n: int) -> None:
        self.n, self.done = n, 0

    def resident(self, model, memory_required):
        pass

    def progress(self, total):
        outer = self

        class P:
            def step(self, count=1):
                outer.done += count
                if outer.done >= outer.n:
                    raise KeyboardInterrupt("cancelled")
        return P()


# --------------------------------------------------------------------------------------------
# names, folders, messages


def test_choices_list_the_registry_names_of_both_folders():
    bi = ad.model_choices([], "birefnet")
    assert "BiRefNet.safetensors" in bi and "BiRefNet_HR.safetensors" in bi and "BiRefNet_lite.safetensors" in bi
    assert ad.model_choices(["mine.pth"], "segrefiner") == ["mine.pth", "segrefiner_lr_latest.pth",
                                                             "segrefiner_hr_latest.pth"]


@pytest.mark.parametrize("download", [False, True])
def test_a_manual_only_file_says_where_to_get_it_and_where_to_put_it(download):
    folders = ["/m/segrefiner", "/x/segrefiner"]
    text = ad.missing_model_message("segrefiner", "segrefiner_hr_latest.pth", folders, download)
    assert "https://drive.google.com/file/d/143kerk4WOerGZMqR-cAETb7rOcoQ0CQ_" in text
    assert "place it in /m/segrefiner" in text and "download it by hand" in text
    assert "turn on" not in text and "huggingface" not in text


def test_hub_files_keep_the_download_hint():
    text = ad.missing_model_message("birefnet", "BiRefNet_HR.safetensors", ["/m/birefnet"], False)
    assert "turn on 'download'" in text and "ZhengPeng7/BiRefNet_HR/resolve/main/model.safetensors" in text
    assert ad.missing_model_message("birefnet", "BiRefNet_HR.safetensors", ["/m/birefnet"], True) == ""


@pytest.mark.parametrize("choice, name, order", [
    ("auto", "BiRefNet.safetensors", "legacy"),            # released before 2024-11-05
    ("auto", "sub/BiRefNet_HR.safetensors", "current"),    # sub-folders keep the registry name
    ("auto", "BiRefNet_dynamic-matting.safetensors", "current"),   # order unknown: the loader's default
    ("auto", "my_finetune.safetensors", "current"),
    ("legacy", "BiRefNet_HR.safetensors", "legacy"),      # an explicit choice wins
    ("current", "BiRefNet.safetensors", "current"),
])
def test_patch_order_auto_is_the_registry_default(choice, name, order):
    assert ad.birefnet_patch_order(choice, name) == order


def test_patch_order_rejects_other_values():
    with pytest.raises(ad.NodeInputError, match="patch_order must be one of auto, current, legacy"):
        ad.birefnet_patch_order("newest", "BiRefNet.safetensors")


def test_new_folders_are_registered_and_manual_files_never_downloaded(comfy, monkeypatch):
    from nodes import comfy_models as cm
    import pdfnet_core.download as download

    cm.register_model_folders()
    fp = comfy.folder_paths
    for key in ("birefnet", "segrefiner"):
        assert fp.get_folder_paths(key) == [str(Path(fp.models_dir) / key)]
    monkeypatch.setattr(download, "ensure_model_file", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(ad.NodeInputError, match="download it by hand from https://drive.google.com"):
        cm.model_path("segrefiner", "segrefiner_lr_latest.pth", download=True)
    message = cm.check_model_choice("segrefiner", "segrefiner_hr_latest.pth")
    assert "drive.google.com" in message and str(Path(fp.models_dir) / "segrefiner") in message


def test_birefnet_loads_are_cached_per_patch_order(comfy, monkeypatch):
    from nodes import comfy_models as cm

    cm.register_model_folders()
    folder = Path(comfy.folder_paths.get_folder_paths("birefnet")[0])
    folder.mkdir(parents=True)
    (folder / "BiRefNet.safetensors").write_bytes(b"weights")
    built = []

    def fake_load(path, device, dtype, patch_order=None):
        built.append(patch_order)
        model = BiRefNet().to(dtype)
        model.patch_order = patch_order
        return model
    monkeypatch.setitem(cm.ARCHS, "birefnet", cm.Arch("birefnet", "BiRefNet", fake_load))
    auto = ad.birefnet_patch_order("auto", "BiRefNet.safetensors")
    a = cm.load_model("birefnet", "BiRefNet.safetensors", "fp32", patch_order=auto)
    b = cm.load_model("birefnet", "BiRefNet.safetensors", "fp32", patch_order="legacy")
    c = cm.load_model("birefnet", "BiRefNet.safetensors", "fp32", patch_order="current")
    assert a is b and c is not a and built == ["legacy", "current"]


def test_segrefiner_auto_dtype_stays_fp32(comfy):
    from nodes import comfy_models as cm

    comfy.bf16 = True
    assert cm.resolve_dtype("auto", "segrefiner", torch.device("cpu")) == torch.float32
    assert cm.resolve_dtype("auto", "birefnet", torch.device("cpu")) == torch.bfloat16


# --------------------------------------------------------------------------------------------
# BiRefNet through the segment loop


def test_birefnet_segments_without_touching_depth():
    model, runtime, batch = BiRefNet(), FakeRuntime(), images(5)
    opts = SegmentOptions(size=64)
    masks = ad.segment_images(batch, model, opts, runtime, depth_model=FakeDepth(fail=True),
                              depth=torch.zeros(2, 3, 3), chunk=2)   # both ignored, even a wrong depth
    want = torch.stack(segment(batch, None, model, options=opts))
    assert masks.shape == (5, 40, 56) and torch.equal(masks, want)
    assert runtime.bars[0].total == runtime.bars[0].done == 5
    assert [name for name, _ in runtime.resident_calls] == ["BiRefNet"] * 3
    assert runtime.resident_calls[0][1] == ad.segment_memory(model, opts) > 0


def test_an_unknown_model_is_a_clear_error():
    with pytest.raises(ad.NodeInputError, match="pdfnet_model: .* does not know how to run a Linear"):
        ad.segment_images(images(1), nn.Linear(2, 2), SegmentOptions(size=64), FakeRuntime())


# --------------------------------------------------------------------------------------------
# SegRefiner loop


def test_segrefine_pairs_images_and_masks():
    model, runtime = FakeSegRefiner(), FakeRuntime()
    batch = images(3, 20, 24)
    one = (torch.rand(1, 20, 24) > 0.5).float()
    out = ad.segrefine_images(batch, one, model, "hr", 7, runtime)
    assert out.shape == (3, 20, 24) and out.dtype == torch.float32
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert [s for *_, s in model.seen] == [7, 7, 7]                 # one seed for every image
    assert all(im == (20, 24, 3) and m == (20, 24) for im, m, *_ in model.seen)
    assert runtime.bars[0].total == runtime.bars[0].done == 3
    assert len(runtime.resident_calls) == 3
    out = ad.segrefine_images(batch[:1], one.expand(2, -1, -1), model, "lr", 0, runtime)   # one image, 2 masks
    assert out.shape == (2, 20, 24)


def test_segrefine_rejects_mismatched_batches_sizes_and_modes():
    model = FakeSegRefiner()
    with pytest.raises(ad.NodeInputError, match="image holds 3 images and mask holds 2 masks"):
        ad.segrefine_images(images(3, 20, 24), torch.zeros(2, 20, 24), model, "hr", 0, FakeRuntime())
    with pytest.raises(ad.NodeInputError, match=r"image is 24x20 \(WxH\) but mask is 12x10"):
        ad.segrefine_images(images(1, 20, 24), torch.zeros(1, 10, 12), model, "hr", 0, FakeRuntime())
    with pytest.raises(ad.NodeInputError, match="mode must be one of"):
        ad.segrefine_images(images(1, 20, 24), torch.zeros(1, 20, 24), model, "xl", 0, FakeRuntime())


def test_segrefine_stops_between_images_when_cancelled():
    model = FakeSegRefiner()
    with pytest.raises(KeyboardInterrupt):
        ad.segrefine_images(images(4, 20, 24), torch.ones(1, 20, 24), model, "hr", 0, StopAt(2))
    assert len(model.seen) == 2


def test_segrefine_with_the_narrow_synthetic_weights_equals_the_core_call(reference_dir):
    from synthetic_segrefiner import synthetic_state_dict
    from pdfnet_core.segrefiner import refine_with_segrefiner
    from pdfnet_core.segrefiner_loader import load_segrefiner

    model = load_segrefiner(synthetic_state_dict(reference_dir, narrow=True))
    image = images(1, 48, 64, seed=3)
    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(64), indexing="ij")
    coarse = (((yy - 24) ** 2 + (xx - 32) ** 2) < 15 ** 2).float()[None]
    out = ad.segrefine_images(image, coarse, model, "hr", 5, FakeRuntime())
    want = refine_with_segrefiner(model, image[0], coarse[0], mode="hr", seed=5)
    assert torch.equal(out[0], want)
    assert ad.segrefiner_memory(model) > 0
    model.device = torch.device("meta")   # ComfyUI's ModelPatcher assigns this; the weights stay the truth
    assert model.device == torch.device("cpu")
