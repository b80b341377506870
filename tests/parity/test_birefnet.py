"""BiRefNet against the official outputs (shared/reference/birefnet), synthetic weights via load_birefnet."""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from pdfnet_core import families as registry
from pdfnet_core.specs import hf_url
from pdfnet_core.models.birefnet.loader import TRAINING_HEADS, _batchnorm_counters, load_birefnet
from pdfnet_core.models.birefnet import deform_conv
from pdfnet_core.models.birefnet.net import VARIANTS, BiRefNet
from pdfnet_core.weights import CheckpointError, save_safetensors
from synthetic_birefnet import key_list, sha256_all, synthetic_state_dict, tensor_sha256

TOL_LOGITS = 2e-4        # README: ~7x headroom over fp32 noise, every realistic bug fails by >1000x
TOL_INTERMEDIATE = 1e-4
FIXTURE_ORDER = {"current": "einops", "legacy": "legacy"}   # our flag -> fixture file suffix


def _ref(reference_dir, name: str) -> torch.Tensor:
    return torch.from_numpy(np.load(reference_dir / "birefnet" / f"{name}.npy"))


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on the shared 2-core CPU two threads make these forwards 3-5x slower (README)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def state_t(reference_dir):
    return synthetic_state_dict(reference_dir, "swin_v1_t")


@pytest.fixture(scope="module")
def file_t(state_t, tmp_path_factory):
    """Swin-T synthetic weights as a .pth (the GitHub/GDrive format)."""
    path = tmp_path_factory.mktemp("birefnet") / "synthetic_lite.pth"
    torch.save(state_t, path)
    return path


@pytest.fixture(scope="module")
def model_t(file_t):
    return load_birefnet(file_t)


@pytest.fixture(scope="module")
def image(reference_dir):
    return _ref(reference_dir, "input_A_256x256")


# --------------------------------------------------------------------------------------------
# weights and keys


def test_recipe_reproduces_manifest_swin_t(reference_dir, state_t):
    manifest = json.loads((reference_dir / "birefnet" / "weights_manifest_swin_v1_t_seed0.json").read_text())
    wrong = [k for k, v in manifest["keys"].items() if tensor_sha256(state_t[k]) != v["sha256"]]
    assert not wrong, wrong[:10]
    assert sha256_all(state_t) == manifest["sha256_all"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_official_key_is_a_model_entry_or_ignored_by_name(reference_dir, variant):
    keys = key_list(reference_dir, variant)
    with torch.device("meta"):
        model = BiRefNet(VARIANTS[variant])
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    rules = (TRAINING_HEADS, _batchnorm_counters(model))
    ignored = {k for k in keys if any(r.covers(k) for r in rules)}
    assert len(keys) == {"swin_v1_t": 586, "swin_v1_l": 754}[variant]
    assert set(ours) == set(keys) - ignored
    assert len(ignored) == 43 + 12   # BN counters; conv_ms_spvn_* and gdt_convs_pred_* weight + bias
    assert {k: keys[k]["shape"] for k in ours} == ours


# --------------------------------------------------------------------------------------------
# parity


@pytest.mark.parametrize("order", ["current", "legacy"])
def test_swin_t_logits_match_official(model_t, image, reference_dir, order):
    model_t.patch_order = order
    with torch.no_grad():
        logits = model_t(image)
    assert logits.shape == (1, 1, 256, 256)
    assert _max_abs(logits, _ref(reference_dir, f"swin_v1_t_seed0_256x256_logits_{FIXTURE_ORDER[order]}")) <= TOL_LOGITS


def test_swin_l_logits_match_official(reference_dir, image, tmp_path):
    """Swin-L through a .safetensors file (the HF format); ~885 MB written to tmp."""
    state = synthetic_state_dict(reference_dir, "swin_v1_l")
    manifest = json.loads((reference_dir / "birefnet" / "weights_manifest_swin_v1_l_seed0.json").read_text())
    assert sha256_all(state) == manifest["sha256_all"]
    path = save_safetensors(state, tmp_path / "synthetic_general.safetensors")
    del state
    model = load_birefnet(path)
    path.unlink()   # pytest keeps old tmp folders; do not leave 0.9 GB behind
    assert model.config.name == "swin_v1_l" and model.patch_order == "current"
    with torch.no_grad():
        logits = model(image)
    assert _max_abs(logits, _ref(reference_dir, "swin_v1_l_seed0_256x256_logits_einops")) <= TOL_LOGITS


@pytest.mark.parametrize("order", ["current", "legacy"])
def test_swin_t_intermediates_match_official(model_t, image, reference_dir, order):
    model_t.patch_order = order
    seen: dict[str, list[torch.Tensor]] = {}
    modules = {"bb": model_t.bb, "squeeze": model_t.squeeze_module}
    modules.update({f"ipt_blk{k}": getattr(model_t.decoder, f"ipt_blk{k}") for k in range(1, 6)})
    modules.update({f"decoder_block{k}": getattr(model_t.decoder, f"decoder_block{k}") for k in range(1, 5)})
    modules.update({f"gdt_convs_attn_{k}": getattr(model_t.decoder, f"gdt_convs_attn_{k}") for k in range(2, 5)})
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: seen.setdefault(name, []).append(out))
             for name, m in modules.items()]
    try:
        with torch.no_grad():
            model_t(image)
    finally:
        for h in hooks:
            h.remove()
    fixtures = {f"bb_{p}_x{i + 1}": seen["bb"][j][i] for j, p in enumerate(("full", "half")) for i in range(4)}
    fixtures["squeeze"] = seen["squeeze"][0]
    fixtures["ipt_blk1"] = seen["ipt_blk1"][0]
    prefix = FIXTURE_ORDER[order]
    for name, outs in seen.items():
        if name.startswith(("ipt_blk", "decoder_block", "gdt_convs_attn")) and name != "ipt_blk1":
            fixtures[f"{prefix}_{name}"] = outs[0]
    assert len(fixtures) == 8 + 2 + 11
    for name, ours in fixtures.items():
        ref = _ref(reference_dir, f"swin_v1_t_seed0_256x256_intermediates/{name}")
        assert _max_abs(ours[:, :ref.shape[1]], ref) <= TOL_INTERMEDIATE, name


def test_float64_lands_close_to_official(file_t, image, reference_dir):
    """README self-check: our fp64 run within ~3e-5 of the official fp32 fixture."""
    model = load_birefnet(file_t, patch_order="current", dtype=torch.float64)
    with torch.no_grad():
        logits = model(image.double())
    assert logits.dtype == torch.float64
    assert _max_abs(logits, _ref(reference_dir, "swin_v1_t_seed0_256x256_logits_einops")) <= 3e-5


def test_pure_torch_deformable_conv_gives_the_fixture(model_t, image, reference_dir, monkeypatch):
    monkeypatch.setattr(deform_conv, "DEFAULT_BACKEND", "torch")
    model_t.patch_order = "legacy"
    with torch.no_grad():
        logits = model_t(image)
    assert _max_abs(logits, _ref(reference_dir, "swin_v1_t_seed0_256x256_logits_legacy")) <= TOL_LOGITS


# --------------------------------------------------------------------------------------------
# deformable convolution backends


@pytest.mark.parametrize("kernel", [1, 3, 7])
def test_deformable_backends_agree(kernel):
    if "torchvision" not in deform_conv.BACKENDS:
        pytest.skip("torchvision's deform_conv2d is not available here")
    g = torch.Generator().manual_seed(kernel)
    x = torch.randn(2, 5, 9, 11, generator=g, dtype=torch.float64)
    offset = 3.0 * torch.randn(2, 2 * kernel * kernel, 9, 11, generator=g, dtype=torch.float64)  # many out of bounds
    offset[0, 0, 0, 0] = 1.0   # integer positions exercise the floor/corner edge
    mask = 2 * torch.rand(2, kernel * kernel, 9, 11, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 5, kernel, kernel, generator=g, dtype=torch.float64)
    args = (x, offset, weight, mask, kernel // 2)
    ref = deform_conv.deform_conv2d(*args, backend="torchvision")
    assert _max_abs(deform_conv.deform_conv2d(*args, backend="torch"), ref) <= 1e-12
    f32 = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
    assert _max_abs(deform_conv.deform_conv2d(*f32, backend="torch"), ref) <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_deformable_conv_runs_in_half_precision(dtype):
    g = torch.Generator().manual_seed(0)
    x, offset = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 18, 8, 8, generator=g)
    weight, mask = torch.randn(3, 4, 3, 3, generator=g), torch.rand(1, 9, 8, 8, generator=g)
    ref = deform_conv.deform_conv2d(x, offset, weight, mask, 1)
    for backend in deform_conv.BACKENDS:
        out = deform_conv.deform_conv2d(*(t.to(dtype) for t in (x, offset, weight, mask)), 1, backend=backend)
        assert out.dtype == dtype
        assert _max_abs(out, ref) <= 0.1 * ref.abs().max().item(), backend


def test_without_torchvision_the_pure_torch_backend_is_chosen(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)   # import torchvision -> ImportError
    monkeypatch.setitem(sys.modules, "torchvision.ops", None)
    spec = importlib.util.spec_from_file_location("_dcn_without_tv", deform_conv.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh.DEFAULT_BACKEND == "torch" and "torchvision" not in fresh.BACKENDS
    with pytest.raises(ValueError, match="not available"):
        fresh.deform_conv2d(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 1, 1),
                            torch.ones(1, 1, 2, 2), 0, backend="torchvision")


# --------------------------------------------------------------------------------------------
# input contract


def test_sizes_must_be_multiples_of_32(model_t):
    with pytest.raises(ValueError, match="multiples of 32"):
        model_t(torch.zeros(1, 3, 250, 256))
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        model_t(torch.zeros(1, 1, 64, 64))
    assert model_t.size_multiple == 32


def test_non_square_batch_equals_single_runs(model_t):
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(2, 3, 64, 96, generator=g)
    with torch.no_grad():
        both = model_t(batch)
        single = torch.cat([model_t(batch[:1]), model_t(batch[1:])])
    assert both.shape == (2, 1, 64, 96)
    assert _max_abs(both, single) <= 1e-4


# --------------------------------------------------------------------------------------------
# loader


def test_registry_name_sets_patch_order_and_training_size(state_t, tmp_path):
    for name, order, hw in (("BiRefNet_lite-2K.safetensors", "legacy", (1440, 2560)),
                            ("someone_elses_finetune.safetensors", "current", (1024, 1024))):
        path = save_safetensors(state_t, tmp_path / name, dtype="fp16")   # fp16 files load too
        model = load_birefnet(path)
        assert (model.patch_order, model.train_hw) == (order, hw), name
        assert next(model.parameters()).dtype == torch.float32
        assert load_birefnet(path, patch_order="current").patch_order == "current"
        path.unlink()


def test_registry_entries():
    entries = {e.filename: e for e in registry.known_files("birefnet")}
    assert entries["BiRefNet_HR.safetensors"].train_hw == (2048, 2048)
    assert entries["BiRefNet_HR.safetensors"].patch_order == "current"
    assert entries["BiRefNet.safetensors"].patch_order == "legacy"
    assert {e.variant for e in entries.values()} == set(VARIANTS)
    official = [e for e in entries.values() if e.repo_id.startswith("ZhengPeng7/")]   # beside fine-tunes, copies
    assert len(official) == 16 and all(e.hf_filename == "model.safetensors" for e in official)
    url = hf_url(entries["BiRefNet_lite.safetensors"])
    assert url.endswith("ZhengPeng7/BiRefNet_lite/resolve/main/model.safetensors")


def test_loader_accepts_wrappers_and_missing_counters(state_t):
    slim = {f"_orig_mod.{k}": v for k, v in state_t.items()
            if not k.endswith(("num_batches_tracked", "relative_position_index"))}
    model = load_birefnet({"model": slim})
    assert model.config.name == "swin_v1_t"
    assert torch.equal(model.bb.layers[0].blocks[0].attn.relative_position_index,
                       state_t["bb.layers.0.blocks.0.attn.relative_position_index"])


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("decoder.ipt_blk3.conv1.weight"), "1 missing: decoder.ipt_blk3.conv1.weight"),
    (lambda s: s.__setitem__("decoder.extra.weight", torch.zeros(1)), "1 unexpected: decoder.extra.weight"),
    (lambda s: s.__setitem__("decoder.conv_out1.0.bias", torch.zeros(2)), "wrong shape: decoder.conv_out1.0.bias"),
    (lambda s: s.__setitem__("bb.layers.0.blocks.0.attn.relative_position_index",
                             torch.zeros(49, 49, dtype=torch.int64)), "relative-position index of a 7x7"),
    (lambda s: s.__setitem__("decoder.conv_out1.0.weight", torch.full((1, 120, 1, 1), float("nan"))), "NaN"),
])
def test_loader_names_what_is_wrong(state_t, edit, message):
    state = dict(state_t)
    edit(state)
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[")):
        load_birefnet(state)


def test_loader_refuses_other_models_and_backbones(state_t):
    with pytest.raises(CheckpointError, match="PDFNet"):
        load_birefnet({"encoder.absolute_pos_embed": torch.zeros(1), "decoder.FSE_mix.0.w": torch.zeros(1)})
    swin_s = dict(state_t)
    swin_s["bb.layers.2.blocks.17.norm1.weight"] = torch.ones(384)   # 18 blocks in stage 3: Swin-S
    with pytest.raises(CheckpointError, match=r"depths \(2, 2, 18, 2\).*not supported"):
        load_birefnet(swin_s)
    with pytest.raises(ValueError, match="patch_order"):
        load_birefnet(state_t, patch_order="einops-ish")
