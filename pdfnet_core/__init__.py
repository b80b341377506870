"""pdfnet_core: PDFNet dichotomous image segmentation, depth priors, refinement and compositing.

Importable without ComfyUI.  The names below are the public API (what users and the pack's own
ComfyUI node layer import); they are resolved lazily so that ``import pdfnet_core`` stays cheap
(the CLI and ComfyUI import only what they use).  docs/ARCHITECTURE.md maps the modules.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute in it)
_EXPORTS: dict[str, tuple[str, str]] = {}


def _export(module: str, *names: str, **renamed: str) -> None:
    for name in names:
        _EXPORTS[name] = (module, name)
    for public, attr in renamed.items():
        _EXPORTS[public] = (module, attr)


# models and loading
_export("pdfnet_core.models.pdfnet", "load_pdfnet", "PDFNet", "PDFNetConfig")
_export("pdfnet_core.models.depth_anything", "load_depth_anything")
_export("pdfnet_core.models.birefnet", "load_birefnet", "BiRefNet")
_export("pdfnet_core.models.segrefiner", "load_segrefiner", "refine_with_segrefiner")
_export("pdfnet_core.models.segrefiner.refiner", SEGREFINER_MODES="MODES")
_export("pdfnet_core.precision", "auto_dtype", "bf16_supported", "resolve_device", "DTYPES", "DTYPE_CHOICES",
        "as_dtype")
_export("pdfnet_core.weights", "CheckpointError", "read_state_dict", "save_safetensors", "WEIGHT_SUFFIXES")
# families, known files, downloads, the model cache
_export("pdfnet_core.specs", "FamilySpec", "LoadedModel", "ModelEntry", "Progress", "BeforeRun", "hf_url")
_export("pdfnet_core.families", "FAMILIES", "family", "family_of", "as_loaded", "known_files", "lookup")
_export("pdfnet_core.fingerprints", "identify")
_export("pdfnet_core.download", "ensure_model_file", "model_name_problem", "ModelDownloadError")
_export("pdfnet_core.cache", "default_cache", "CacheKey")
_export("pdfnet_core.loading", "load_cached")
_export("pdfnet_core.defaults", "default_model", "default_model_path", "models_dir")
# running models
_export("pdfnet_core.pipeline", "segment", "segmenter")
_export("pdfnet_core.segment_options", "SegmentOptions", "RESIZE_MODES", "AUTO_SIZE")
_export("pdfnet_core.depth", "estimate_depth", "depth_prior", "normalize_depth")
_export("pdfnet_core.memory", "fitting_batch", "free_bytes")
# tensor operations
_export("pdfnet_core.ops.checks", "InputError", "InputTypeError", "check_image", "check_mask", "check_same_size",
        "batch_pair")
_export("pdfnet_core.ops.refine", "refine_mask", "RefineConfig", "temporal_smooth", "GUIDES", "TEMPORAL_METHODS")
_export("pdfnet_core.ops.refine", "keep_largest_component", "keep_central_component", "KEEP_COMPONENT")
_export("pdfnet_core.ops.foreground", "estimate_foreground", "FOREGROUND_METHODS")
_export("pdfnet_core.ops.matting", "matte", "matting_steps", "MattingConfig", "MATTING_FOREGROUND", "EDGE_SHIFT_MAX",
        "ALPHA_SOURCES")
_export("pdfnet_core.ops.trimap", "TrimapConfig", "make_trimap")
_export("pdfnet_core.ops.despill", "DespillConfig", "DESPILL_CHOICES", "despill")
_export("pdfnet_core.ops.composite", "composite_over_color", "composite_over_image", "premultiply", "to_rgba",
        "FIT_MODES")

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'pdfnet_core' has no attribute {name!r}")
    module, attr = target
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
