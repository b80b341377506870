"""The model families of the pack, and the files they are published as.

One registration line per family (``FAMILIES``); everything else here is read off the families'
specs: the known files keyed by the name a user sees in a models folder, the folder keys, and
which family a checkpoint or a loaded module belongs to.  Sizes and hashes of files are filled in
only from verified facts; ``None`` means "not known", and then only the download's own integrity
checks (huggingface_hub's) apply.  Nothing here touches the network.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Iterable, Mapping

from torch import nn

from .models.birefnet.spec import SPEC as BIREFNET
from .models.depth_anything.spec import SPEC as DEPTH_ANYTHING
from .models.pdfnet.spec import SPEC as PDFNET
from .models.segrefiner.spec import SPEC as SEGREFINER
from .specs import HF_ENDPOINT, FamilySpec, Fingerprint, LoadedModel, ModelEntry

FAMILIES: Mapping[str, FamilySpec] = MappingProxyType({
    spec.name: spec for spec in (PDFNET, DEPTH_ANYTHING, BIREFNET, SEGREFINER)})

ARCHS = tuple(FAMILIES)
FOLDER_KEYS = tuple(spec.folder_key for spec in FAMILIES.values())

# Checkpoints of models outside the pack, recognised only to say what a wrongly chosen file is.
FOREIGN_FINGERPRINTS = (
    Fingerprint("stable_diffusion", "a Stable Diffusion / ComfyUI diffusion checkpoint", ("model.diffusion_model.",)),
    Fingerprint("vae", "a VAE checkpoint", ("encoder.down.", "decoder.up.")),
    Fingerprint("clip_text", "a CLIP text encoder", ("text_model.",)),
)
FINGERPRINTS: tuple[Fingerprint, ...] = tuple(
    fp for spec in FAMILIES.values() for fp in spec.fingerprints) + FOREIGN_FINGERPRINTS


def family(name: str) -> FamilySpec:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def family_of(model: nn.Module | LoadedModel) -> FamilySpec | None:
    """The family a loaded module belongs to (None for a module of no known family)."""
    if isinstance(model, LoadedModel):
        return model.spec
    return next((spec for spec in FAMILIES.values() if isinstance(model, spec.module_type)), None)


def as_loaded(model: nn.Module | LoadedModel, wanted: str = "model") -> LoadedModel:
    """``model`` with its family; a TypeError naming the families for anything else."""
    if isinstance(model, LoadedModel):
        return model
    spec = family_of(model) if isinstance(model, nn.Module) else None
    if spec is None:
        raise TypeError(f"{wanted} is a {type(model).__name__}, not a model of this pack; expected one of "
                        f"{', '.join(s.label for s in FAMILIES.values())} (load it with its loader)")
    return LoadedModel(model, spec)


def identify(keys: Iterable[str]) -> Fingerprint | None:
    """The first known layout whose fingerprint matches these checkpoint keys, or None."""
    keys = list(keys)
    return next((fp for fp in FINGERPRINTS if fp.matches(keys)), None)


def _build(entries: Iterable[ModelEntry]) -> Mapping[str, ModelEntry]:
    table: dict[str, ModelEntry] = {}
    for entry in entries:
        if entry.filename in table:
            raise ValueError(f"duplicate registry entry {entry.filename!r}")
        table[entry.filename] = entry
    return MappingProxyType(table)


def check_files(spec: FamilySpec) -> tuple[ModelEntry, ...]:
    """The family's known files, each of which must name that family and its folder."""
    for entry in spec.files:
        if (entry.arch, entry.folder_key) != (spec.name, spec.folder_key):
            raise ValueError(f"registry entry {entry.filename!r} is listed by {spec.name} but says "
                             f"{entry.arch}/{entry.folder_key}")
    return spec.files


REGISTRY: Mapping[str, ModelEntry] = _build(e for spec in FAMILIES.values() for e in check_files(spec))


def known_files(folder_key: str) -> list[ModelEntry]:
    """Entries that belong in the models folder ``folder_key``, in registry order."""
    if folder_key not in FOLDER_KEYS:
        raise ValueError(f"unknown model folder key {folder_key!r}; known: {', '.join(FOLDER_KEYS)}")
    return [e for e in REGISTRY.values() if e.folder_key == folder_key]


def lookup(filename: str) -> ModelEntry | None:
    """The entry for a local file name, or None for a file this pack does not know (user files are fine)."""
    return REGISTRY.get(filename)


def hf_url(entry: ModelEntry, endpoint: str = HF_ENDPOINT) -> str:
    """The direct download address of ``entry`` (off the hub: the publisher's page)."""
    if not entry.on_hub:
        return entry.manual_url
    return f"{endpoint.rstrip('/')}/{entry.repo_id}/resolve/{entry.revision}/{entry.hf_filename}"
