"""Which official PDFNet code revision a checkpoint belongs to, decided from the checkpoint itself.

The FSE formulas that changed between the revisions (net.py) have no parameters, so no weight can
say which formulas the weights were trained under.  What a file can show is the code that saved it:
both revisions train an auxiliary depth head (``depth_decoder.*``, 42 entries, never used at
inference) whose layout differs in five entries.  The evidence, strongest first:

1. those entries in the state dict (the released ``PDFNet_Best.pth`` has the first revision's);
2. the ``pdfnet_revision`` metadata a conversion to safetensors wrote (it drops the head);
3. the registry entry of a known file name;
otherwise v2, the current official code, with a warning that says so.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import torch

from ...registry import lookup
from ...weights import read_safetensors_metadata
from .net import REVISIONS

log = logging.getLogger("pdfnet_core")

REQUESTS = ("auto",) + REVISIONS
DEFAULT = "v2"
# safetensors metadata written by ``python -m pdfnet_core convert``: the revision, and why.
METADATA_KEY = "pdfnet_revision"
METADATA_EVIDENCE_KEY = "pdfnet_revision_evidence"

# The depth-head entries whose shapes tell the layouts apart; the other 37 of the 42 are equal in
# both (shared/reference/pdfnet/v1/layout.json).  v1 feeds 256 channels and RGB to the head, the
# current code concatenated features (768 / 512 channels) and RGB + depth (6).
_DISTINGUISHING = {
    "depth_decoder.Decoder.0.0.0.weight": {"v1": (256, 256, 3, 3), "v2": (256, 768, 3, 3)},
    "depth_decoder.Decoder.1.0.0.weight": {"v1": (256, 256, 3, 3), "v2": (256, 512, 3, 3)},
    "depth_decoder.Decoder.2.0.0.weight": {"v1": (256, 256, 3, 3), "v2": (256, 512, 3, 3)},
    "depth_decoder.Decoder.3.0.0.weight": {"v1": (256, 256, 3, 3), "v2": (256, 512, 3, 3)},
    "depth_decoder.shallow.0.weight": {"v1": (128, 3, 3, 3), "v2": (128, 6, 3, 3)},
}
_COMMITS = {"v1": "802b477, the first release", "v2": "c55d866..f4e218b, the current code"}


def check_request(revision: str) -> None:
    if revision not in REQUESTS:
        raise ValueError(f"revision must be one of {', '.join(REQUESTS)}, got {revision!r}")


def source_facts(source) -> tuple[str | None, dict[str, str]]:
    """(file name, safetensors metadata) of a checkpoint path; (None, {}) for an in-memory state dict."""
    if isinstance(source, Mapping):
        return None, {}
    return Path(os.fspath(source)).name, read_safetensors_metadata(source)


def _from_layout(state: Mapping[str, torch.Tensor]) -> tuple[str | None, str]:
    head = sum(1 for k in state if k.startswith("depth_decoder."))
    present = {k: tuple(state[k].shape) for k in _DISTINGUISHING if k in state}
    if not present:
        return None, (f"{head} depth_decoder entries, none of those that tell the revisions apart" if head else "")
    votes = {next((r for r, shape in _DISTINGUISHING[k].items() if shape == s), None) for k, s in present.items()}
    if len(votes) == 1 and None not in votes:
        revision = votes.pop()
        shown = ", ".join(f"{k.removeprefix('depth_decoder.')} {list(s)}" for k, s in list(present.items())[:2])
        return revision, (f"the checkpoint's {head} training-only depth_decoder entries have the layout of "
                          f"{revision} ({_COMMITS[revision]}): {shown}")
    odd = ", ".join(f"{k} {list(s)}" for k, s in present.items())
    return None, f"depth_decoder entries of neither revision's layout ({odd})"


def _registry_revision(filename: str | None) -> str | None:
    entry = lookup(filename) if filename else None
    if entry is None or entry.arch != "pdfnet":
        return None
    known = getattr(entry, "pdfnet_revision", None)
    return known if known in REVISIONS else None


def revision_evidence(state: Mapping[str, torch.Tensor], filename: str | None = None,
                      metadata: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """(revision, why) from the checkpoint's own evidence; revision None when there is none."""
    revision, why = _from_layout(state)
    if revision is not None:
        return revision, why
    notes = [why] if why else []
    recorded = (metadata or {}).get(METADATA_KEY)
    if recorded in REVISIONS:
        evidence = (metadata or {}).get(METADATA_EVIDENCE_KEY)
        return recorded, (f"the file's safetensors metadata {METADATA_KEY}={recorded}"
                          + (f" (recorded at conversion: {evidence})" if evidence else ""))
    if recorded is not None:
        notes.append(f"unknown metadata {METADATA_KEY}={recorded!r}")
    known = _registry_revision(filename)
    if known is not None:
        return known, f"the registry entry of {filename}: trained with {known} ({_COMMITS[known]})"
    notes.append("no depth_decoder entries, no pdfnet_revision metadata"
                 + (f", and {filename} is not a file the registry knows" if filename else ""))
    return None, "; ".join(notes)


def resolve_revision(state: Mapping[str, torch.Tensor], requested: str = "auto", filename: str | None = None,
                     metadata: Mapping[str, str] | None = None, fallback: str = DEFAULT) -> tuple[str, str]:
    """(revision, reason) to run ``state`` with; logs the reason (a WARNING when nothing decided it).

    ``fallback`` is what "auto" runs when the checkpoint shows nothing.
    """
    check_request(requested)
    if fallback not in REVISIONS:
        raise ValueError(f"fallback revision must be one of {', '.join(REVISIONS)}, got {fallback!r}")
    evidence, why = revision_evidence(state, filename, metadata)
    if requested != "auto":
        reason = f"requested {requested}"
        if evidence is not None and evidence != requested:
            reason += f", although {why}"
        log.info("PDFNet revision %s: %s", requested, reason)
        return requested, reason
    if evidence is not None:
        log.info("PDFNet revision %s: %s", evidence, why)
        return evidence, why
    other = next(r for r in REVISIONS if r != fallback)
    reason = (f"nothing in the checkpoint says which code revision trained it ({why}); running "
              f"{fallback} ({_COMMITS[fallback]}). Pass revision='{other}' if the weights were trained with "
              f"{_COMMITS[other]} (the published PDFNet_Best.pth / PDF-Generally.pth were saved by v1)")
    log.warning("PDFNet revision %s: %s", fallback, reason)
    return fallback, reason
