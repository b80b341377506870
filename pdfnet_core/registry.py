"""Known model files: where each comes from, what it is, and what it may be used for.

One frozen ``ModelEntry`` per file, keyed by the file name a user sees in a models folder.  Sizes and
hashes are filled in only from verified facts; ``None`` means "not known", and then only the
download's own integrity checks (huggingface_hub's) apply.  Nothing here touches the network.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

HF_ENDPOINT = "https://huggingface.co"

ARCHS = ("pdfnet", "depth_anything", "birefnet", "segrefiner")
# Folder keys as registered with ComfyUI's folder_paths; "depthanything" is the name other depth
# packs already use, so users keep one copy of those weights.
FOLDER_KEYS = ("pdfnet", "depthanything", "birefnet", "segrefiner")

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelEntry:
    """One downloadable weight file.

    ``filename`` is the local name (and the registry key); ``hf_filename`` the path inside the hub
    repository (the same unless given).  ``variant`` is the size variant where an architecture has
    several (Depth-Anything ``vits``/``vitb``/``vitl``) and None where it has one.
    """

    filename: str
    arch: str
    variant: str | None
    repo_id: str
    folder_key: str
    licence: str
    description: str
    hf_filename: str = ""
    revision: str = "main"
    size_bytes: int | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if not self.hf_filename:
            object.__setattr__(self, "hf_filename", self.filename)
        if "/" in self.filename or "\\" in self.filename:
            raise ValueError(f"registry entry {self.filename!r}: the local name must be a bare file name")
        if self.arch not in ARCHS:
            raise ValueError(f"registry entry {self.filename!r}: unknown arch {self.arch!r}; known: {', '.join(ARCHS)}")
        if self.folder_key not in FOLDER_KEYS:
            raise ValueError(f"registry entry {self.filename!r}: unknown folder key {self.folder_key!r}; "
                             f"known: {', '.join(FOLDER_KEYS)}")
        if self.size_bytes is not None and self.size_bytes <= 0:
            raise ValueError(f"registry entry {self.filename!r}: size_bytes must be positive or None")
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"registry entry {self.filename!r}: sha256 must be 64 lowercase hex digits or None")


# Licences: Depth-Anything-V2 per NOTES (Small Apache-2.0, Base/Large CC-BY-NC-4.0); Kijai's
# safetensors are conversions of those weights, so they carry the licence of their source.  PDFNet's
# code repository (Tennine2077/PDFNet) is MIT; its weights have no separate licence we have verified.
_PDFNET_LICENCE = "MIT (code repository Tennine2077/PDFNet; check the model card for the weights)"
_DA_LICENCE = {"vits": "Apache-2.0", "vitb": "CC-BY-NC-4.0", "vitl": "CC-BY-NC-4.0"}
_DA_SIZE_NAME = {"vits": "Small", "vitb": "Base", "vitl": "Large"}


def _pdfnet_entries() -> tuple[ModelEntry, ...]:
    return (
        ModelEntry("PDFNet_Best.pth", "pdfnet", None, "Tennineee/PDFNet", "pdfnet", _PDFNET_LICENCE,
                   "PDFNet (Swin-B) trained on DIS5K DIS-TR: the paper's dichotomous segmentation model"),
        ModelEntry("PDF-Generally.pth", "pdfnet", None, "Tennineee/PDFNet-General", "pdfnet", _PDFNET_LICENCE,
                   "PDFNet (Swin-B) trained on DIS5K plus high-resolution salient object sets: general use"),
    )


def _depth_anything_entries() -> tuple[ModelEntry, ...]:
    entries = []
    for variant, size_name in _DA_SIZE_NAME.items():
        licence = _DA_LICENCE[variant]
        entries.append(ModelEntry(
            f"depth_anything_v2_{variant}.pth", "depth_anything", variant,
            f"depth-anything/Depth-Anything-V2-{size_name}", "depthanything", licence,
            f"Depth-Anything-V2 {size_name} ({variant}), official PyTorch checkpoint"))
        for precision in ("fp16", "fp32"):
            entries.append(ModelEntry(
                f"depth_anything_v2_{variant}_{precision}.safetensors", "depth_anything", variant,
                "Kijai/DepthAnythingV2-safetensors", "depthanything", licence,
                f"Depth-Anything-V2 {size_name} ({variant}), {precision} safetensors conversion"))
    return tuple(entries)


def _build(entries: tuple[ModelEntry, ...]) -> Mapping[str, ModelEntry]:
    table: dict[str, ModelEntry] = {}
    for entry in entries:
        if entry.filename in table:
            raise ValueError(f"duplicate registry entry {entry.filename!r}")
        table[entry.filename] = entry
    return MappingProxyType(table)


REGISTRY: Mapping[str, ModelEntry] = _build(_pdfnet_entries() + _depth_anything_entries())


def known_files(folder_key: str) -> list[ModelEntry]:
    """Entries that belong in the models folder ``folder_key``, in registry order."""
    if folder_key not in FOLDER_KEYS:
        raise ValueError(f"unknown model folder key {folder_key!r}; known: {', '.join(FOLDER_KEYS)}")
    return [e for e in REGISTRY.values() if e.folder_key == folder_key]


def lookup(filename: str) -> ModelEntry | None:
    """The entry for a local file name, or None for a file this pack does not know (user files are fine)."""
    return REGISTRY.get(filename)


def hf_url(entry: ModelEntry, endpoint: str = HF_ENDPOINT) -> str:
    """The direct download address of ``entry``, for error messages and workflow ``models[]`` metadata."""
    return f"{endpoint.rstrip('/')}/{entry.repo_id}/resolve/{entry.revision}/{entry.hf_filename}"
