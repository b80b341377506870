"""pdfnet_core: PDFNet dichotomous image segmentation, depth priors, refinement and compositing.

Importable without ComfyUI.  Public entry points are resolved lazily so that ``import pdfnet_core``
stays cheap (the CLI and ComfyUI import only what they use).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_pdfnet": "pdfnet_core.pdfnet_loader",
    "PDFNet": "pdfnet_core.models.pdfnet",
    "PDFNetConfig": "pdfnet_core.models.pdfnet",
    "segment": "pdfnet_core.pipeline",
    "SegmentOptions": "pdfnet_core.pipeline",
    "CheckpointError": "pdfnet_core.weights",
    "read_state_dict": "pdfnet_core.weights",
    "save_safetensors": "pdfnet_core.weights",
    "load_depth_anything": "pdfnet_core.depth_anything_loader",
    "estimate_depth": "pdfnet_core.depth",
    "depth_prior": "pdfnet_core.depth",
    "load_birefnet": "pdfnet_core.birefnet_loader",
    "BiRefNet": "pdfnet_core.models.birefnet",
    "load_segrefiner": "pdfnet_core.segrefiner_loader",
    "refine_with_segrefiner": "pdfnet_core.segrefiner",
    "refine_mask": "pdfnet_core.refine",
    "RefineConfig": "pdfnet_core.refine",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pdfnet_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
