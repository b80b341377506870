"""Model files for the loader nodes: the names a loader lists and accepts, its messages, and loading.

Everything a loader knows about a family comes from the family's spec (folder key, known files,
loader options, auto dtypes).  ComfyUI modules are imported inside functions, so the CI tests run
this against stand-ins for ``folder_paths`` and ``comfy.*``.
"""
from __future__ import annotations

import os
from typing import Any, Sequence


from pdfnet_core import (FAMILIES, WEIGHT_SUFFIXES, InputError, LoadedModel, ensure_model_file, family, hf_url,
                         known_files, load_cached, lookup, model_name_problem)

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


def _shared_folders(folder_key: str) -> tuple[str, ...]:
    """The other ComfyUI folders the family of ``folder_key`` reads (its spec's ``shared_folders``)."""
    return next((spec.shared_folders for spec in FAMILIES.values() if spec.folder_key == folder_key), ())


def list_models(folder_key: str) -> list[str]:
    """Weight files in the folder (and in the family's shared folders, e.g. core's background_removal),
    then the registry's files that could be downloaded into it."""
    present = list(host.folder_files(folder_key))
    for shared in _shared_folders(folder_key):
        present += host.folder_files(shared)
    return model_choices(present, folder_key)


def find_file(folder_key: str, name: str) -> str | None:
    """The full path of ``name`` in the family's own folders, else in its shared folders, or None."""
    for key in (folder_key, *_shared_folders(folder_key)):
        found = host.find_model(key, name)
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------------------------
# licences


def licence_problem(name: Any, commercial_only: Any) -> str | None:
    """Why ``name`` may not be used when the loader's commercial_only switch is on, or None."""
    if not commercial_only or not isinstance(name, str):
        return None
    entry = lookup(os.path.basename(name))
    if entry is None:
        return (f"model_name {name!r}: commercial_only is on and this pack does not know the file's licence; "
                "choose a file listed as allowing commercial use, or turn commercial_only off if you hold "
                "the rights to this file")
    if not entry.commercial:
        return (f"model_name {name!r} is licensed {entry.licence_text()}, and commercial_only is on; choose a "
                "file whose licence allows commercial use, or turn commercial_only off for non-commercial work")
    return None


def licence_tooltip(folder_key: str) -> str:
    """The licences of the folder's known files, grouped, for the model_name tooltip."""
    groups: dict[str, list[str]] = {}
    for entry in known_files(folder_key):
        groups.setdefault(entry.terms.summary, []).append(entry.filename)
    lines = [f"{summary}: {', '.join(names)}" for summary, names in groups.items()]
    return "Licences (files this pack knows; others: unknown, see where you got them). " + ". ".join(lines) + "."


COMMERCIAL_TOOLTIP = ("On: refuse files whose licence does not allow commercial use (and files whose licence this "
                      "pack does not know), with a message naming the licence. Off (default): any file. The "
                      "model_name tooltip lists each known file's licence.")


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
        # Published outside the hub (SegRefiner: Google Drive only; RMBG-2.0: gated, bring your own): the
        # download toggle cannot help, so the message must not suggest it.
        return (f"model_name {name!r} is not in the '{folder_key}' models folder ({where}): it cannot be "
                f"downloaded automatically; download it by hand from {entry.manual_url} and place it in {first} "
                f"(keep the name {entry.filename}). Licence: {entry.licence_text()}")
    if download:
        return ""
    return (f"model_name {name!r} is not in the '{folder_key}' models folder ({where}): turn on 'download' "
            f"to fetch it from {hf_url(entry)}, or download it by hand and place it in {first}")


def _unsafe(name: str, folder_key: str, problem: str) -> str:
    return f"model_name {name!r} {problem}; choose a file inside the '{folder_key}' models folder"


def check_model_choice(family_name: str, name: Any, download: Any = False, commercial_only: Any = False) -> bool | str:
    """``validate_inputs`` for a loader: True, or a message that names the folder to use."""
    if name is None:   # the widget was turned into a linked input: nothing to check before running
        return True
    folder_key = family(family_name).folder_key
    problem = name_problem(name)
    if problem:
        return _unsafe(name, folder_key, problem)
    refused = licence_problem(name, commercial_only)
    if refused:
        return refused
    if find_file(folder_key, name) is not None:
        return True
    return missing_model_message(folder_key, name, host.model_folders(folder_key), bool(download)) or True


def file_fingerprint(family_name: str, name: Any) -> Any:
    """``fingerprint_inputs`` for a loader: the file's identity, so a file replaced on disk under
    the same name makes ComfyUI run the loader again (and the cache, keyed by it, reload)."""
    if not isinstance(name, str) or name_problem(name):
        return name
    path = find_file(family(family_name).folder_key, name)
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
    found = find_file(folder_key, name)
    if found is not None:
        return found
    folders = host.model_folders(folder_key)
    entry = lookup(os.path.basename(name))
    if not download or entry is None or entry.folder_key != folder_key or not entry.on_hub or not folders:
        raise InputError(missing_model_message(folder_key, name, folders, False))
    # ensure_model_file is atomic and verified; its errors already name the URL and the folder.
    return os.fspath(ensure_model_file(entry, folders[0], allow_download=True))


def load_model(family_name: str, name: str, dtype_choice: str = "auto", download: bool = False,
               commercial_only: bool = False, **choices: str) -> LoadedModel:
    """The cached model for this file/dtype/device(/loader options), read from disk only on a cache miss.

    It is built on ComfyUI's offload device; ``host.ComfyRuntime.resident`` moves it to the load
    device when a node runs it.  Two loader nodes naming the same file (and options) share one
    model, as does any other path of the process that loads it (``pdfnet_core.load_cached``).
    ``choices`` are the family's loader options as the widgets give them (e.g. patch_order="auto").
    ``commercial_only`` refuses a file whose licence does not allow commercial use (or is unknown).
    """
    spec = family(family_name)
    refused = licence_problem(name, commercial_only)
    if refused:
        raise InputError(refused)
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
