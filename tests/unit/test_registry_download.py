"""Registry facts and the download path, against a fake hub function: no test touches the network."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import huggingface_hub
import pytest

from pdfnet_core.download import (ModelDownloadError, ModelFileMissingError, UnsafeModelNameError,
                                  ensure_model_file, sha256_file, validate_model_name)
from pdfnet_core import families as registry
from pdfnet_core.families import REGISTRY, known_files, lookup
from pdfnet_core.specs import ModelEntry, hf_url

PAYLOAD = b"not really weights, but bytes all the same\n" * 50


class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download: writes ``payload`` where it is asked to."""

    def __init__(self, payload: bytes = PAYLOAD, error: BaseException | None = None,
                 cache_dir: Path | None = None) -> None:
        self.payload = payload
        self.error = error
        self.cache_dir = cache_dir   # set: behave like a client that returns a path in its own cache
        self.calls: list[dict] = []

    def __call__(self, repo_id, filename, *, revision=None, local_dir=None, **kwargs):
        self.calls.append(dict(repo_id=repo_id, filename=filename, revision=revision, local_dir=local_dir))
        base = Path(self.cache_dir or local_dir)
        out = base / filename
        out.parent.mkdir(parents=True, exist_ok=True)
        if self.error is not None:
            out.write_bytes(self.payload[: len(self.payload) // 2])   # a half file, as a dropped link leaves
            raise self.error
        out.write_bytes(self.payload)
        return str(out)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any hub call a test did not arrange fails the test instead of reaching the network."""
    def refuse(*args, **kwargs):
        pytest.fail(f"unexpected hub download: {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def hub(monkeypatch) -> FakeHub:
    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    return fake


def _entry(**changes) -> ModelEntry:
    return dataclasses.replace(REGISTRY["PDFNet_Best.pth"], **changes)


def _listing(folder: Path) -> list[str]:
    """Everything under ``folder``, hidden staging folders included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------------------------
# registry


def test_registry_holds_the_published_files():
    assert [e.filename for e in known_files("pdfnet")] == ["PDFNet_Best.pth", "PDF-Generally.pth"]
    da = {e.filename: e for e in known_files("depthanything")}
    for v, size in (("vits", "Small"), ("vitb", "Base"), ("vitl", "Large")):
        assert da[f"depth_anything_v2_{v}.pth"].repo_id == f"depth-anything/Depth-Anything-V2-{size}"
        for precision in ("fp16", "fp32"):
            e = da[f"depth_anything_v2_{v}_{precision}.safetensors"]
            assert (e.repo_id, e.variant, e.arch) == ("Kijai/DepthAnythingV2-safetensors", v, "depth_anything")
    assert len(da) == 9
    assert lookup("PDF-Generally.pth").repo_id == "Tennineee/PDFNet-General"
    assert lookup("nothing_like_it.pth") is None
    assert all(key == e.filename for key, e in REGISTRY.items())


def test_depth_anything_licences_follow_the_size():
    for e in known_files("depthanything"):
        assert e.licence == ("Apache-2.0" if e.variant == "vits" else "CC-BY-NC-4.0"), e.filename


def test_hf_url_is_the_resolve_address():
    assert hf_url(lookup("PDFNet_Best.pth")) == "https://huggingface.co/Tennineee/PDFNet/resolve/main/PDFNet_Best.pth"
    assert (hf_url(lookup("depth_anything_v2_vitl_fp16.safetensors")) ==
            "https://huggingface.co/Kijai/DepthAnythingV2-safetensors/resolve/main/depth_anything_v2_vitl_fp16.safetensors")


def test_entries_are_frozen_and_validated():
    e = lookup("PDFNet_Best.pth")
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.size_bytes = 1
    for bad in (dict(sha256="ABC"), dict(size_bytes=0), dict(filename="../x.pth")):
        with pytest.raises(ValueError):
            _entry(**bad)
    # a family lists only files of its own family and folder
    spec = registry.family("pdfnet")
    for bad in (dict(arch="unet"), dict(folder_key="checkpoints")):
        with pytest.raises(ValueError, match="is listed by pdfnet"):
            registry.register_family(dataclasses.replace(spec, name="pdfnet_copy", files=(_entry(**bad),)))
    with pytest.raises(ValueError, match="unknown model folder key"):
        known_files("checkpoints")


# --------------------------------------------------------------------------------------------
# names


@pytest.mark.parametrize("name", ["../evil.pth", "..", ".", "...", "sub/x.pth", "sub\\x.pth", "/etc/passwd",
                                  "C:evil.pth", "C:\\models\\x.pth", "model.pth:stream", "", "a\x00b.pth",
                                  "a/../../b.pth"])
def test_escaping_names_are_rejected(tmp_path, name):
    folder = tmp_path / "models"
    folder.mkdir()
    with pytest.raises(UnsafeModelNameError):
        ensure_model_file(name, folder, allow_download=True)
    assert _listing(tmp_path) == ["models"]   # nothing written anywhere


def test_rejection_is_a_value_error_and_a_download_error():
    with pytest.raises(ValueError, match="path separator"):
        validate_model_name("../x.pth")
    with pytest.raises(ModelDownloadError):
        validate_model_name("../x.pth")


def test_dots_inside_a_plain_name_are_fine(tmp_path):
    (tmp_path / "model..v2.pth").write_bytes(b"x")
    assert ensure_model_file("model..v2.pth", tmp_path, allow_download=False) == tmp_path / "model..v2.pth"


# --------------------------------------------------------------------------------------------
# present files


def test_existing_file_is_returned_without_downloading(tmp_path):
    target = tmp_path / "PDFNet_Best.pth"
    target.write_bytes(PAYLOAD)
    # no_network fails the test on any hub call; a known size that matches is accepted
    assert ensure_model_file("PDFNet_Best.pth", tmp_path, allow_download=True) == target
    assert ensure_model_file(_entry(size_bytes=len(PAYLOAD)), tmp_path, allow_download=True, offline=True) == target


def test_existing_file_of_the_wrong_size_is_reported_and_kept(tmp_path):
    target = tmp_path / "PDFNet_Best.pth"
    target.write_bytes(PAYLOAD)
    with pytest.raises(ModelDownloadError) as info:
        ensure_model_file(_entry(size_bytes=len(PAYLOAD) + 1), tmp_path, allow_download=True)
    message = str(info.value)
    assert f"{len(PAYLOAD)} bytes" in message and "Delete it" in message
    assert hf_url(lookup("PDFNet_Best.pth")) in message and str(tmp_path) in message
    assert target.read_bytes() == PAYLOAD   # a user's file is never deleted for them


def test_unknown_user_file_is_returned_and_unknown_missing_file_names_the_folder(tmp_path):
    (tmp_path / "my_finetune.pth").write_bytes(b"x")
    assert ensure_model_file("my_finetune.pth", tmp_path, allow_download=True) == tmp_path / "my_finetune.pth"
    with pytest.raises(ModelFileMissingError, match="place the file in") as info:
        ensure_model_file("other_finetune.pth", tmp_path, allow_download=True)
    assert str(tmp_path) in str(info.value)


# --------------------------------------------------------------------------------------------
# downloading


def test_download_success_lands_atomically_under_its_name(tmp_path, hub):
    folder = tmp_path / "models" / "pdfnet"   # created on demand
    entry = _entry(size_bytes=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest())
    path = ensure_model_file(entry, folder, allow_download=True)
    assert path == folder / "PDFNet_Best.pth"
    assert path.read_bytes() == PAYLOAD
    assert _listing(folder) == ["PDFNet_Best.pth"]   # staging folder gone
    [call] = hub.calls
    assert (call["repo_id"], call["filename"], call["revision"]) == ("Tennineee/PDFNet", "PDFNet_Best.pth", "main")
    assert Path(call["local_dir"]).parent == folder   # staged on the same file system as the target
    # the second request finds the file and does not download again
    assert ensure_model_file("PDFNet_Best.pth", folder, allow_download=True) == path
    assert len(hub.calls) == 1


def test_download_by_name_uses_the_registry(tmp_path, hub):
    path = ensure_model_file("depth_anything_v2_vits_fp16.safetensors", tmp_path, allow_download=True)
    assert path.read_bytes() == PAYLOAD
    assert hub.calls[0]["repo_id"] == "Kijai/DepthAnythingV2-safetensors"


def test_size_mismatch_is_an_error_and_leaves_nothing(tmp_path, hub):
    with pytest.raises(ModelDownloadError) as info:
        ensure_model_file(_entry(size_bytes=len(PAYLOAD) - 1), tmp_path, allow_download=True)
    message = str(info.value)
    assert f"has {len(PAYLOAD)} bytes" in message and "nothing was saved" in message
    assert "https://huggingface.co/Tennineee/PDFNet/resolve/main/PDFNet_Best.pth" in message
    assert str(tmp_path) in message
    assert _listing(tmp_path) == []


def test_sha256_mismatch_is_an_error_and_leaves_nothing(tmp_path, hub):
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(ModelDownloadError, match="sha256") as info:
        ensure_model_file(_entry(size_bytes=len(PAYLOAD), sha256=wrong), tmp_path, allow_download=True)
    assert hashlib.sha256(PAYLOAD).hexdigest() in str(info.value)
    assert info.value.url == hf_url(lookup("PDFNet_Best.pth")) and info.value.folder == tmp_path
    assert _listing(tmp_path) == []


def test_hub_failure_names_url_and_folder_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", FakeHub(error=OSError("connection refused")))
    with pytest.raises(ModelDownloadError) as info:
        ensure_model_file("PDF-Generally.pth", tmp_path, allow_download=True)
    message = str(info.value)
    assert "connection refused" in message
    assert "https://huggingface.co/Tennineee/PDFNet-General/resolve/main/PDF-Generally.pth" in message
    assert str(tmp_path) in message
    assert isinstance(info.value.__cause__, OSError)
    assert _listing(tmp_path) == []


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", FakeHub(error=KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ensure_model_file("PDFNet_Best.pth", tmp_path, allow_download=True)
    assert _listing(tmp_path) == []


def test_hub_cache_copy_is_left_alone(tmp_path, monkeypatch):
    hub_cache = tmp_path / "hub_cache"
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", FakeHub(cache_dir=hub_cache))
    folder = tmp_path / "models"
    path = ensure_model_file("PDFNet_Best.pth", folder, allow_download=True)
    assert path.read_bytes() == PAYLOAD and (hub_cache / "PDFNet_Best.pth").is_file()
    assert _listing(folder) == ["PDFNet_Best.pth"]


def test_download_disabled_names_url_and_folder(tmp_path):
    with pytest.raises(ModelFileMissingError) as info:
        ensure_model_file("depth_anything_v2_vitb.pth", tmp_path, allow_download=False)
    message = str(info.value)
    assert "downloading is off" in message
    assert "https://huggingface.co/depth-anything/Depth-Anything-V2-Base/resolve/main/depth_anything_v2_vitb.pth" in message
    assert str(tmp_path) in message


def test_offline_flag_refuses_with_url_and_folder(tmp_path, hub):
    with pytest.raises(ModelFileMissingError, match="offline") as info:
        ensure_model_file("PDFNet_Best.pth", tmp_path, allow_download=True, offline=True)
    assert hf_url(lookup("PDFNet_Best.pth")) in str(info.value) and str(tmp_path) in str(info.value)
    assert hub.calls == [] and _listing(tmp_path) == []


def test_hf_hub_offline_env_is_honoured_and_an_explicit_flag_wins(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFileMissingError, match="HF_HUB_OFFLINE"):
        ensure_model_file("PDFNet_Best.pth", tmp_path, allow_download=True)
    assert hub.calls == []
    assert ensure_model_file("PDFNet_Best.pth", tmp_path, allow_download=True, offline=False).is_file()
    assert len(hub.calls) == 1


def test_sha256_file_streams_in_chunks(tmp_path):
    p = tmp_path / "blob"
    p.write_bytes(PAYLOAD)
    assert sha256_file(p, chunk_bytes=7) == sha256_file(p) == hashlib.sha256(PAYLOAD).hexdigest()
