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
# BiRefNet's two patch-channel orders (pdfnet_core.models.birefnet.PATCH_ORDERS); kept as names here so
# that the registry stays importable without torch.
PATCH_ORDERS = ("current", "legacy")


@dataclass(frozen=True)
class ModelEntry:
    """One downloadable weight file.

    ``filename`` is the local name (and the registry key); ``hf_filename`` the path inside the hub
    repository (the same unless given).  ``variant`` is the size variant where an architecture has
    several (Depth-Anything ``vits``/``vitb``/``vitl``) and None where it has one.
    Several files may share one hub name (every BiRefNet repository holds ``model.safetensors``); the
    local name, which keys the registry, then says which it is.  ``train_hw`` is the (height, width)
    the weights were trained at, where it matters to the caller; ``patch_order`` is BiRefNet's
    patch-channel order, None where it is not known.  A file published only outside the hub has
    ``repo_id=""`` and ``manual_url`` (the publisher's page): it is never downloaded automatically,
    and the messages say where to get it and where to put it.
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
    train_hw: tuple[int, int] | None = None
    patch_order: str | None = None
    manual_url: str = ""

    @property
    def on_hub(self) -> bool:
        return bool(self.repo_id)

    def __post_init__(self) -> None:
        if bool(self.repo_id) == bool(self.manual_url):
            raise ValueError(f"registry entry {self.filename!r}: give either a hub repo_id or a manual_url")
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
        if self.patch_order is not None and self.patch_order not in PATCH_ORDERS:
            raise ValueError(f"registry entry {self.filename!r}: patch_order must be one of {PATCH_ORDERS} or None")
        if self.train_hw is not None and (len(self.train_hw) != 2 or min(self.train_hw) <= 0 or
                                          any(s % 32 for s in self.train_hw)):
            raise ValueError(f"registry entry {self.filename!r}: train_hw must be (height, width), multiples of 32")


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


# BiRefNet: every ZhengPeng7 repository holds its weights as ``model.safetensors``; the local name is the
# repository name (lldacing and 1038lab also name files after the variant).  Patch order, from the release
# dates in the official README: weights released before the order change of 2024-11-05 (commit 5198d3f)
# were trained with the legacy order; BiRefNet_HR (2025-02-01), _HR-matting (2025-02-12) and _dynamic
# (2025-03-31) with the current one.  Where no release date is documented the order is left unknown
# (None; the loader then uses "current" and the user can override it).  No real checkpoint was
# available to confirm any of these.  The dynamic variants have no single training size (None).
_BIREFNET_LICENCE = "MIT (ZhengPeng7/BiRefNet code and model cards)"
_BIREFNET_REPOS = (
    # repo, backbone, (train height, width), patch order, description
    ("BiRefNet", "swin_v1_l", (1024, 1024), "legacy", "general use (DIS, HRSOD, COD and more), 1024x1024"),
    ("BiRefNet_HR", "swin_v1_l", (2048, 2048), "current", "general use, trained at 2048x2048 (high-resolution images)"),
    ("BiRefNet_HR-matting", "swin_v1_l", (2048, 2048), "current", "general matting, trained at 2048x2048"),
    ("BiRefNet_dynamic", "swin_v1_l", None, "current",
     "general use, trained at dynamic resolutions 256-2304: run near the image's own size (multiples of 32)"),
    ("BiRefNet_dynamic-matting", "swin_v1_l", None, None,
     "general matting, dynamic resolutions: run near the image's own size (multiples of 32)"),
    ("BiRefNet_512x512", "swin_v1_l", (512, 512), None, "general use at 512x512"),
    ("BiRefNet-portrait", "swin_v1_l", (1024, 1024), "legacy", "portrait segmentation"),
    ("BiRefNet-matting", "swin_v1_l", (1024, 1024), "legacy", "general trimap-free matting"),
    ("BiRefNet-DIS5K", "swin_v1_l", (1024, 1024), "legacy", "the paper's DIS model (trained on DIS5K-TR)"),
    ("BiRefNet-DIS5K-TR_TEs", "swin_v1_l", (1024, 1024), "legacy", "DIS, trained on DIS5K-TR and the test sets"),
    ("BiRefNet-HRSOD", "swin_v1_l", (1024, 1024), "legacy", "high-resolution salient object detection (paper)"),
    ("BiRefNet-COD", "swin_v1_l", (1024, 1024), "legacy", "camouflaged object detection (paper)"),
    ("BiRefNet-legacy", "swin_v1_l", (1024, 1024), "legacy", "the first general-use release"),
    ("BiRefNet_lite", "swin_v1_t", (1024, 1024), "legacy", "Swin-T: faster, lighter general use, 1024x1024"),
    ("BiRefNet_lite-2K", "swin_v1_t", (1440, 2560), "legacy", "Swin-T general use at 2560x1440 (width x height)"),
    ("BiRefNet_lite-matting", "swin_v1_t", (1024, 1024), None, "Swin-T general matting"),
)


def _birefnet_entries() -> tuple[ModelEntry, ...]:
    return tuple(
        ModelEntry(f"{repo}.safetensors", "birefnet", variant, f"ZhengPeng7/{repo}", "birefnet", _BIREFNET_LICENCE,
                   f"BiRefNet ({'Swin-L' if variant == 'swin_v1_l' else 'Swin-T'}): {description}",
                   hf_filename="model.safetensors", train_hw=train_hw, patch_order=order)
        for repo, variant, train_hw, order, description in _BIREFNET_REPOS)


# SegRefiner (MengyuWang826/SegRefiner, NeurIPS 2023): the authors publish the two checkpoints only as
# Google Drive links in their README (no hub mirror), so these entries are manual-download only.
# Sizes and hashes are not published.
_SEGREFINER_LICENCE = "Apache-2.0 code (MengyuWang826/SegRefiner); the weights carry no explicit licence"


def _segrefiner_entries() -> tuple[ModelEntry, ...]:
    return (
        ModelEntry("segrefiner_lr_latest.pth", "segrefiner", "lr", "", "segrefiner", _SEGREFINER_LICENCE,
                   "SegRefiner LR (trained on LVIS): per-object refinement of instance masks",
                   manual_url="https://drive.google.com/file/d/1FrhbdwNyTlQYNbF9IgFF2tY3iQXHFcau/view?usp=sharing"),
        ModelEntry("segrefiner_hr_latest.pth", "segrefiner", "hr", "", "segrefiner", _SEGREFINER_LICENCE,
                   "SegRefiner HR (trained on ThinObject-5K + DIS-TR): high-resolution refinement of one mask",
                   manual_url="https://drive.google.com/file/d/143kerk4WOerGZMqR-cAETb7rOcoQ0CQ_/view?usp=sharing"),
    )


def _build(entries: tuple[ModelEntry, ...]) -> Mapping[str, ModelEntry]:
    table: dict[str, ModelEntry] = {}
    for entry in entries:
        if entry.filename in table:
            raise ValueError(f"duplicate registry entry {entry.filename!r}")
        table[entry.filename] = entry
    return MappingProxyType(table)


REGISTRY: Mapping[str, ModelEntry] = _build(_pdfnet_entries() + _depth_anything_entries() + _birefnet_entries()
                                            + _segrefiner_entries())


def known_files(folder_key: str) -> list[ModelEntry]:
    """Entries that belong in the models folder ``folder_key``, in registry order."""
    if folder_key not in FOLDER_KEYS:
        raise ValueError(f"unknown model folder key {folder_key!r}; known: {', '.join(FOLDER_KEYS)}")
    return [e for e in REGISTRY.values() if e.folder_key == folder_key]


def lookup(filename: str) -> ModelEntry | None:
    """The entry for a local file name, or None for a file this pack does not know (user files are fine)."""
    return REGISTRY.get(filename)


def hf_url(entry: ModelEntry, endpoint: str = HF_ENDPOINT) -> str:
    """The direct download address of ``entry``, for error messages and workflow ``models[]`` metadata.

    For a file not on the hub this is the publisher's page (``manual_url``), so messages built on it
    still say where to get the file.
    """
    if not entry.on_hub:
        return entry.manual_url
    return f"{endpoint.rstrip('/')}/{entry.repo_id}/resolve/{entry.revision}/{entry.hf_filename}"
