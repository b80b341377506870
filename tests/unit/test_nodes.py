"""The node layer's logic outside the node classes, without ComfyUI.

nodes/adapters.py is plain torch; nodes/host.py and nodes/model_files.py import ComfyUI inside their
functions, so here they run against small stand-ins for folder_paths and comfy.* put into sys.modules.  What only a
real server can show (the node classes, schemas, lazy inputs, the real memory manager) is in
test_comfy_integration.py.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import pdfnet_core
from nodes import adapters as ad
from nodes import model_files as mf
from pdfnet_core import WEIGHT_SUFFIXES, LoadedModel, RefineConfig, SegmentOptions, family, refine_mask, segment
from pdfnet_core.cache import ModelCache


# --------------------------------------------------------------------------------------------
# tiny stand-in models with the call signatures of PDFNet and Depth-Anything-V2


class FakePDFNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.calls = 0

    def forward(self, image, depth):
        self.calls += 1
        return (image.mean(1, keepdim=True) + depth - 0.5) * 4 * self.w


class FakeDepth(nn.Module):
    config = types.SimpleNamespace(variant="vits")

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.fail = fail
        self.calls = 0

    def forward(self, x):
        if self.fail:
            raise AssertionError("the depth model must not run")
        self.calls += 1
        return x[:, 0] * self.w + 3.0


class FakeProgress:
    """A node's bar as pdfnet_core's ``progress(done, total)``: remembers every report."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.reports: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        assert done >= self.done, "progress never goes back"
        self.done, self.total = done, total
        self.reports.append((done, total))


class FakeRuntime:
    def __init__(self) -> None:
        self.resident_calls: list[tuple[str, int]] = []
        self.bars: list[FakeProgress] = []

    def resident(self, model, memory_required):
        self.resident_calls.append((type(model).__name__, memory_required))

    def progress(self, total):
        self.bars.append(FakeProgress(total))
        return self.bars[-1]


# The families' own specs, with the stand-ins as their module types: a node socket carries a handle.
PDFNET_SPEC = dataclasses.replace(family("pdfnet"), module_type=FakePDFNet)
DEPTH_SPEC = dataclasses.replace(family("depth_anything"), module_type=FakeDepth)


def fake_pdfnet() -> LoadedModel:
    return LoadedModel(FakePDFNet(), PDFNET_SPEC)


def fake_depth(fail: bool = False) -> LoadedModel:
    return LoadedModel(FakeDepth(fail), DEPTH_SPEC)


def images(n=5, h=40, w=56, seed=0):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# names and choices


@pytest.mark.parametrize("name", ["a.pth", "sub/a.safetensors", "sub\\a.pth", "PDFNet_Best.pth", "a..b.pth"])
def test_model_names_inside_the_folder_are_accepted(name):
    assert mf.name_problem(name) is None


@pytest.mark.parametrize("name", ["", "../a.pth", "a/../../b.pth", "/etc/passwd", "\\\\server\\x.pth", "C:\\x.pth",
                                  "c:x.pth", "a\x00.pth", "sub//a.pth", ".."])
def test_model_names_leading_out_are_refused(name):
    assert mf.name_problem(name)


def test_choices_list_weight_files_then_known_downloads():
    present = ["z.safetensors", "README.md", "a.pth", "notes.txt", "sub/PDFNet_Best.pth", "x.partial", "b.BIN"]
    choices = mf.model_choices(present, "pdfnet")
    assert choices == ["a.pth", "b.BIN", "sub/PDFNet_Best.pth", "z.safetensors", "PDF-Generally.pth"]
    depth = mf.model_choices([], "depthanything")
    assert "depth_anything_v2_vits.pth" in depth and "depth_anything_v2_vitl_fp16.safetensors" in depth
    assert not any(c.startswith("PDF") for c in depth)


def test_missing_model_messages_say_where_and_how():
    folders = ["/m/pdfnet", "/extra/pdfnet"]
    text = mf.missing_model_message("pdfnet", "PDFNet_Best.pth", folders, download=False)
    assert "turn on 'download'" in text and "https://huggingface.co/Tennineee/PDFNet/resolve/main/PDFNet_Best.pth" in text
    assert "/m/pdfnet, /extra/pdfnet" in text and "place it in /m/pdfnet" in text
    assert mf.missing_model_message("pdfnet", "PDFNet_Best.pth", folders, download=True) == ""
    text = mf.missing_model_message("pdfnet", "mine.pth", folders, download=True)
    assert "not in the 'pdfnet' models folder" in text and "place the file in /m/pdfnet" in text
    # a depth file asked for in the PDFNet folder is not downloaded there
    assert "place the file" in mf.missing_model_message("pdfnet", "depth_anything_v2_vits.pth", folders, True)


# --------------------------------------------------------------------------------------------
# input checks


def test_depth_must_match_the_image_batch_and_size():
    image = images(2)
    assert ad.check_depth_for(image, torch.rand(2, 40, 56)).shape == (2, 40, 56)
    assert ad.check_depth_for(image[:1], torch.rand(40, 56)).shape == (1, 40, 56)
    with pytest.raises(pdfnet_core.InputError, match=r"image has 2 items and depth has 1: pass one depth per item"):
        ad.check_depth_for(image, torch.rand(1, 40, 56))
    with pytest.raises(pdfnet_core.InputError, match=r"depth is 28x20 \(WxH\) but image is 56x40.*resize it to 56x40"):
        ad.check_depth_for(image, torch.rand(2, 20, 28))
    with pytest.raises(pdfnet_core.InputError, match="not a MASK"):
        ad.check_depth_for(image, torch.rand(2, 40, 56, 3))
    with pytest.raises(pdfnet_core.InputError, match=r"image: expected a \[B,H,W,3\]"):
        ad.node_image(torch.rand(40, 56, 3))


def test_depth_normalisations():
    maps = [torch.tensor([[1.0, 3.0]]), torch.tensor([[5.0, 9.0]])]
    per_image = ad.DEPTH_NORMALISATIONS["per_image"](maps)
    assert torch.equal(per_image, torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]]]))
    per_batch = ad.DEPTH_NORMALISATIONS["per_batch"](maps)
    assert torch.allclose(per_batch, torch.tensor([[[0.0, 0.25]], [[0.5, 1.0]]]))


# --------------------------------------------------------------------------------------------
# loops


def test_segment_is_one_segment_call_with_the_nodes_bar_and_residency_per_batch(monkeypatch):
    image, model, dam = images(11), fake_pdfnet(), fake_depth()
    opts = SegmentOptions(size=64)
    rt = FakeRuntime()
    got = ad.segment_images(image, model, opts, rt, depth_model=dam)
    want = torch.stack(segment(image, model=model, depth_model=dam, options=opts))
    assert got.shape == (11, 40, 56)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # one bar, fed straight from segment(): cumulative, depth + segmentation per image
    assert len(rt.bars) == 1 and rt.bars[0].reports[-1] == (22, 22)
    assert rt.bars[0].reports[:3] == [(4, 22), (8, 22), (9, 22)]
    names = [n for n, _ in rt.resident_calls]
    # made resident before each forward pass: a chunk of 8 images gets its depth (batches of 4), then
    # its PDFNet passes, then the next chunk
    assert names == ["FakeDepth"] * 2 + ["FakePDFNet"] * 8 + ["FakeDepth"] + ["FakePDFNet"] * 3
    assert all(mem > 0 for _, mem in rt.resident_calls)
    # each image is converted once (one layout conversion, one scan of its values)
    from pdfnet_core.ops import images as image_ops

    calls = []
    real = image_ops._one_to_chw
    monkeypatch.setattr(image_ops, "_one_to_chw", lambda im, name: (calls.append(name), real(im, name))[1])
    ad.segment_images(image, model, opts, FakeRuntime(), depth_model=dam)
    assert sorted(calls) == sorted(f"image[{i}]" for i in range(11))


def test_segment_with_external_depth_never_touches_the_depth_model():
    image, model = images(3), fake_pdfnet()
    depth = torch.rand(3, 40, 56)
    rt = FakeRuntime()
    got = ad.segment_images(image, model, SegmentOptions(size=64), rt, depth_model=fake_depth(fail=True),
                            depth=depth)
    torch.testing.assert_close(got, torch.stack(segment(image, depth, model, size=64)), rtol=0, atol=0)
    assert rt.bars[0].total == 3 and rt.bars[0].done == 3
    assert {n for n, _ in rt.resident_calls} == {"FakePDFNet"}


def test_segment_needs_some_depth_and_valid_options():
    with pytest.raises(pdfnet_core.InputError, match="connect a Depth-Anything-V2 model"):
        ad.segment_images(images(1), fake_pdfnet(), SegmentOptions(size=64), FakeRuntime())
    with pytest.raises(ValueError, match="multiple of 32"):
        ad.segment_images(images(1), fake_pdfnet(), SegmentOptions(size=50), FakeRuntime(), depth_model=fake_depth())
    with pytest.raises(pdfnet_core.InputError, match="pdfnet_model: .*not a model of this pack"):
        ad.segment_images(images(1), FakePDFNet(), SegmentOptions(size=64), FakeRuntime(), depth_model=fake_depth())


def test_memory_asked_for_follows_the_model_dtype_and_tta():
    def asked(model, **options):
        rt = FakeRuntime()
        ad.segment_images(images(1), model, SegmentOptions(size=64, **options), rt, depth=torch.rand(1, 40, 56))
        return rt.resident_calls[-1][1]

    plain = asked(fake_pdfnet())
    assert plain == PDFNET_SPEC.activation_bytes(64, 1, torch.float32)
    assert asked(fake_pdfnet(), tta=True) == PDFNET_SPEC.activation_bytes(SegmentOptions(size=64, tta=True).network_side())
    assert SegmentOptions(size=1024, tta=True).network_side() == 1280 > SegmentOptions(size=1024).network_side()
    half = LoadedModel(FakePDFNet().to(torch.bfloat16), PDFNET_SPEC)
    assert abs(asked(half) * 2 - plain) <= 2


def test_depth_images_per_image_and_per_batch():
    image = images(3)
    image[1] *= 0.5
    rt = FakeRuntime()
    per_image = ad.estimate_depth_images(image, fake_depth(), rt, normalization="per_image")
    per_batch = ad.estimate_depth_images(image, fake_depth(), rt, normalization="per_batch")
    assert per_image.shape == (3, 40, 56)
    for d in per_image:
        assert d.min() == 0 and d.max() == 1
    assert per_batch.min() == 0 and per_batch.max() == 1 and per_batch[1].max() < 0.75
    assert [b.done for b in rt.bars] == [3, 3]
    with pytest.raises(pdfnet_core.InputError, match="normalization"):
        ad.estimate_depth_images(image, fake_depth(), rt, normalization="global")


def test_map_chunks_broadcasts_single_items_and_reports_progress():
    seen = []
    bar = FakeProgress(5)
    out = ad.map_chunks(lambda a, b, c: (seen.append((a.shape[0], b.shape[0], c)), a + b)[1], bar,
                        torch.ones(5, 2), torch.full((1, 2), 2.0), None, chunk=2)
    assert torch.equal(out, torch.full((5, 2), 3.0))
    assert seen == [(2, 2, None), (2, 2, None), (1, 1, None)] and bar.done == 5


def test_refine_widgets_map_to_a_config():
    assert ad.refine_config() == RefineConfig()
    cfg = ad.refine_config(threshold=0.4, remove_islands=10, fill_holes=True, hole_max_area=0, grow=-2,
                           guided_radius=3, feather=1.5, temporal="ema", temporal_decay=0.7)
    assert (cfg.threshold_low, cfg.threshold_high, cfg.hole_max_area, cfg.temporal_method) == (0.4, None, None, "ema")
    assert ad.refine_config(threshold=0.2, threshold_high=0.8).threshold_high == 0.8
    assert ad.refine_config(threshold=0.0, threshold_high=0.8).threshold_high is None
    with pytest.raises(pdfnet_core.InputError, match="threshold_high"):
        ad.refine_config(threshold=0.5, threshold_high=0.3)


def test_refine_in_chunks_equals_refine_mask_with_temporal_on_the_whole_batch():
    mask = torch.rand(5, 32, 40, generator=torch.Generator().manual_seed(1))
    image = images(5, 32, 40)
    cfg = ad.refine_config(threshold=0.3, threshold_high=0.7, remove_islands=5, grow=1, guided_radius=2,
                           feather=1.0, temporal="window", temporal_radius=1)
    rt = FakeRuntime()
    got = ad.refine_masks(mask, cfg, rt, image=image, chunk=2)
    torch.testing.assert_close(got, refine_mask(mask, cfg, image), rtol=0, atol=1e-6)
    assert rt.bars[0].done == 5
    with pytest.raises(pdfnet_core.InputError, match="needs the 'image' input"):
        ad.refine_masks(mask, cfg, rt)
    with pytest.raises(pdfnet_core.InputError, match="connect the image the mask was made from"):
        ad.refine_masks(mask, cfg, rt, image=images(5, 16, 40))


def test_foreground_batches_are_checked_and_chunked():
    from pdfnet_core.ops.foreground import estimate_foreground

    image, mask = images(3, 24, 24), torch.rand(3, 24, 24)
    got = ad.estimate_foreground_images(image, mask, "blur_fusion", FakeRuntime(), chunk=2)
    torch.testing.assert_close(got, estimate_foreground(image, mask, "blur_fusion").foreground)
    one_image = ad.estimate_foreground_images(image[:1], mask, "blur_fusion", FakeRuntime(), chunk=2)
    assert one_image.shape == (3, 24, 24, 3)
    with pytest.raises(pdfnet_core.InputError, match="pass one mask per item of image"):
        ad.estimate_foreground_images(images(3, 24, 24), torch.rand(2, 24, 24), "blur_fusion", FakeRuntime())
    with pytest.raises(pdfnet_core.InputError, match="same size"):
        ad.estimate_foreground_images(images(1, 24, 24), torch.rand(1, 20, 24), "blur_fusion", FakeRuntime())


# --------------------------------------------------------------------------------------------
# host against stand-ins for ComfyUI's modules


class FakeFolderPaths(types.ModuleType):
    """folder_paths' semantics that the bridge relies on (append, extension filter, lookup)."""

    def __init__(self, models_dir: Path) -> None:
        super().__init__("folder_paths")
        self.models_dir = str(models_dir)
        self.folder_names_and_paths: dict = {}

    def add_model_folder_path(self, name, path, is_default=False):
        if name in self.folder_names_and_paths:
            paths = self.folder_names_and_paths[name][0]
            if path not in paths:
                paths.insert(0, path) if is_default else paths.append(path)
        else:
            self.folder_names_and_paths[name] = ([path], set())

    def get_folder_paths(self, name):
        return list(self.folder_names_and_paths[name][0])

    def get_filename_list(self, name):
        paths, exts = self.folder_names_and_paths[name]
        out = set()
        for p in paths:
            for root, _, files in os.walk(p):
                for f in files:
                    rel = os.path.relpath(os.path.join(root, f), p)
                    if not exts or os.path.splitext(f)[1].lower() in exts:
                        out.add(rel)
        return sorted(out)

    def get_full_path(self, name, filename):
        filename = os.path.relpath(os.path.join("/", filename), "/")
        for p in self.folder_names_and_paths.get(name, ([], set()))[0]:
            if os.path.isfile(os.path.join(p, filename)):
                return os.path.join(p, filename)
        return None


class Interrupted(Exception):
    pass


@pytest.fixture()
def comfy(monkeypatch, tmp_path):
    """Stand-ins for folder_paths and comfy.{model_management, model_patcher, utils}.

    The memory manager keeps the bookkeeping of ComfyUI 0.33's: ``load_models_gpu`` takes each
    patcher out of ``current_loaded_models``, loads it fully and lists it first; the plain
    ModelPatcher's ``partially_load`` moves nothing while the model is still fully loaded on the
    load device.  ``state.unload(patcher, partly=False)`` is ComfyUI offloading it to make room.
    A load device other than the offload device is simulated by a dtype: with ``state.load_dtype``
    set, loading converts the module to it and offloading converts it back to ``offload_dtype``;
    ``calls["uploads"]`` counts the loads that moved weights.  Set ``state.load_device`` to a
    non-CPU device (no CUDA needed: nothing is placed there) for ComfyRuntime's batch sizing, with
    ``state.free_memory`` what ``get_free_memory`` reports.
    """
    calls: dict[str, list] = {"load_models_gpu": [], "bars": [], "detached": [], "uploads": [], "empty_cache": []}
    state = types.SimpleNamespace(bf16=False, interrupted=False, calls=calls, load_device=torch.device("cpu"),
                                  load_dtype=None, offload_dtype=torch.float32, free_memory=8 << 30, reserved=0)

    mm = types.ModuleType("comfy.model_management")
    mm.current_loaded_models = []
    mm.get_torch_device = lambda: state.load_device
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.intermediate_dtype = lambda: torch.float16
    mm.should_use_bf16 = lambda device=None, prioritize_performance=True: state.bf16
    mm.should_use_fp16 = lambda device=None, prioritize_performance=True: False
    mm.is_device_cpu = lambda device: torch.device(device).type == "cpu"
    mm.get_free_memory = lambda dev=None, torch_free_too=False: state.free_memory
    mm.extra_reserved_memory = lambda: state.reserved
    mm.soft_empty_cache = lambda force=False: calls["empty_cache"].append(force)

    class LoadedModel:
        def __init__(self, patcher):
            self.model = patcher

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        calls["load_models_gpu"].append((models, memory_required, force_full_load))
        for patcher in models:
            mm.current_loaded_models[:] = [lm for lm in mm.current_loaded_models if lm.model is not patcher]
            patcher.partially_load(patcher.load_device, 1e32)
            mm.current_loaded_models.insert(0, LoadedModel(patcher))
    mm.load_models_gpu = load_models_gpu

    def unload(patcher, partly=False):
        """ComfyUI's free_memory making room: LoadedModel.model_unload, whole or partial."""
        if partly:
            patcher.partially_unload(patcher.offload_device, 1)
            return
        mm.current_loaded_models[:] = [lm for lm in mm.current_loaded_models if lm.model is not patcher]
        patcher.offload()
    state.unload = unload

    def throw():
        if state.interrupted:
            raise Interrupted()
    mm.throw_exception_if_processing_interrupted = throw

    mp = types.ModuleType("comfy.model_patcher")

    class Patcher:
        """ComfyUI's plain ModelPatcher as far as residency goes."""

        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device
            self.loaded, self.device = 0, offload_device

        def model_size(self):
            return sum(t.nbytes for t in self.model.state_dict().values())

        def loaded_size(self):
            return self.loaded

        def current_loaded_device(self):
            return self.device

        def is_dynamic(self):
            return False

        def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
            if self.device == device_to and self.loaded == self.model_size():
                return 0   # ModelPatcher.partially_load: loaded completely already, nothing moves
            if state.load_dtype is not None:
                self.model.to(state.load_dtype)
            calls["uploads"].append(self)
            self.loaded, self.device = self.model_size(), device_to
            return self.loaded

        def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
            param = next(iter(self.model.parameters()))   # the plain module's first weights go back
            freed = param.nbytes
            if state.load_dtype is not None:
                param.data = param.data.to(state.offload_dtype)
            self.loaded -= freed
            return freed

        def offload(self):
            if state.load_dtype is not None:
                self.model.to(state.offload_dtype)
            self.loaded, self.device = 0, self.offload_device

        def detach(self, unpatch_all=True):
            calls["detached"].append(self)
            if unpatch_all:
                self.offload()
    mp.ModelPatcher = Patcher
    mp.CoreModelPatcher = type("CorePatcher", (Patcher,), {})

    utils = types.ModuleType("comfy.utils")

    class Bar:
        def __init__(self, total):
            self.total, self.values = total, []
            calls["bars"].append(self)

        def update_absolute(self, value, total=None, preview=None):
            self.values.append(value)
    utils.ProgressBar = Bar

    pkg = types.ModuleType("comfy")
    pkg.model_management, pkg.model_patcher, pkg.utils = mm, mp, utils
    fp = FakeFolderPaths(tmp_path / "models")
    for name, module in {"comfy": pkg, "comfy.model_management": mm, "comfy.model_patcher": mp,
                         "comfy.utils": utils, "folder_paths": fp}.items():
        monkeypatch.setitem(sys.modules, name, module)
    state.folder_paths = fp
    import pdfnet_core.cache

    cache = ModelCache(budget_bytes=1 << 30)
    monkeypatch.setattr(pdfnet_core.cache, "_DEFAULT_CACHE", cache)   # what default_cache() returns
    state.cache = cache
    return state


def test_folders_are_appended_after_configured_paths_and_list_only_weights(comfy, tmp_path):
    from nodes import host as cm

    fp = comfy.folder_paths
    yaml_dir = tmp_path / "elsewhere" / "pdfnet"
    yaml_dir.mkdir(parents=True)
    fp.folder_names_and_paths["pdfnet"] = ([str(yaml_dir)], set())   # as extra_model_paths.yaml leaves it
    cm.register_model_folders()
    cm.register_model_folders()   # twice is harmless
    default = os.path.join(fp.models_dir, "pdfnet")
    assert fp.get_folder_paths("pdfnet") == [str(yaml_dir), default]
    assert fp.get_folder_paths("depthanything") == [os.path.join(fp.models_dir, "depthanything")]
    assert fp.folder_names_and_paths["pdfnet"][1] == set(WEIGHT_SUFFIXES)
    (yaml_dir / "mine.safetensors").write_bytes(b"x")
    (yaml_dir / "README.md").write_text("x")
    (yaml_dir / ".staging-x").mkdir()
    (yaml_dir / ".staging-x" / "PDFNet_Best.pth").write_bytes(b"half")   # a download in progress
    assert mf.list_models("pdfnet") == ["mine.safetensors", "PDFNet_Best.pth", "PDF-Generally.pth"]


def test_validation_of_model_choices(comfy, tmp_path):
    from nodes import host as cm

    cm.register_model_folders()
    folder = Path(comfy.folder_paths.get_folder_paths("pdfnet")[0])
    folder.mkdir(parents=True)
    (folder / "mine.pth").write_bytes(b"x")
    assert mf.check_model_choice("pdfnet", "mine.pth") is True
    assert mf.check_model_choice("pdfnet", None) is True   # a linked widget: checked at run time
    assert mf.check_model_choice("pdfnet", "PDFNet_Best.pth", True) is True   # will be downloaded
    assert str(folder) in mf.check_model_choice("pdfnet", "PDFNet_Best.pth", False)
    assert "'..'" in mf.check_model_choice("pdfnet", "../mine.pth")
    assert "not in the 'depthanything' models folder" in mf.check_model_choice("depth_anything", "mine.pth")


def test_download_goes_to_the_first_folder(comfy, monkeypatch, tmp_path):
    from nodes import host as cm

    first = tmp_path / "first"
    comfy.folder_paths.folder_names_and_paths["depthanything"] = ([str(first)], set())
    cm.register_model_folders()
    asked = []

    def fake_ensure(entry, folder, allow_download, offline=None):
        asked.append((entry.filename, Path(folder), allow_download))
        return Path(folder) / entry.filename
    monkeypatch.setattr(mf, "ensure_model_file", fake_ensure)
    path = mf.model_path("depth_anything", "depth_anything_v2_vits.pth", download=True)
    assert asked == [("depth_anything_v2_vits.pth", first, True)] and path == str(first / "depth_anything_v2_vits.pth")
    with pytest.raises(pdfnet_core.InputError, match="turn on 'download'"):
        mf.model_path("depth_anything", "depth_anything_v2_vits.pth", download=False)
    with pytest.raises(pdfnet_core.InputError, match="absolute path"):
        mf.model_path("depth_anything", "/tmp/x.pth", download=True)


def test_auto_dtype_follows_comfy_on_a_gpu_and_pdfnet_core_on_a_cpu(comfy):
    from nodes import host as cm

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)   # no CUDA needed: ComfyUI's answer is faked
    bf16_first = family("depth_anything").auto_dtypes
    assert cm.resolve_dtype("auto", bf16_first, gpu) == torch.float32
    comfy.bf16 = True
    assert cm.resolve_dtype("auto", bf16_first, gpu) == torch.bfloat16
    assert cm.resolve_dtype("auto", family("segrefiner").auto_dtypes, gpu) == torch.float32
    # on a CPU ComfyUI never picks a half type (it judges diffusion models): the CPU's own bf16 kernels decide
    assert cm.resolve_dtype("auto", bf16_first, cpu) == pdfnet_core.auto_dtype(bf16_first, cpu)
    mm = sys.modules["comfy.model_management"]
    mm.FORCE_FP32 = True   # ComfyUI's --force-fp32
    assert cm.resolve_dtype("auto", bf16_first, cpu) == cm.resolve_dtype("auto", bf16_first, gpu) == torch.float32
    mm.FORCE_FP32 = False
    assert cm.resolve_dtype("fp16", bf16_first, cpu) == torch.float16
    with pytest.raises(pdfnet_core.InputError, match="dtype"):
        cm.resolve_dtype("int8", bf16_first, cpu)


def test_loaders_share_one_model_and_log_its_device_once(comfy, monkeypatch, tmp_path, caplog):
    from nodes import host as cm

    cm.register_model_folders()
    folder = Path(comfy.folder_paths.get_folder_paths("pdfnet")[0])
    folder.mkdir(parents=True)
    (folder / "net.pth").write_bytes(b"weights")
    built = []

    def fake_load(path, device, dtype, revision):
        built.append((path, device, dtype, revision))
        return FakePDFNet().to(dtype)
    spec = dataclasses.replace(PDFNET_SPEC, load=fake_load)
    monkeypatch.setattr(mf, "family", lambda name: spec)
    auto = pdfnet_core.auto_dtype(spec.auto_dtypes, torch.device("cpu"))   # bf16 on a CPU with native kernels
    with caplog.at_level(logging.INFO, logger="pdfnet_core"):
        a = mf.load_model("pdfnet", "net.pth", "auto")
        b = mf.load_model("pdfnet", "net.pth", {v: k for k, v in pdfnet_core.DTYPES.items()}[auto])   # the same model
    assert a.module is b.module and a.spec is spec and len(built) == 1 and built[0][-1] == "auto"
    assert [r.getMessage() for r in caplog.records if "runs on" in r.getMessage()] == [
        f"PDFNet from net.pth runs on cpu in {str(auto).split('.')[-1]}"]
    assert comfy.cache.stats().loads == 1 and comfy.cache.stats().hits == 1


def test_a_file_of_another_model_is_named_in_the_error(comfy, tmp_path):
    from nodes import host as cm

    cm.register_model_folders()
    folder = Path(comfy.folder_paths.get_folder_paths("pdfnet")[0])
    folder.mkdir(parents=True)
    torch.save({"some.layer.weight": torch.zeros(2, 2)}, folder / "other.pth")
    with pytest.raises(pdfnet_core.InputError, match=r"model_name 'other.pth' cannot be used as a PDFNet model: \S+other.pth: "
                                                r"this is not a PDFNet checkpoint"):
        mf.load_model("pdfnet", "other.pth", "fp32")


def test_residency_hook_hands_models_to_comfy(comfy):
    from nodes import host as cm

    cache = comfy.cache
    cache.set_residency_hook(cm.ComfyResidency())
    model = cache.get_or_load(Path(__file__), torch.float32, "cpu", FakePDFNet)
    handle = cache.handle_for(model)
    assert type(handle).__name__ == "CorePatcher" and handle.model is model
    assert handle.load_device == handle.offload_device == torch.device("cpu")
    cm.ComfyRuntime().resident(model, 12345)
    assert comfy.calls["load_models_gpu"] == [([handle], 12345, True)]
    cache.clear()
    assert comfy.calls["detached"] == [handle]


def test_progress_bar_and_interruption(comfy):
    from nodes import host as cm

    bar = cm.ComfyRuntime().progress(4)
    bar(1, 4)
    bar(3, 4)
    assert comfy.calls["bars"][0].total == 4 and comfy.calls["bars"][0].values == [1, 3]
    comfy.interrupted = True
    with pytest.raises(Interrupted):
        bar(4, 4)
    with pytest.raises(Interrupted):
        cm.ComfyRuntime().resident(FakePDFNet(), 0)


def test_outputs_go_to_the_intermediate_device_and_dtype(comfy):
    from nodes import host as cm

    out = cm.to_output(torch.ones(1, 2, 2))
    assert out.dtype == torch.float16 and out.device == torch.device("cpu")


def test_fingerprint_changes_when_the_file_is_replaced(comfy):
    from nodes import host as cm

    cm.register_model_folders()
    folder = Path(comfy.folder_paths.get_folder_paths("pdfnet")[0])
    folder.mkdir(parents=True)
    (folder / "net.pth").write_bytes(b"one")
    first = mf.file_fingerprint("pdfnet", "net.pth")
    assert first == mf.file_fingerprint("pdfnet", "net.pth")
    (folder / "net.pth").write_bytes(b"three")
    assert mf.file_fingerprint("pdfnet", "net.pth") != first
    assert mf.file_fingerprint("pdfnet", "gone.pth") == ("missing", "gone.pth")
