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

from .download import ensure_model_file
from .families import family
from .loading import load_cached
from .precision import default_dtype_name, dtype_for, resolve_device
from .specs import LoadedModel


def models_dir() -> Path:
    return Path(os.environ.get("PDFNET_MODELS_DIR", Path.home() / ".cache" / "pdfnet" / "models"))


def download_allowed(download: bool | None) -> bool:
    if download is not None:
        return download
    return os.environ.get("PDFNET_DOWNLOAD", "").strip().lower() in ("1", "true", "yes", "on")


def family_folder(kind: str, root: Path | None = None) -> Path:
    """Where family ``kind``'s files live: ``root`` (default ``models_dir()``) / its folder key."""
    return (models_dir() if root is None else Path(root)) / family(kind).folder_key


def default_model_path(kind: str, folder: Path | None = None, download: bool | None = None) -> Path:
    """The default file of family ``kind`` in ``folder`` (default: models_dir()/<folder key>), fetched if allowed."""
    spec = family(kind)
    if spec.default_file is None:
        raise ValueError(f"{spec.label} has no default model file; name one")
    target = folder if folder is not None else family_folder(kind)
    return ensure_model_file(spec.default_file, target, allow_download=download_allowed(download))


def model_file(kind: str, weights: Path | None = None, root: Path | None = None, download: bool | None = None) -> Path:
    """``weights`` if given (it must exist), else the family's default file under ``root`` (a models folder)."""
    if weights is not None:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights file not found: {weights}")
        return Path(weights)
    return default_model_path(kind, None if root is None else family_folder(kind, root), download)


def default_model(kind: str, device: str | torch.device = "auto", dtype: torch.dtype | str | None = None,
                  download: bool | None = None) -> LoadedModel:
    """The default model of family ``kind`` ("pdfnet" or "depth_anything"), shared through the model cache.

    ``device`` "auto" resolves to CUDA, else MPS, else the CPU; ``dtype`` None is the device's default
    (``precision.default_dtype_name``: auto, i.e. bf16 from Ampere on, on CUDA; fp32 elsewhere).
    """
    where = resolve_device(device)
    spec = family(kind)
    precision = dtype_for(default_dtype_name(where), spec.auto_dtypes, where) if dtype is None else dtype
    return load_cached(spec, default_model_path(kind, download=download), device=where, dtype=precision)
