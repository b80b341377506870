"""Node-layer logic for BiRefNet and SegRefiner, without ComfyUI (stand-ins as in test_nodes_adapters)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import dataclasses

import pdfnet_core
from nodes import adapters as ad
from nodes import model_files as mf
from pdfnet_core import LoadedModel, SegmentOptions, family, segment
from test_nodes import FakeRuntime, comfy, fake_depth, images  # noqa: F401  (comfy is a fixture)


class FakeBiRefNet(nn.Module):
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

    def refine(self, image, coarse, mode, seed=None, noise=None, progress=None):
        self.seen.append((tuple(image.shape), tuple(coarse.shape), mode, seed))
        for done in (1, 2):            # two "UNet calls" per image
            progress(done, 2)
        return ((coarse > 0.5) & (image.mean(-1) > 0.3)).to(torch.uint8)


BIREFNET_SPEC = dataclasses.replace(family("birefnet"), module_type=FakeBiRefNet)
SEGREFINER_SPEC = dataclasses.replace(family("segrefiner"), module_type=FakeSegRefiner,
                                      work_size=lambda model, device=None: (256, 32))


def fake_birefnet() -> LoadedModel:
    return LoadedModel(FakeBiRefNet(), BIREFNET_SPEC)


def fake_segrefiner() -> LoadedModel:
    return LoadedModel(FakeSegRefiner(), SEGREFINER_SPEC)


class StopAt:
    """A runtime whose progress raises after ``n`` steps, like ComfyUI's on a cancel request."""

    def __init__(self, n: int) -> None:
        self.n, self.done = n, 0

    def resident(self, model, memory_required):
        pass

    def progress(self, total):
        def report(done, total):
            self.done = done
            if done >= self.n:
                raise KeyboardInterrupt("cancelled")
        return report


# --------------------------------------------------------------------------------------------
# names, folders, messages


def test_choices_list_the_registry_names_of_both_folders():
    bi = mf.model_choices([], "birefnet")
    assert "BiRefNet.safetensors" in bi and "BiRefNet_HR.safetensors" in bi and "BiRefNet_lite.safetensors" in bi
    assert mf.model_choices(["mine.pth"], "segrefiner") == ["mine.pth", "segrefiner_lr_latest.pth",
                                                             "segrefiner_hr_latest.pth"]


@pytest.mark.parametrize("download", [False, True])
def test_a_manual_only_file_says_where_to_get_it_and_where_to_put_it(download):
    folders = ["/m/segrefiner", "/x/segrefiner"]
    text = mf.missing_model_message("segrefiner", "segrefiner_hr_latest.pth", folders, download)
    assert "https://drive.google.com/file/d/143kerk4WOerGZMqR-cAETb7rOcoQ0CQ_" in text
    assert "place it in /m/segrefiner" in text and "download it by hand" in text
    assert "turn on" not in text and "huggingface" not in text


def test_hub_files_keep_the_download_hint():
    text = mf.missing_model_message("birefnet", "BiRefNet_HR.safetensors", ["/m/birefnet"], False)
    assert "turn on 'download'" in text and "ZhengPeng7/BiRefNet_HR/resolve/main/model.safetensors" in text
    assert mf.missing_model_message("birefnet", "BiRefNet_HR.safetensors", ["/m/birefnet"], True) == ""


@pytest.mark.parametrize("choice, name, order", [
    ("auto", "BiRefNet.safetensors", "legacy"),            # released before 2024-11-05
    ("auto", "sub/BiRefNet_HR.safetensors", "current"),    # sub-folders keep the registry name
    ("auto", "BiRefNet_dynamic-matting.safetensors", "current"),   # order unknown: the loader's default
    ("auto", "my_finetune.safetensors", "current"),
    ("legacy", "BiRefNet_HR.safetensors", "legacy"),      # an explicit choice wins
    ("current", "BiRefNet.safetensors", "current"),
])
def test_patch_order_auto_is_the_registry_default(choice, name, order):
    assert family("birefnet").option("patch_order").value(choice, Path(name).name) == order


def test_new_folders_are_registered_and_manual_files_never_downloaded(comfy, monkeypatch):
    from nodes import host as cm

    cm.register_model_folders()
    fp = comfy.folder_paths
    for key in ("birefnet", "segrefiner"):
        assert fp.get_folder_paths(key) == [str(Path(fp.models_dir) / key)]
    monkeypatch.setattr(mf, "ensure_model_file", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(pdfnet_core.InputError, match="download it by hand from https://drive.google.com"):
        mf.model_path("segrefiner", "segrefiner_lr_latest.pth", download=True)
    message = mf.check_model_choice("segrefiner", "segrefiner_hr_latest.pth")
    assert "drive.google.com" in message and str(Path(fp.models_dir) / "segrefiner") in message


def test_birefnet_loads_are_cached_per_patch_order(comfy, monkeypatch):
    from nodes import host as cm

    cm.register_model_folders()
    folder = Path(comfy.folder_paths.get_folder_paths("birefnet")[0])
    folder.mkdir(parents=True)
    (folder / "BiRefNet.safetensors").write_bytes(b"weights")
    built = []

    def fake_load(path, device, dtype, patch_order=None):
        built.append(patch_order)
        model = FakeBiRefNet().to(dtype)
        model.patch_order = patch_order
        return model
    spec = dataclasses.replace(BIREFNET_SPEC, load=fake_load)
    monkeypatch.setattr(mf, "family", lambda name: spec)
    a = mf.load_model("birefnet", "BiRefNet.safetensors", "fp32", patch_order="auto")
    b = mf.load_model("birefnet", "BiRefNet.safetensors", "fp32", patch_order="legacy")
    c = mf.load_model("birefnet", "BiRefNet.safetensors", "fp32", patch_order="current")
    assert a.module is b.module and c.module is not a.module and built == ["legacy", "current"]
    with pytest.raises(pdfnet_core.InputError, match="patch_order must be one of auto, legacy, current"):
        mf.load_model("birefnet", "BiRefNet.safetensors", "fp32", patch_order="newest")


def test_segrefiner_auto_dtype_stays_fp32(comfy):
    from nodes import host as cm

    comfy.bf16 = True
    gpu = torch.device("cuda", 0)   # ComfyUI's (faked) judgement; no CUDA needed
    assert cm.resolve_dtype("auto", family("segrefiner").auto_dtypes, gpu) == torch.float32
    assert cm.resolve_dtype("auto", family("segrefiner").auto_dtypes, torch.device("cpu")) == torch.float32
    assert cm.resolve_dtype("auto", family("birefnet").auto_dtypes, gpu) == torch.bfloat16


# --------------------------------------------------------------------------------------------
# BiRefNet through the segment loop


def test_birefnet_segments_without_touching_depth():
    model, runtime, batch = fake_birefnet(), FakeRuntime(), images(5)
    opts = SegmentOptions(size=64)
    masks = ad.segment_images(batch, model, opts, runtime, depth_model=fake_depth(fail=True),
                              depth=torch.zeros(2, 3, 3))   # both ignored, even a wrong depth
    want = torch.stack(segment(batch, None, model, options=opts))
    assert masks.shape == (5, 40, 56) and torch.equal(masks, want)
    assert runtime.bars[0].total == runtime.bars[0].done == 5
    assert [name for name, _ in runtime.resident_calls] == ["FakeBiRefNet"] * 5   # before each forward pass
    assert runtime.resident_calls[0][1] == BIREFNET_SPEC.activation_bytes(64, 1, torch.float32, "swin_v1_t") > 0


def test_an_unknown_model_is_a_clear_error():
    with pytest.raises(pdfnet_core.InputError, match="pdfnet_model: model is a Linear, not a model of this pack"):
        ad.segment_images(images(1), nn.Linear(2, 2), SegmentOptions(size=64), FakeRuntime())
    with pytest.raises(pdfnet_core.InputError, match="pdfnet_model: segment.. does not run a SegRefiner model"):
        ad.segment_images(images(1), fake_segrefiner(), SegmentOptions(size=64), FakeRuntime())


# --------------------------------------------------------------------------------------------
# SegRefiner loop


def test_segrefine_pairs_images_and_masks():
    handle, runtime = fake_segrefiner(), FakeRuntime()
    model = handle.module
    batch = images(3, 20, 24)
    one = (torch.rand(1, 20, 24) > 0.5).float()
    out = ad.segrefiner_images(batch, one, handle, "hr", 7, runtime)
    assert out.shape == (3, 20, 24) and out.dtype == torch.float32
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert [s for *_, s in model.seen] == [7, 7, 7]                 # one seed for every image
    assert all(im == (20, 24, 3) and m == (20, 24) for im, m, *_ in model.seen)
    assert runtime.bars[0].total == runtime.bars[0].done == 6     # in UNet calls
    assert len(runtime.resident_calls) == 3
    out = ad.segrefiner_images(batch[:1], one.expand(2, -1, -1), handle, "lr", 0, runtime)   # one image, 2 masks
    assert out.shape == (2, 20, 24)


def test_segrefine_rejects_mismatched_batches_sizes_and_modes():
    model = fake_segrefiner()
    with pytest.raises(pdfnet_core.InputError, match="image has 3 items and mask has 2: pass one mask per item"):
        ad.segrefiner_images(images(3, 20, 24), torch.zeros(2, 20, 24), model, "hr", 0, FakeRuntime())
    with pytest.raises(pdfnet_core.InputError, match=r"image is 24x20 \(WxH\) but mask is 12x10"):
        ad.segrefiner_images(images(1, 20, 24), torch.zeros(1, 10, 12), model, "hr", 0, FakeRuntime())
    with pytest.raises(pdfnet_core.InputError, match="mode must be one of"):
        ad.segrefiner_images(images(1, 20, 24), torch.zeros(1, 20, 24), model, "xl", 0, FakeRuntime())


def test_segrefine_stops_at_the_unet_call_that_is_cancelled():
    model = fake_segrefiner()
    with pytest.raises(KeyboardInterrupt):
        ad.segrefiner_images(images(4, 20, 24), torch.ones(1, 20, 24), model, "hr", 0, StopAt(3))
    assert len(model.module.seen) == 2     # the cancel came in the second image's first call


def test_the_segrefine_bar_estimates_the_images_to_come():
    bar = FakeRuntime().progress(3)
    calls = ad.UNetCallBar(bar, 3)
    calls.report(1, 5)
    assert (bar.done, bar.total) == (1, 15)        # 3 images at the first one's plan so far
    for k in range(2, 11):
        calls.report(k, 10)                          # HR: the patches are planned after the global pass
    calls.finished()
    assert (bar.done, bar.total) == (10, 30)
    calls.finished()                                 # an image with nothing to refine makes no call
    calls.report(4, 4)
    calls.finished()
    assert (bar.done, bar.total) == (14, 14)


def test_segrefine_with_the_narrow_synthetic_weights_equals_the_core_call(reference_dir):
    from synthetic_segrefiner import synthetic_state_dict
    from pdfnet_core import load_segrefiner, refine_with_segrefiner

    model = load_segrefiner(synthetic_state_dict(reference_dir, narrow=True))
    handle = LoadedModel(model, family("segrefiner"))
    image = images(1, 48, 64, seed=3)
    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(64), indexing="ij")
    coarse = (((yy - 24) ** 2 + (xx - 32) ** 2) < 15 ** 2).float()[None]
    runtime = FakeRuntime()
    out = ad.segrefiner_images(image, coarse, handle, "hr", 5, runtime)
    seen: list[tuple[int, int]] = []
    want = refine_with_segrefiner(model, image[0], coarse[0], mode="hr", seed=5,
                                  progress=lambda d, t: seen.append((d, t)))
    assert torch.equal(out[0], want)
    assert runtime.bars[0].done == runtime.bars[0].total == seen[-1][0] == seen[-1][1] >= 6
    assert runtime.resident_calls == [("SegRefiner", handle.activation_bytes(256, 32))]
    model.device = torch.device("meta")   # ComfyUI's ModelPatcher assigns this; the weights stay the truth
    assert model.placement()[0] == torch.device("cpu")
