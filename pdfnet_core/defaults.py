"""The models used when a caller names none: a family's default file, found in a models folder,
loaded once through the cache.

Folder: ``$PDFNET_MODELS_DIR`` (default ``~/.cache/pdfnet/models``), with one sub-folder per family
as in ComfyUI (``pdfnet/``, ``depthanything/``).  Downloading a missing file is opt-in: pass
``download=True`` or set ``PDFNET_DOWNLOAD=1``; otherwise the error says where to put the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


def models_dir() -> Path:
    return Path(os.environ.get("PDFNET_MODELS_DIR", Path.home() / ".cache" / "pdfnet" / "models"))


def download_allowed(download: bool | None) -> bool:
    if download is not None:
        return download
    return os.environ.get("PDFNET_DOWNLOAD", "").strip().lower() in ("1", "true", "yes", "on")


def default_model_path(kind: str, folder: Path | None = None, download: bool | None = None) -> Path:
    """The default file of family ``kind`` in ``folder`` (default: models_dir()/<folder key>), fetched if allowed."""
    from .download import ensure_model_file
    from .registry import family

    spec = family(kind)
    if spec.default_file is None:
        raise ValueError(f"{spec.label} has no default model file; name one")
    target = folder if folder is not None else models_dir() / spec.folder_key
    return ensure_model_file(spec.default_file, target, allow_download=download_allowed(download))


def default_model(kind: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  download: bool | None = None) -> nn.Module:
    """The default model of family ``kind`` ("pdfnet" or "depth_anything"), shared through the model cache."""
    from .cache import default_cache
    from .registry import family

    spec = family(kind)
    path = default_model_path(kind, download=download)
    return default_cache().get_or_load(path, dtype, device, lambda: spec.load(path, device=device, dtype=dtype),
                                       tag=kind)
