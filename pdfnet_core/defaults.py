"""The models used when a caller names none: found in a models folder, loaded once through the cache.

Folder: ``$PDFNET_MODELS_DIR`` (default ``~/.cache/pdfnet/models``), with one sub-folder per kind as
in ComfyUI (``pdfnet/``, ``depthanything/``).  Downloading a missing file is opt-in: pass
``download=True`` or set ``PDFNET_DOWNLOAD=1``; otherwise the error says where to put the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn


def models_dir() -> Path:
    return Path(os.environ.get("PDFNET_MODELS_DIR", Path.home() / ".cache" / "pdfnet" / "models"))


def _load_pdfnet(path: Path, device, dtype) -> nn.Module:
    from .pdfnet_loader import load_pdfnet

    return load_pdfnet(path, device=device, dtype=dtype)


def _load_depth(path: Path, device, dtype) -> nn.Module:
    from .depth_anything_loader import load_depth_anything

    return load_depth_anything(path, device=device, dtype=dtype)


@dataclass(frozen=True)
class DefaultModel:
    filename: str
    folder_key: str
    load: Callable[[Path, str, torch.dtype], nn.Module]


DEFAULTS: dict[str, DefaultModel] = {
    "pdfnet": DefaultModel("PDFNet_Best.pth", "pdfnet", _load_pdfnet),
    # Small: the only Depth-Anything-V2 size under a permissive licence (Apache-2.0); see README.
    "depth_anything": DefaultModel("depth_anything_v2_vits.pth", "depthanything", _load_depth),
}


def download_allowed(download: bool | None) -> bool:
    if download is not None:
        return download
    return os.environ.get("PDFNET_DOWNLOAD", "").strip().lower() in ("1", "true", "yes", "on")


def default_model_path(kind: str, folder: Path | None = None, download: bool | None = None) -> Path:
    """The default file of ``kind`` in ``folder`` (default: models_dir()/<folder key>), fetched if allowed."""
    from .download import ensure_model_file

    spec = DEFAULTS[kind]
    target = folder if folder is not None else models_dir() / spec.folder_key
    return ensure_model_file(spec.filename, target, allow_download=download_allowed(download))


def default_model(kind: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  download: bool | None = None) -> nn.Module:
    """The default model of ``kind`` ("pdfnet" or "depth_anything"), shared through the model cache."""
    from .cache import default_cache

    path = default_model_path(kind, download=download)
    spec = DEFAULTS[kind]
    return default_cache().get_or_load(path, dtype, device, lambda: spec.load(path, device, dtype), tag=kind)
