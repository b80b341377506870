"""The registry of model families: each family registers its spec here, as timm's ``register_model``.

A leaf: it imports only the spec types.  A family registers itself when its package is imported
(``models/<family>/spec.py`` ends in ``register_family(SPEC)``); ``families.py`` imports the
built-in ones, so code that needs the whole list imports its names from there.  Everything here
is read off the registered specs: the known files keyed by the name a user sees in a models
folder, the folder keys, and which family a loaded module belongs to.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from torch import nn

from .specs import FamilySpec, LoadedModel, ModelEntry

_FAMILIES: dict[str, FamilySpec] = {}
_FILES: dict[str, ModelEntry] = {}

# Read-only views; they fill as families register.
FAMILIES: Mapping[str, FamilySpec] = MappingProxyType(_FAMILIES)
REGISTRY: Mapping[str, ModelEntry] = MappingProxyType(_FILES)


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add ``spec`` and its known files; returns it.  A name or a file name may be registered once."""
    if _FAMILIES.get(spec.name, spec) is not spec:
        raise ValueError(f"a model family named {spec.name!r} is registered already")
    for entry in spec.files:
        if (entry.arch, entry.folder_key) != (spec.name, spec.folder_key):
            raise ValueError(f"registry entry {entry.filename!r} is listed by {spec.name} but says "
                             f"{entry.arch}/{entry.folder_key}")
        if _FILES.get(entry.filename, entry) is not entry:
            raise ValueError(f"duplicate registry entry {entry.filename!r}")
    _FAMILIES[spec.name] = spec
    _FILES.update((entry.filename, entry) for entry in spec.files)
    return spec


def family(name: str) -> FamilySpec:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(_FAMILIES)}") from None


def folder_keys() -> tuple[str, ...]:
    return tuple(spec.folder_key for spec in _FAMILIES.values())


def family_of(model: nn.Module | LoadedModel) -> FamilySpec | None:
    """The family a loaded module belongs to (None for a module of no known family)."""
    if isinstance(model, LoadedModel):
        return model.spec
    return next((spec for spec in _FAMILIES.values() if isinstance(model, spec.module_type)), None)


def as_loaded(model: nn.Module | LoadedModel, wanted: str = "model") -> LoadedModel:
    """``model`` with its family; a TypeError naming the families for anything else."""
    if isinstance(model, LoadedModel):
        return model
    spec = family_of(model) if isinstance(model, nn.Module) else None
    if spec is None:
        raise TypeError(f"{wanted} is a {type(model).__name__}, not a model of this pack; expected one of "
                        f"{', '.join(s.label for s in _FAMILIES.values())} (load it with its loader)")
    return LoadedModel(model, spec)


def known_files(folder_key: str) -> list[ModelEntry]:
    """Entries that belong in the models folder ``folder_key``, in registration order."""
    if folder_key not in folder_keys():
        raise ValueError(f"unknown model folder key {folder_key!r}; known: {', '.join(folder_keys())}")
    return [e for e in _FILES.values() if e.folder_key == folder_key]


def lookup(filename: str) -> ModelEntry | None:
    """The entry for a local file name, or None for a file this pack does not know (user files are fine)."""
    return _FILES.get(filename)
