"""The model catalogue as the command line shows and takes it: every known file with its licence,
size and presence on disk (``python -m pdfnet_core models``), and what ``cutout --model`` names.

Everything here is read off the family specs (``families``); nothing is loaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .families import FAMILIES, REGISTRY, family, lookup
from .fingerprints import identify
from .safetensors_file import read_header
from .specs import FamilySpec, ModelEntry
from .weights import read_state_dict


@dataclass(frozen=True)
class CatalogueRow:
    entry: ModelEntry
    path: Path | None            # where it is on disk, None: absent

    @property
    def size_bytes(self) -> int | None:
        """On disk if present, else the published size as far as known."""
        if self.path is not None:
            return self.path.stat().st_size
        return self.entry.size_bytes or self.entry.approx_bytes


def catalogue(root: Path) -> list[CatalogueRow]:
    """Every known file, in the families' order, with its path under ``root`` (a models folder)."""
    rows = []
    for entry in REGISTRY.values():
        path = root / entry.folder_key / entry.filename
        rows.append(CatalogueRow(entry, path if path.is_file() else None))
    return rows


def _size_text(n: int | None, exact: bool) -> str:
    if n is None:
        return "?"
    text = f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
    return text if exact else "~" + text


def format_catalogue(rows: list[CatalogueRow], root: Path, commercial_only: bool = False) -> str:
    """The table ``models`` prints: file, family, size, on disk, licence, then what each is for."""
    shown = [r for r in rows if r.entry.commercial or not commercial_only]
    header = ("file", "family", "size", "on disk", "licence")
    table = [header] + [(r.entry.filename, family(r.entry.arch).label,
                         _size_text(r.size_bytes, r.path is not None or r.entry.size_bytes is not None),
                         "yes" if r.path is not None else ("no" if r.entry.on_hub else "no (bring your own)"),
                         r.entry.terms.summary) for r in shown]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.append("")
    lines.append(f"models folder: {root} (one sub-folder per family: "
                 f"{', '.join(spec.folder_key for spec in FAMILIES.values())})")
    for r in shown:
        where = f"hub {r.entry.repo_id}" if r.entry.on_hub else f"by hand from {r.entry.manual_url}"
        note = f"; {r.entry.licence_note}" if r.entry.licence_note else ""
        lines.append(f"{r.entry.filename}: {r.entry.description} ({where}{note})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# what --model names


class ModelChoiceError(ValueError):
    """A --model value that names no family, known file or existing file."""


@dataclass(frozen=True)
class ModelChoice:
    """A segmentation model as the command line names it: its family and a file (None: the family's
    default file, found or fetched in the models folder) or a known file's name."""

    spec: FamilySpec
    path: Path | None = None
    known: ModelEntry | None = None


def segmenter_names() -> tuple[str, ...]:
    """The family names ``--model`` takes (those ``segment()`` runs)."""
    return tuple(name for name, spec in FAMILIES.items() if spec.segment is not None)


def resolve_model_choice(choice: str, weights: Path | None = None) -> ModelChoice:
    """``--model`` (a family name, a known file name, or a path to a file) and ``--weights`` (a file
    for a family named by ``--model``) as one ``ModelChoice``; ModelChoiceError says what is wrong."""
    names = segmenter_names()
    if choice in names:
        return ModelChoice(family(choice), weights)
    if weights is not None:
        raise ModelChoiceError(f"--weights goes with --model {' or '.join(names)}; --model {choice!r} names a file "
                               "already (drop one of them)")
    entry = lookup(choice)
    if entry is not None:
        spec = family(entry.arch)
        if spec.segment is None:
            raise ModelChoiceError(f"--model {choice}: a {spec.label} file is not a segmentation model; "
                                   f"choose one of {', '.join(names)} or a file of theirs")
        return ModelChoice(spec, known=entry)
    path = Path(choice)
    if not path.is_file():
        raise ModelChoiceError(f"--model {choice!r} is not one of {', '.join(names)}, a known file (python -m "
                               "pdfnet_core models lists them) or an existing file")
    return ModelChoice(_family_of_file(path), path)


def _family_of_file(path: Path) -> FamilySpec:
    """The family a checkpoint's keys show; a known file name decides without reading it."""
    entry = lookup(path.name)
    if entry is not None:
        return family(entry.arch)
    # a safetensors header is enough where its keys are plain; else read the file (weights only)
    layout = identify(_header_keys(path)) if path.suffix.lower() == ".safetensors" else None
    if layout is None:
        layout = identify(read_state_dict(os.fspath(path)).keys())
    spec = next((s for s in FAMILIES.values() if layout is not None and layout in s.fingerprints), None)
    if spec is None or spec.segment is None:
        what = layout.description if layout is not None else "no model this pack knows"
        raise ModelChoiceError(f"--model {path}: the file is {what}, not a segmentation model "
                               f"({', '.join(segmenter_names())})")
    return spec


def _header_keys(path: Path) -> list[str]:
    try:
        return [k for k in read_header(path)[0] if k != "__metadata__"]
    except ValueError:   # not readable as safetensors: read_state_dict says why
        return []
