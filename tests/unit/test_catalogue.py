"""The licence-aware catalogue: licences in the family specs, ToonOut/Lucida/RMBG-2.0 entries, core's
background_removal folder and the loaders' commercial_only switch (nodes.model_files, with stand-ins
for ComfyUI)."""
from __future__ import annotations

import dataclasses

import pytest

from nodes import model_files as mf
from pdfnet_core.download import ModelFileMissingError, ensure_model_file
from pdfnet_core.families import REGISTRY, family, known_files, lookup
from pdfnet_core.models.birefnet.loader import resolve_patch_order
from pdfnet_core.specs import LICENCES, ModelEntry
from test_nodes import comfy  # noqa: F401  (a fixture)

NON_COMMERCIAL = {"depth_anything_v2_vitb.pth", "depth_anything_v2_vitb_fp16.safetensors",
                  "depth_anything_v2_vitb_fp32.safetensors", "depth_anything_v2_vitl.pth",
                  "depth_anything_v2_vitl_fp16.safetensors", "depth_anything_v2_vitl_fp32.safetensors",
                  "RMBG-2.0.safetensors"}


def test_every_known_file_states_its_licence_and_the_non_commercial_ones_are_these():
    assert all(entry.licence in LICENCES for entry in REGISTRY.values())
    assert {name for name, entry in REGISTRY.items() if not entry.commercial} == NON_COMMERCIAL
    assert lookup("depth_anything_v2_vitl.pth").licence_text() == "CC-BY-NC-4.0, non-commercial use only"
    assert lookup("BiRefNet.safetensors").licence_text() == "MIT, commercial use allowed"


def test_an_entry_with_a_licence_outside_the_table_is_refused():
    entry = lookup("BiRefNet.safetensors")
    with pytest.raises(ValueError, match="licence 'GPL' is not one of MIT, Apache-2.0, CC-BY-NC-4.0"):
        dataclasses.replace(entry, licence="GPL")
    assert isinstance(dataclasses.replace(entry, licence="Apache-2.0"), ModelEntry)


@pytest.mark.parametrize("name, order, hw, repo", [
    ("birefnet_finetuned_toonout.pth", "current", (1024, 1024), "joelseytre/toonout"),
    ("lucida.safetensors", "current", (1024, 1024), "Comfy-Org/BiRefNet"),
    ("birefnet.safetensors", "legacy", (1024, 1024), "Comfy-Org/BiRefNet"),   # core's own copy
    ("RMBG-2.0.safetensors", "legacy", (1024, 1024), ""),
])
def test_fine_tunes_and_copies_are_birefnet_files_with_an_overridable_patch_order(name, order, hw, repo):
    entry = lookup(name)
    assert (entry.arch, entry.variant, entry.train_hw, entry.repo_id) == ("birefnet", "swin_v1_l", hw, repo)
    assert resolve_patch_order("auto", name) == order
    other = "legacy" if order == "current" else "current"
    assert resolve_patch_order(other, name) == other
    assert entry in known_files("birefnet")


def test_the_dynamic_variants_say_their_range_and_the_default_birefnet_file_is_the_general_one():
    dynamic = {e.filename for e in known_files("birefnet") if e.dynamic_sides == (256, 2304)}
    assert dynamic == {"BiRefNet_dynamic.safetensors", "BiRefNet_dynamic-matting.safetensors"}
    assert lookup("BiRefNet_lite-2K.safetensors").train_hw == (1440, 2560)
    assert family("birefnet").default_file == "BiRefNet.safetensors"


def test_rmbg_is_never_downloaded_and_says_where_to_get_it_and_its_licence(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: pytest.fail("must not download"))
    with pytest.raises(ModelFileMissingError) as err:
        ensure_model_file("RMBG-2.0.safetensors", tmp_path / "birefnet", allow_download=True, offline=False)
    text = str(err.value)
    assert "https://huggingface.co/briaai/RMBG-2.0" in text and "RMBG-2.0.safetensors" in text
    assert "cannot be downloaded automatically" in text and not (tmp_path / "birefnet").exists()
    message = mf.missing_model_message("birefnet", "RMBG-2.0.safetensors", ["/m/birefnet"], download=True)
    assert "CC-BY-NC-4.0, non-commercial use only" in message and "place it in /m/birefnet" in message
    assert "turn on 'download'" not in message


# --------------------------------------------------------------------------------------------
# the loaders (nodes.model_files over stand-ins for folder_paths)


@pytest.fixture()
def folders(comfy, tmp_path):  # noqa: F811
    from nodes import host

    fp = comfy.folder_paths
    core = tmp_path / "models" / "background_removal"
    core.mkdir(parents=True)
    fp.folder_names_and_paths["background_removal"] = ([str(core)], {".safetensors", ".pth"})  # as core sets it
    host.register_model_folders()
    return tmp_path / "models"


def test_the_birefnet_loader_lists_and_finds_files_in_cores_background_removal_folder(folders):
    (folders / "background_removal" / "lucida.safetensors").write_bytes(b"x")
    (folders / "background_removal" / "other.safetensors").write_bytes(b"x")
    choices = mf.list_models("birefnet")
    assert choices[:2] == ["lucida.safetensors", "other.safetensors"]          # present first
    assert choices.count("lucida.safetensors") == 1 and "BiRefNet.safetensors" in choices
    assert "other.safetensors" not in mf.list_models("pdfnet")               # only BiRefNet reads it
    assert mf.model_path("birefnet", "other.safetensors", False) == str(folders / "background_removal" /
                                                                        "other.safetensors")
    assert mf.check_model_choice("birefnet", "other.safetensors") is True
    (folders / "birefnet").mkdir(exist_ok=True)
    (folders / "birefnet" / "other.safetensors").write_bytes(b"own")         # the family's folder wins
    assert mf.model_path("birefnet", "other.safetensors", False) == str(folders / "birefnet" / "other.safetensors")


def test_commercial_only_refuses_non_commercial_and_unknown_files_with_the_licence(folders):
    (folders / "depthanything").mkdir(exist_ok=True)
    for name in ("depth_anything_v2_vitl.pth", "depth_anything_v2_vits.pth", "mine.pth"):
        (folders / "depthanything" / name).write_bytes(b"x")
    refused = mf.check_model_choice("depth_anything", "depth_anything_v2_vitl.pth", False, True)
    assert "CC-BY-NC-4.0, non-commercial use only" in refused and "commercial_only" in refused
    assert mf.check_model_choice("depth_anything", "depth_anything_v2_vitl.pth", False, False) is True
    assert mf.check_model_choice("depth_anything", "depth_anything_v2_vits.pth", False, True) is True
    assert "does not know the file's licence" in mf.check_model_choice("depth_anything", "mine.pth", False, True)
    with pytest.raises(ValueError, match="non-commercial use only"):   # execute refuses before reading the file
        mf.load_model("depth_anything", "depth_anything_v2_vitl.pth", "auto", commercial_only=True)
    assert "RMBG-2.0.safetensors" in mf.check_model_choice("birefnet", "RMBG-2.0.safetensors", False, True)


def test_the_model_name_tooltip_lists_every_known_files_licence():
    text = mf.licence_tooltip("birefnet")
    assert "CC-BY-NC-4.0, non-commercial use only: RMBG-2.0.safetensors" in text
    assert all(e.filename in text for e in known_files("birefnet"))
    depth = mf.licence_tooltip("depthanything")
    assert "Apache-2.0, commercial use allowed: depth_anything_v2_vits.pth" in depth
