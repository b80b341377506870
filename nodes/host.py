"""The bridge from pdfnet_core's model cache to ComfyUI's folders, devices and memory manager.

* Folders: ``pdfnet``, ``depthanything``, ``birefnet`` and ``segrefiner`` are registered with
  ``folder_paths`` by appending, so paths from extra_model_paths.yaml (read before custom nodes)
  keep their place; only weight files are listed.  A download goes to the first registered folder.
* Residency: every model that enters pdfnet_core's process-wide cache is wrapped in ComfyUI's
  model patcher (the cache's residency hook), and ``resident`` hands that patcher to
  ``load_models_gpu`` before each batch, so ComfyUI's memory manager can offload it under pressure
  like any of its own models.
* Devices and dtypes come from ``comfy.model_management`` at call time (never at import).
* Progress goes to ``comfy.utils.ProgressBar``, whose hook raises when the user cancels.

ComfyUI modules are imported inside functions: this module is imported by the CI tests, where
ComfyUI is absent (they put stand-ins into ``sys.modules``).
"""
from __future__ import annotations

import os
from typing import Any

import torch

from pdfnet_core import (DTYPE_CHOICES, DTYPES, FAMILIES, WEIGHT_SUFFIXES, CacheKey, InputError, auto_dtype,
                         default_cache)


# --------------------------------------------------------------------------------------------
# folders


def register_model_folders() -> None:
    """Register ``<models>/<folder_key>`` of every family after any configured paths."""
    import folder_paths

    for spec in FAMILIES.values():
        key = spec.folder_key
        default = os.path.join(folder_paths.models_dir, key)
        known = folder_paths.folder_names_and_paths.get(key)
        if known is None or default not in known[0]:
            folder_paths.add_model_folder_path(key, default)   # appends: yaml paths stay first
        paths, extensions = folder_paths.folder_names_and_paths[key]
        if not isinstance(extensions, set):   # defensive: older folder_paths kept lists
            folder_paths.folder_names_and_paths[key] = (paths, set(extensions))
            extensions = folder_paths.folder_names_and_paths[key][1]
        # An empty set would list every file; add ours to whatever the yaml or another pack set.
        extensions.update(WEIGHT_SUFFIXES)


def model_folders(folder_key: str) -> list[str]:
    import folder_paths

    try:
        return folder_paths.get_folder_paths(folder_key)
    except KeyError:
        return []


def folder_files(folder_key: str) -> list[str]:
    """The files ComfyUI lists in the folder (weight suffixes only; names relative to their folder)."""
    import folder_paths

    try:
        return folder_paths.get_filename_list(folder_key)
    except KeyError:   # not registered (should not happen once the extension loaded)
        return []


def find_model(folder_key: str, name: str) -> str | None:
    """The full path of ``name`` in the folder's configured paths, or None."""
    import folder_paths

    return folder_paths.get_full_path(folder_key, name)


# --------------------------------------------------------------------------------------------
# devices and dtypes


def load_device() -> torch.device:
    import comfy.model_management as mm

    return mm.get_torch_device()


def offload_device() -> torch.device:
    import comfy.model_management as mm

    return mm.unet_offload_device()


def resolve_dtype(choice: str, auto_dtypes: tuple[torch.dtype, ...], device: torch.device) -> torch.dtype:
    """The dtype for a loader's choice; 'auto' takes the first of the family's ``auto_dtypes`` that
    the device runs well, else fp32.

    On a CPU that is pdfnet_core's judgement (native bf16 kernels): ComfyUI's never picks a half type
    there, because it judges its own diffusion models.  Elsewhere ComfyUI's (it knows the GPU and the
    user's precision flags).  ``--force-fp32`` is respected everywhere.
    """
    import comfy.model_management as mm

    if choice != "auto":
        if choice not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {choice!r}")
        return DTYPES[choice]
    if getattr(mm, "FORCE_FP32", False):
        return torch.float32
    if device.type == "cpu":
        return auto_dtype(auto_dtypes, device)
    for dtype in auto_dtypes:
        if dtype == torch.bfloat16 and mm.should_use_bf16(device, prioritize_performance=True):
            return dtype
        if dtype == torch.float16 and mm.should_use_fp16(device, prioritize_performance=True):
            return dtype
    return torch.float32


# --------------------------------------------------------------------------------------------
# residency: pdfnet_core's cache inside ComfyUI's memory manager


class ComfyResidency:
    """pdfnet_core ResidencyHook: each cached model gets a ComfyUI model patcher for its lifetime."""

    def wrap(self, model: torch.nn.Module, key: CacheKey) -> Any:
        import comfy.model_management as mm
        import comfy.model_patcher as mp

        # CoreModelPatcher is ComfyUI's current patcher (dynamic VRAM where available); the plain
        # ModelPatcher where it is not.  Looked up now: main.py may swap it at start-up.
        patcher = getattr(mp, "CoreModelPatcher", mp.ModelPatcher)
        return patcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())

    def release(self, handle: Any) -> None:
        # Evicted from the cache: give the device memory back now, not at ComfyUI's next sweep.
        handle.detach()


def install_residency_hook() -> None:
    default_cache().set_residency_hook(ComfyResidency())


# --------------------------------------------------------------------------------------------
# the runtime the node loops use


class ComfyProgress:
    """A node run's ComfyUI progress bar as pdfnet_core's ``progress(done, total)``; every call also
    honours a cancel request."""

    def __init__(self, total: int) -> None:
        import comfy.utils

        self._bar = comfy.utils.ProgressBar(max(1, total))

    def __call__(self, done: int, total: int) -> None:
        import comfy.model_management as mm

        self._bar.update_absolute(done, max(1, total))
        # The bar's hook throttles its updates (and the interruption check inside it): check here too.
        mm.throw_exception_if_processing_interrupted()


class ComfyRuntime:
    def resident(self, model: torch.nn.Module, memory_required: int) -> None:
        """Before each batch: ComfyUI loads the model's patcher onto its device with room for the activations."""
        import comfy.model_management as mm

        mm.throw_exception_if_processing_interrupted()
        # Plain torch modules cannot run partially loaded (no comfy.ops casting), hence full loads.
        mm.load_models_gpu([default_cache().handle_for(model)], memory_required=memory_required, force_full_load=True)

    def progress(self, total: int) -> ComfyProgress:
        return ComfyProgress(total)


RUNTIME = ComfyRuntime()


def to_output(tensor: torch.Tensor) -> torch.Tensor:
    """A node output on ComfyUI's intermediate device and dtype."""
    import comfy.model_management as mm

    return tensor.to(device=mm.intermediate_device(), dtype=mm.intermediate_dtype())
