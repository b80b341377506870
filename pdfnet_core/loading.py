"""Loading a family's weight file once per process: the one cached-load function every path uses.

The loader nodes, the default models, the batch engine, training and evaluation all call
``load_cached``, so one file at one dtype on one device is one model in the process, whichever
path asked for it first.  The cache key is the file's identity, the dtype, the device the model
runs on, and the family with every loader option resolved (``LoaderOption.value``), so that a
default left out and the same default spelled out are one key.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .cache import default_cache
from .families import family
from .precision import as_dtype
from .specs import FamilySpec, LoadedModel

log = logging.getLogger("pdfnet_core")


def resolve_options(spec: FamilySpec, filename: str | None, choices: dict[str, str]) -> dict[str, str]:
    """Every loader option of the family, as given in ``choices`` or its default, resolved for ``filename``."""
    unknown = sorted(set(choices) - {opt.name for opt in spec.options})
    if unknown:
        raise ValueError(f"{spec.label} has no loader option {', '.join(map(repr, unknown))}; it has "
                         f"{', '.join(opt.name for opt in spec.options) or 'none'}")
    return {opt.name: opt.value(choices.get(opt.name, opt.default), filename) for opt in spec.options}


def cache_tag(spec: FamilySpec, options: dict[str, str]) -> str:
    """The part of the cache key that says what is built from the file: 'pdfnet;revision=auto'."""
    return ";".join([spec.name, *(f"{name}={value}" for name, value in sorted(options.items()))])


def load_cached(family_name: str | FamilySpec, path: str | os.PathLike, *, device: torch.device | str = "cpu",
                dtype: torch.dtype | str = torch.float32, park: torch.device | str | None = None,
                **choices: str) -> LoadedModel:
    """The model in ``path`` as ``family_name`` at ``dtype`` for ``device``, read from disk only on a cache miss.

    ``choices``: the family's loader options as a user gives them ("auto" included).  ``park``:
    where the loader puts the weights when it is not ``device`` (ComfyUI builds on its offload device
    and its memory manager moves the model to ``device`` before each run).
    """
    spec = family(family_name) if isinstance(family_name, str) else family_name
    options = resolve_options(spec, Path(path).name, choices)
    dtype, device = as_dtype(dtype), torch.device(device)
    place = device if park is None else torch.device(park)

    def load() -> torch.nn.Module:
        module = spec.load(path, device=place, dtype=dtype, **options)
        log.info("%s from %s runs on %s in %s%s", spec.describe_module(module), Path(path).name, device,
                 str(dtype).removeprefix("torch."), "" if place == device else f" (parked on {place})")
        return module

    module = default_cache().get_or_load(path, dtype, device, load, tag=cache_tag(spec, options))
    return LoadedModel(module, spec)
