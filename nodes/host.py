"""The bridge from pdfnet_core's model cache to ComfyUI's folders, devices and memory manager.

* Folders: ``pdfnet``, ``depthanything``, ``birefnet`` and ``segrefiner`` are registered with
  ``folder_paths`` by appending, so paths from extra_model_paths.yaml (read before custom nodes)
  keep their place; only weight files are listed.  A download goes to the first registered folder.
* Residency: every model that enters pdfnet_core's process-wide cache is wrapped in ComfyUI's
  model patcher (the cache's residency hook), so ComfyUI's memory manager can offload it under
  pressure like any of its own models.  A node execution makes its models resident with one
  ``load_models_gpu`` call (``ComfyRuntime``, one per execution) and before each later batch only
  checks that ComfyUI still holds them.
* Devices and dtypes come from ``comfy.model_management`` at call time (never at import).
* Progress goes to ``comfy.utils.ProgressBar``, whose hook raises when the user cancels.

ComfyUI modules are imported inside functions: this module is imported by the CI tests, where
ComfyUI is absent (they put stand-ins into ``sys.modules``).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

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
    """pdfnet_core ResidencyHook: each cached model gets a ComfyUI model patcher for its lifetime.

    The patcher is ComfyUI's ``CoreModelPatcher`` unless that is the dynamic-VRAM patcher, and then
    the plain ``ModelPatcher``.  ComfyUI 0.33's ``ModelPatcherDynamic`` (what main.py makes
    CoreModelPatcher where comfy-aimdo works, i.e. on NVIDIA) stages weights on demand only for
    modules built from ``comfy.ops`` (``comfy_cast_weights``); every parameter of a plain
    ``nn.Module`` it copies to the GPU in ``load``, which starts by restoring the backups (the
    offload-device weights), and its ``partially_load`` calls ``load`` on every ``load_models_gpu``:
    the whole model was uploaded again before each batch.  The plain ModelPatcher loads a model fully
    (``force_full_load``) once and returns at once while it stays loaded.  (Where CoreModelPatcher
    is not dynamic it is the plain ModelPatcher itself; on a CPU load device ModelPatcherDynamic
    hands out a plain ModelPatcher as well.)
    """

    def wrap(self, model: torch.nn.Module, key: CacheKey) -> Any:
        import comfy.model_management as mm
        import comfy.model_patcher as mp

        return patcher_class(mp)(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())

    def release(self, handle: Any) -> None:
        # Evicted from the cache: give the device memory back now, not at ComfyUI's next sweep.
        handle.detach()


def patcher_class(mp: Any) -> type:
    """ComfyUI's CoreModelPatcher unless it is the dynamic-VRAM one (see ComfyResidency); looked up
    at call time: main.py may swap it at start-up."""
    core = getattr(mp, "CoreModelPatcher", mp.ModelPatcher)
    dynamic = getattr(mp, "ModelPatcherDynamic", None)
    if dynamic is not None and isinstance(core, type) and issubclass(core, dynamic):
        return mp.ModelPatcher
    return core


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
    """One node execution's link to ComfyUI's memory manager and progress bar: make one per execution.

    Residency: ``will_run`` names the models the execution will run and the activation memory its
    largest batch needs; the first ``resident`` makes ONE ``load_models_gpu`` call with all of them
    (in one call they cannot push each other out: ComfyUI's ``free_memory`` there spares the models
    being loaded).  Before each later batch ``resident`` only checks that ComfyUI still holds the
    model as that call left it (listed in ``current_loaded_models``, same loaded size, same device);
    it calls ``load_models_gpu`` again only if ComfyUI offloaded it meanwhile (wholly or partly), the
    pack's cache replaced its patcher, or a batch asks for more memory than was reserved.

    Memory: ``activation_budget`` is the free memory on the load device once the models are there
    (None on a CPU, where batches stay at 1); ``free_cached_memory`` gives the allocator's cached
    blocks back after an out-of-memory error.
    """

    def __init__(self) -> None:
        self._models: list[torch.nn.Module] = []     # what this execution runs, for its one residency call
        self._memory = 0                               # the activation memory that call reserved
        # id(model) -> (model, patcher, loaded size, device) as the last load_models_gpu call left them
        self._state: dict[int, tuple[torch.nn.Module, Any, Any, Any]] = {}

    def will_run(self, models: Sequence[torch.nn.Module], memory_required: int) -> None:
        """The models of this execution and the activation memory its largest batch needs (loads nothing)."""
        for model in models:
            self._add(model)
        self._memory = max(self._memory, int(memory_required))

    def resident(self, model: torch.nn.Module, memory_required: int) -> None:
        """Before each batch: the model on its load device with room for ``memory_required`` bytes of
        activations; one ``load_models_gpu`` call per execution unless ComfyUI offloaded it meanwhile."""
        import comfy.model_management as mm

        mm.throw_exception_if_processing_interrupted()
        handle = default_cache().handle_for(model)   # also marks it recently used in the pack's cache
        if self._state and memory_required <= self._memory and self._still_loaded(mm, model, handle):
            return
        self._add(model)
        self._memory = max(self._memory, int(memory_required))
        handles = [handle if m is model else default_cache().handle_for(m) for m in self._models]
        # Plain torch modules cannot run partially loaded (no comfy.ops casting), hence full loads.
        mm.load_models_gpu(handles, memory_required=self._memory, force_full_load=True)
        self._state = {id(m): (m, h, h.loaded_size(), h.current_loaded_device()) for m, h in zip(self._models, handles)}

    def activation_budget(self, models: Sequence[torch.nn.Module]) -> tuple[torch.device, int] | None:
        """(load device, bytes free there for activations once ``models`` are loaded), or None on a CPU.

        ComfyUI's free memory on the device, less what of each model is not there yet and ComfyUI's
        reserve.  Memory held by other models is not counted: a larger batch is not worth evicting
        them (ComfyUI's load would, to honour the memory asked for).
        """
        import comfy.model_management as mm

        device = mm.get_torch_device()
        if mm.is_device_cpu(device):
            return None
        free = mm.get_free_memory(device) - mm.extra_reserved_memory()
        seen: set[int] = set()
        for model in models:
            if id(model) in seen:
                continue
            seen.add(id(model))
            handle = default_cache().handle_for(model)
            there = handle.loaded_size() if handle.current_loaded_device() == device else 0
            free -= max(0, handle.model_size() - there)
        return device, max(0, int(free))

    def free_cached_memory(self) -> None:
        """After an out-of-memory error: the allocator's cached blocks back to the device."""
        import comfy.model_management as mm

        mm.soft_empty_cache()

    def progress(self, total: int) -> ComfyProgress:
        return ComfyProgress(total)

    def _add(self, model: torch.nn.Module) -> None:
        if not any(m is model for m in self._models):
            self._models.append(model)

    def _still_loaded(self, mm: Any, model: torch.nn.Module, handle: Any) -> bool:
        state = self._state.get(id(model))
        if state is None or state[0] is not model or state[1] is not handle:
            return False
        if not any(loaded.model is handle for loaded in mm.current_loaded_models):
            return False   # unloaded by ComfyUI (free_memory, unload_all_models)
        # partially unloaded, or detached (the pack's cache evicted it) while still listed
        return (handle.loaded_size(), handle.current_loaded_device()) == state[2:]


# For nodes that run no model (refinement, foreground colours): their progress bars.  A node that
# runs a model makes its own ComfyRuntime per execution (its residency state is per execution).
RUNTIME = ComfyRuntime()


def to_output(tensor: torch.Tensor) -> torch.Tensor:
    """A node output on ComfyUI's intermediate device and dtype."""
    import comfy.model_management as mm

    return tensor.to(device=mm.intermediate_device(), dtype=mm.intermediate_dtype())
