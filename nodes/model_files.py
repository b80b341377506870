"""Model files for the loader nodes: the names a loader lists and accepts, its messages, and loading.

Everything a loader knows about a family comes from the family's spec (folder key, known files,
loader options, auto dtypes).  ComfyUI modules are imported inside functions, so the CI tests run
this against stand-ins for ``folder_paths`` and ``comfy.*``.
"""
from __future__ import annotations

import os
from typing import Any, Sequence


from pdfnet_core import (WEIGHT_SUFFIXES, InputError, LoadedModel, ensure_model_file, family, hf_url, known_files,
                         load_cached, lookup, model_name_problem)

from . import host


def is_weight_file(name: str) -> bool:
    return name.lower().endswith(WEIGHT_SUFFIXES)


def name_problem(name: Any) -> str | None:
    """Why a loader's ``model_name`` cannot be a file inside its folders (sub-folders allowed), or None."""
    return model_name_problem(name, subfolders=True)


def model_choices(present: Sequence[str], folder_key: str) -> list[str]:
    """The loader's list: weight files found in the folder, then known files not yet there.

    Known files that are absent stay in the list so a workflow that names one still loads; the
    loader says where to get it, or downloads it when its download toggle is on.  Hidden files and
    folders (a download's staging folder, editor backups) are never listed.
    """
    found = sorted({p for p in present if is_weight_file(p) and not _hidden(p)}, key=str.lower)
    have = {os.path.basename(p) for p in found}
    return found + [e.filename for e in known_files(folder_key) if e.filename not in have]


def list_models(folder_key: str) -> list[str]:
    """Weight files in the folder, then the registry's files that could be downloaded into it."""
    return model_choices(host.folder_files(folder_key), folder_key)


def _hidden(name: str) -> bool:
    return any(part.startswith(".") for part in name.replace("\\", "/").split("/"))


def missing_model_message(folder_key: str, name: str, folders: Sequence[str], download: bool) -> str:
    """What to do about a chosen file that is in none of the folders ("" when the loader will fetch it)."""
    where = ", ".join(folders) if folders else f"models/{folder_key}"
    first = folders[0] if folders else f"models/{folder_key}"
    entry = lookup(os.path.basename(name))
    if entry is None or entry.folder_key != folder_key:
        return (f"model_name {name!r} is not in the '{folder_key}' models folder ({where}); place the file "
                f"in {first}, or choose another file")
    if not entry.on_hub:
        # Published outside the hub (SegRefiner: Google Drive only): the download toggle cannot help,
        # so the message must not suggest it.
        return (f"model_name {name!r} is not in the '{folder_key}' models folder ({where}): it cannot be "
                f"downloaded automatically; download it by hand from {entry.manual_url} and place it in {first} "
                f"(keep the name {entry.filename})")
    if download:
        return ""
    return (f"model_name {name!r} is not in the '{folder_key}' models folder ({where}): turn on 'download' "
            f"to fetch it from {hf_url(entry)}, or download it by hand and place it in {first}")


def _unsafe(name: str, folder_key: str, problem: str) -> str:
    return f"model_name {name!r} {problem}; choose a file inside the '{folder_key}' models folder"


def check_model_choice(family_name: str, name: Any, download: Any = False) -> bool | str:
    """``validate_inputs`` for a loader: True, or a message that names the folder to use."""
    if name is None:   # the widget was turned into a linked input: nothing to check before running
        return True
    folder_key = family(family_name).folder_key
    problem = name_problem(name)
    if problem:
        return _unsafe(name, folder_key, problem)
    if host.find_model(folder_key, name) is not None:
        return True
    return missing_model_message(folder_key, name, host.model_folders(folder_key), bool(download)) or True


def file_fingerprint(family_name: str, name: Any) -> Any:
    """``fingerprint_inputs`` for a loader: the file's identity, so a file replaced on disk under
    the same name makes ComfyUI run the loader again (and the cache, keyed by it, reload)."""
    if not isinstance(name, str) or name_problem(name):
        return name
    path = host.find_model(family(family_name).folder_key, name)
    if path is None:
        return ("missing", name)
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def model_path(family_name: str, name: str, download: bool) -> str:
    """The file for ``name`` in the family's folders, downloading a known file first if allowed."""
    folder_key = family(family_name).folder_key
    problem = name_problem(name)
    if problem:
        raise InputError(_unsafe(name, folder_key, problem))
    found = host.find_model(folder_key, name)
    if found is not None:
        return found
    folders = host.model_folders(folder_key)
    entry = lookup(os.path.basename(name))
    if not download or entry is None or entry.folder_key != folder_key or not entry.on_hub or not folders:
        raise InputError(missing_model_message(folder_key, name, folders, False))
    # ensure_model_file is atomic and verified; its errors already name the URL and the folder.
    return os.fspath(ensure_model_file(entry, folders[0], allow_download=True))


def load_model(family_name: str, name: str, dtype_choice: str = "auto", download: bool = False,
               **choices: str) -> LoadedModel:
    """The cached model for this file/dtype/device(/loader options), read from disk only on a cache miss.

    It is built on ComfyUI's offload device; ``host.ComfyRuntime.resident`` moves it to the load
    device when a node runs it.  Two loader nodes naming the same file (and options) share one
    model, as does any other path of the process that loads it (``pdfnet_core.load_cached``).
    ``choices`` are the family's loader options as the widgets give them (e.g. patch_order="auto").
    """
    spec = family(family_name)
    try:
        for option, choice in choices.items():
            spec.option(option).value(choice, os.path.basename(name))   # a bad widget value, before any file work
    except (KeyError, ValueError) as exc:
        raise InputError(str(exc).strip("'\"")) from exc
    path = model_path(family_name, name, download)
    device = host.load_device()
    dtype = host.resolve_dtype(dtype_choice, spec.auto_dtypes, device)
    try:
        return load_cached(spec, path, device=device, dtype=dtype, park=host.offload_device(), **choices)
    except (ValueError, OSError) as exc:   # CheckpointError is a ValueError
        where = "" if path in str(exc) else f" ({path})"   # checkpoint errors name the file already
        raise InputError(f"model_name {name!r}{where} cannot be used as a {spec.label} model: {exc}") from exc
