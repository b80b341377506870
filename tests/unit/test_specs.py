"""The family specs and the registry read off them: one description per family, read by every layer."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import pdfnet_core
from pdfnet_core import families as registry
from pdfnet_core.fingerprints import identify
from pdfnet_core.specs import FamilySpec, LoadedModel, MeasuredActivation

GiB = 1 << 30


def test_every_family_is_registered_once_with_its_files_and_folder():
    # registered when first imported, so in whatever order the process imported them
    assert sorted(registry.FAMILIES) == ["birefnet", "depth_anything", "pdfnet", "segrefiner"]
    assert sorted(registry.folder_keys()) == ["birefnet", "depthanything", "pdfnet", "segrefiner"]
    for spec in registry.FAMILIES.values():
        assert isinstance(spec, FamilySpec) and spec.fingerprints
        for entry in spec.files:
            assert registry.lookup(entry.filename) is entry
            assert (entry.arch, entry.folder_key) == (spec.name, spec.folder_key)
        if spec.default_file is not None:
            assert registry.lookup(spec.default_file).arch == spec.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        registry.family("pdfnet").folder_key = "elsewhere"   # type: ignore[misc]
    with pytest.raises(ValueError, match="registered already"):
        registry.register_family(dataclasses.replace(registry.family("pdfnet"), files=()))
    pdfnet = registry.family("pdfnet")
    with pytest.raises(ValueError, match="duplicate registry entry 'PDFNet_Best.pth'"):
        registry.register_family(dataclasses.replace(
            pdfnet, name="pdfnet_again", files=(dataclasses.replace(pdfnet.files[0], arch="pdfnet_again"),)))
    assert "pdfnet_again" not in registry.FAMILIES


def test_checkpoints_are_told_apart_by_their_keys():
    assert identify(["encoder.absolute_pos_embed", "decoder.FSE_mix.0.x"]).name == "pdfnet"
    assert identify(["backbone.embeddings.x", "neck.y", "head.z"]).name == "depth_anything_hf"
    assert identify(["model.diffusion_model.input_blocks.0"]).name == "stable_diffusion"
    assert identify(["foo.bar"]) is None


def test_a_module_finds_its_family_and_anything_else_is_refused():
    class Tiny(nn.Linear):
        pass

    spec = dataclasses.replace(registry.family("birefnet"), module_type=Tiny)
    handle = LoadedModel(Tiny(2, 2), spec)
    assert registry.as_loaded(handle) is handle and registry.family_of(handle) is spec
    assert handle.device == torch.device("cpu") and handle.dtype == torch.float32
    assert registry.family_of(nn.Linear(2, 2)) is None
    with pytest.raises(TypeError, match="not a model of this pack"):
        registry.as_loaded(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="does not run a SegRefiner"):
        pdfnet_core.segmenter(LoadedModel(nn.Linear(2, 2), registry.family("segrefiner")))


def test_birefnet_patch_order_option_resolves_auto_from_the_registry():
    option = registry.family("birefnet").option("patch_order")
    assert option.value("auto", "BiRefNet.safetensors") == "legacy"
    assert option.value("auto", "BiRefNet_HR.safetensors") == "current"
    assert option.value("auto", "mine.safetensors") == "current"
    assert option.value("legacy", "BiRefNet_HR.safetensors") == "legacy"
    with pytest.raises(ValueError, match="patch_order must be one of"):
        option.value("newest", "BiRefNet.safetensors")


def test_activation_estimates_are_the_measured_tables():
    for spec in registry.FAMILIES.values():
        assert isinstance(spec.activation, MeasuredActivation) and "measure_activations" in spec.activation.how
        for variant, table in spec.activation.mib.items():
            for side, mib in table.items():
                assert spec.activation_bytes(side, 1, torch.float32, variant) == pytest.approx(mib * 2**20, rel=1e-6)


def test_pdfnet_activation_estimate_scales_with_pixels_batch_and_dtype():
    spec = registry.family("pdfnet")
    table = spec.activation.mib[None]
    base = spec.activation_bytes(1024, 1, torch.float32)
    # beyond the largest measured side: the slope of the last two points
    slope = (table[1024] - table[512]) / (1024**2 - 512**2)
    assert spec.activation_bytes(2048, 1, torch.float32) == pytest.approx((table[1024] + slope * 3 * 1024**2) * 2**20)
    assert spec.activation_bytes((512, 2048), 1, torch.float32) == pytest.approx(base, rel=1e-6)
    assert spec.activation_bytes(1024, 3, torch.float32) == pytest.approx(3 * base, rel=1e-6)
    assert spec.activation_bytes(1024, 1, "fp16") == pytest.approx(base / 2, rel=1e-6)
    assert 0 < spec.activation_bytes(256, 1, torch.float32) < spec.activation_bytes(512, 1, torch.float32)
    with pytest.raises(ValueError, match="positive"):
        spec.activation_bytes(0)


def test_measured_activation_interpolates_in_pixels_and_covers_unmeasured_variants():
    m = MeasuredActivation({"a": {100: 10.0, 200: 40.0}, "b": {100: 20.0, 200: 50.0}}, "test")
    mib = lambda side, variant: m(side, side, variant) * 4 / 2**20  # noqa: E731
    assert mib(100, "a") == pytest.approx(10) and mib(50, "a") == pytest.approx(2.5)       # through zero
    assert mib(150, "a") == pytest.approx(10 + 30 * (150**2 - 100**2) / (200**2 - 100**2))
    assert mib(400, "a") == pytest.approx(40 + 30 * (400**2 - 200**2) / (200**2 - 100**2))  # last slope
    assert mib(100, "c") == pytest.approx(20) and mib(100, None) == pytest.approx(20)          # the largest


def test_depth_anything_activation_estimate_grows_with_the_variant():
    spec = registry.family("depth_anything")
    sizes = [spec.activation_bytes(518, 1, "fp32", variant=v) for v in ("vits", "vitb", "vitl")]
    assert sizes == sorted(sizes) and 50 * 2**20 < sizes[0] < sizes[-1] < 4 * GiB
    assert spec.activation_bytes(1036, 1, "fp32", variant="vits") > 2 * sizes[0]
    with pytest.raises(ValueError, match="unknown model family"):
        registry.family("unet")


def test_the_inference_path_never_imports_training_code():
    import subprocess
    import sys

    code = ("import sys, pdfnet_core, nodes.adapters, nodes.model_files\n"
            "for name in pdfnet_core.__all__: getattr(pdfnet_core, name)\n"
            "import pdfnet_core.defaults, pdfnet_core.download\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('pdfnet_core.train', 'pdfnet_core.metrics', 'timm')))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert out.stdout.strip() == "[]", out.stdout
