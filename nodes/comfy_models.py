"""The bridge from pdfnet_core's model cache to ComfyUI's folders, devices and memory manager.

* Folders: ``pdfnet``, ``depthanything``, ``birefnet`` and ``segrefiner`` are registered with
  ``folder_paths`` by appending, so paths from extra_model_paths.yaml (read before custom nodes)
  keep their place; only weight files are listed.  A download goes to the first registered folder.
* Residency: every model that enters pdfnet_core's process-wide cache is wrapped in ComfyUI's
  model patcher and made resident with ``load_models_gpu`` before each use, so ComfyUI's memory
  manager can offload it under pressure like any of its own models.
* Devices and dtypes come from ``comfy.model_management`` at call time (never at import).
* Progress goes to ``comfy.utils.ProgressBar``, whose hook raises when the user cancels.

ComfyUI modules are imported inside functions: this module is imported by the CI tests, where
ComfyUI is absent (they put stand-ins into ``sys.modules``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from pdfnet_core.cache import CacheKey, default_cache

from .adapters import NodeInputError, WEIGHT_SUFFIXES, missing_model_message, model_choices, model_name_problem

log = logging.getLogger("pdfnet_core")


# --------------------------------------------------------------------------------------------
# what each loader loads


def _load_pdfnet(path: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from pdfnet_core.pdfnet_loader import load_pdfnet

    return load_pdfnet(path, device=device, dtype=dtype)


def _load_depth_anything(path: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from pdfnet_core.depth_anything_loader import load_depth_anything

    return load_depth_anything(path, variant=None, device=device, dtype=dtype)


def _load_birefnet(path: str, device: torch.device, dtype: torch.dtype, patch_order: str | None = None) -> torch.nn.Module:
    from pdfnet_core.birefnet_loader import load_birefnet

    return load_birefnet(path, patch_order=patch_order, device=device, dtype=dtype)


def _load_segrefiner(path: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from pdfnet_core.segrefiner_loader import load_segrefiner

    return load_segrefiner(path, device=device, dtype=dtype)


def _describe_depth(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return f"Depth-Anything-V2 {getattr(config, 'variant', '?')}"


def _describe_birefnet(model: torch.nn.Module) -> str:
    return f"BiRefNet {getattr(model.config, 'name', '?')} ({model.patch_order} patch order)"


def _describe_segrefiner(model: torch.nn.Module) -> str:
    return f"SegRefiner (UNet width {model.config.model_channels})"


@dataclass(frozen=True)
class Arch:
    folder_key: str                                   # folder_paths key (and registry folder_key)
    label: str                                        # for messages and the log
    # (path, device, dtype, **options) -> model; options are a loader's arch-specific widgets
    # (BiRefNet's patch_order) and are part of the cache key.
    load: Callable[..., torch.nn.Module]
    # dtypes that 'auto' may pick where ComfyUI says the device runs them well; fp16 is left out:
    # Depth-Anything overflows in it on some images, and neither model was checked in it.
    auto_dtypes: tuple[torch.dtype, ...] = (torch.bfloat16,)
    describe: Callable[[torch.nn.Module], str] | None = None


ARCHS: dict[str, Arch] = {
    "pdfnet": Arch("pdfnet", "PDFNet", _load_pdfnet),
    "depth_anything": Arch("depthanything", "Depth-Anything-V2", _load_depth_anything, describe=_describe_depth),
    "birefnet": Arch("birefnet", "BiRefNet", _load_birefnet, describe=_describe_birefnet),
    # auto = fp32: the sampler thresholds the UNet's confidences (0.5 / fine_prob_thr) and parity
    # with the official run was only checked in fp32; lower precision is the user's explicit choice.
    "segrefiner": Arch("segrefiner", "SegRefiner", _load_segrefiner, auto_dtypes=(), describe=_describe_segrefiner),
}

DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")


# --------------------------------------------------------------------------------------------
# folders


def register_model_folders() -> None:
    """Register ``<models>/<folder_key>`` of every arch after any configured paths."""
    import folder_paths

    for arch in ARCHS.values():
        key = arch.folder_key
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


def list_models(folder_key: str) -> list[str]:
    """Weight files in the folder, then the registry's files that could be downloaded into it."""
    import folder_paths

    try:
        present = folder_paths.get_filename_list(folder_key)
    except KeyError:   # not registered (should not happen once the extension loaded)
        present = []
    return model_choices(present, folder_key)


def check_model_choice(arch_name: str, name: Any, download: Any = False) -> bool | str:
    """``validate_inputs`` for a loader: True, or a message that names the folder to use."""
    if name is None:   # the widget was turned into a linked input: nothing to check before running
        return True
    import folder_paths

    folder_key = ARCHS[arch_name].folder_key
    problem = model_name_problem(name)
    if problem:
        return f"model_name {name!r} {problem}; choose a file inside the '{folder_key}' models folder"
    if folder_paths.get_full_path(folder_key, name) is not None:
        return True
    message = missing_model_message(folder_key, name, model_folders(folder_key), bool(download))
    return message or True


def file_fingerprint(arch_name: str, name: Any) -> Any:
    """``fingerprint_inputs`` for a loader: the file's identity, so a file replaced on disk under
    the same name makes ComfyUI run the loader again (and the cache, keyed by it, reload)."""
    import folder_paths

    if not isinstance(name, str) or model_name_problem(name):
        return name
    path = folder_paths.get_full_path(ARCHS[arch_name].folder_key, name)
    if path is None:
        return ("missing", name)
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def model_path(arch_name: str, name: str, download: bool) -> str:
    """The file for ``name`` in the arch's folders, downloading a known file first if allowed."""
    import folder_paths

    from pdfnet_core.download import ensure_model_file
    from pdfnet_core.registry import lookup

    folder_key = ARCHS[arch_name].folder_key
    problem = model_name_problem(name)
    if problem:
        raise NodeInputError(f"model_name {name!r} {problem}; choose a file inside the '{folder_key}' models folder")
    found = folder_paths.get_full_path(folder_key, name)
    if found is not None:
        return found
    folders = model_folders(folder_key)
    entry = lookup(os.path.basename(name))
    if not download or entry is None or entry.folder_key != folder_key or not entry.on_hub or not folders:
        raise NodeInputError(missing_model_message(folder_key, name, folders, False))
    # ensure_model_file is atomic and verified; its errors already name the URL and the folder.
    return os.fspath(ensure_model_file(entry, folders[0], allow_download=True))


# --------------------------------------------------------------------------------------------
# devices and dtypes


def load_device() -> torch.device:
    import comfy.model_management as mm

    return mm.get_torch_device()


def offload_device() -> torch.device:
    import comfy.model_management as mm

    return mm.unet_offload_device()


def resolve_dtype(choice: str, arch_name: str, device: torch.device) -> torch.dtype:
    """The dtype for a loader's choice; 'auto' takes bf16 only where ComfyUI says it runs well."""
    import comfy.model_management as mm

    from pdfnet_core.weights import DTYPES

    if choice != "auto":
        if choice not in DTYPES:
            raise NodeInputError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {choice!r}")
        return DTYPES[choice]
    for dtype in ARCHS[arch_name].auto_dtypes:
        if dtype == torch.bfloat16 and mm.should_use_bf16(device, prioritize_performance=True):
            return dtype
        if dtype == torch.float16 and mm.should_use_fp16(device, prioritize_performance=True):
            return dtype
    return torch.float32


def load_model(arch_name: str, name: str, dtype_choice: str = "auto", download: bool = False,
               **options: Any) -> torch.nn.Module:
    """The cached model for this file/dtype/device(/options), read from disk only if the cache has none.

    It is built on ComfyUI's offload device; the residency hook moves it to the load device when
    a node runs it.  Two loader nodes naming the same file (and options) share one model.
    """
    arch = ARCHS[arch_name]
    path = model_path(arch_name, name, download)
    device, parked = load_device(), offload_device()
    dtype = resolve_dtype(dtype_choice, arch_name, device)

    def build() -> torch.nn.Module:
        try:
            model = arch.load(path, parked, dtype, **options)
        except (ValueError, OSError) as exc:   # CheckpointError is a ValueError
            raise NodeInputError(f"model_name {name!r} ({path}) cannot be used as a {arch.label} model: {exc}") from exc
        what = arch.describe(model) if arch.describe else arch.label
        # Logged once per model: the loader runs only on a cache miss.
        log.info("PDFNet pack: %s from %s runs on %s in %s (parked on %s when ComfyUI offloads it)",
                 what, os.path.basename(path), device, str(dtype).removeprefix("torch."), parked)
        return model

    tag = ";".join([arch_name, *(f"{k}={v}" for k, v in sorted(options.items()))])
    return default_cache().get_or_load(path, dtype, device, build, tag=tag)


# --------------------------------------------------------------------------------------------
# residency: pdfnet_core's cache inside ComfyUI's memory manager


class ComfyResidency:
    """pdfnet_core ResidencyHook that hands each cached model to ComfyUI's model management."""

    def wrap(self, model: torch.nn.Module, key: CacheKey) -> Any:
        import comfy.model_management as mm
        import comfy.model_patcher as mp

        # CoreModelPatcher is ComfyUI's current patcher (dynamic VRAM where available); the plain
        # ModelPatcher where it is not.  Looked up now: main.py may swap it at start-up.
        patcher = getattr(mp, "CoreModelPatcher", mp.ModelPatcher)
        return patcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())

    def ensure_resident(self, handle: Any, memory_required: int) -> None:
        import comfy.model_management as mm

        # Plain torch modules cannot run partially loaded (no comfy.ops casting), hence full loads.
        mm.load_models_gpu([handle], memory_required=memory_required, force_full_load=True)

    def release(self, handle: Any) -> None:
        # Evicted from the cache: give the device memory back now, not at ComfyUI's next sweep.
        handle.detach()


def install_residency_hook() -> None:
    default_cache().set_residency_hook(ComfyResidency())


# --------------------------------------------------------------------------------------------
# the runtime the node loops use


class ComfyProgress:
    """One ComfyUI progress bar per node run; every step also honours a cancel request."""

    def __init__(self, total: int) -> None:
        import comfy.utils

        self._bar = comfy.utils.ProgressBar(max(1, total))
        self._done = 0

    def step(self, count: int = 1) -> None:
        import comfy.model_management as mm

        self._done += count
        self._bar.update_absolute(self._done)
        # The bar's hook throttles its updates (and the interruption check inside it): check here too.
        mm.throw_exception_if_processing_interrupted()


class ComfyRuntime:
    def resident(self, model: torch.nn.Module, memory_required: int) -> None:
        import comfy.model_management as mm

        mm.throw_exception_if_processing_interrupted()
        default_cache().ensure_resident(model, memory_required)

    def progress(self, total: int) -> ComfyProgress:
        return ComfyProgress(total)


RUNTIME = ComfyRuntime()


def compute_device() -> torch.device:
    """Where the torch-only steps (refinement, foreground estimation) run."""
    return load_device()


def to_output(tensor: torch.Tensor) -> torch.Tensor:
    """A node output on ComfyUI's intermediate device and dtype."""
    import comfy.model_management as mm

    return tensor.to(device=mm.intermediate_device(), dtype=mm.intermediate_dtype())
