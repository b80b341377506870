"""Reading, checking and converting checkpoints.

Every loader in this package goes through here so that all models share one set of rules:
``.pth`` files are read with ``torch.load(weights_only=True)``; wrappers (``{"model": ...}``,
``{"state_dict": ...}``) and a DataParallel ``module.`` prefix are removed; every key of the file is
accounted for (loaded, deliberately ignored and logged, or reported as an error by name); and a file
that belongs to another architecture is refused with a message saying what it looks like.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from safetensors.torch import save
from torch import nn

from .atomic_files import atomic_write
from .fingerprints import Fingerprint, describe, identify
from .precision import DTYPES, as_dtype
from .safetensors_file import SafetensorsFormatError, read_metadata, read_tensors

log = logging.getLogger("pdfnet_core")

StateDict = dict[str, torch.Tensor]
Source = "str | os.PathLike | Mapping[str, torch.Tensor]"

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
# DataParallel / DistributedDataParallel and torch.compile wrap every key in one of these.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
_SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
# What a models folder may hold as weights: the loaders list only these.
WEIGHT_SUFFIXES = _TORCH_SUFFIXES + _SAFETENSORS_SUFFIXES
_MAX_KEYS_IN_MESSAGE = 12


class CheckpointError(ValueError):
    """A checkpoint cannot be used for the requested model; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# reading


def read_state_dict(source) -> StateDict:
    """Return a flat ``name -> tensor`` dict from a file path or an in-memory mapping.

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}`` containers and strips a ``module.`` or
    ``_orig_mod.`` prefix shared by every key.  Non-tensor entries next to the weights (epoch counters, optimizer state,
    metadata) are dropped here, because they are not weights of any model.
    """
    if isinstance(source, Mapping):
        raw = source
        origin = "the given state dict"
    else:
        path = Path(os.fspath(source))
        origin = str(path)
        raw = _read_file(path)
    state = _unwrap(raw, origin)
    for prefix in _WRAPPER_PREFIXES:
        state = _strip_common_prefix(state, prefix)
    return state


def _read_file(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix in _SAFETENSORS_SUFFIXES:
        try:
            return read_tensors(path)
        except (SafetensorsFormatError, OSError) as exc:
            raise _unreadable_safetensors(path, exc) from exc
    if suffix not in _TORCH_SUFFIXES:
        raise CheckpointError(f"{path}: unsupported checkpoint type {suffix!r}; expected one of "
                              f"{', '.join(WEIGHT_SUFFIXES)}")
    # No mmap=True: the model adopts these tensors (meta-device assign), so with a live mapping it
    # would not own its memory, and a checkpoint replaced or truncated on disk while loaded would
    # kill the process with SIGBUS on the next access.  Read into memory the process owns.
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zips, refused globals
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} could not be read as a weights-only PyTorch checkpoint ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else ''}). The file may be truncated or corrupted "
        "(delete it and download it again), or it may contain pickled code, which is never executed here.")


def read_safetensors_metadata(source) -> dict[str, str]:
    """The string metadata of a .safetensors file's header ({} for other sources and files without any).

    Only the header is read.  A conversion records facts there that the tensors cannot carry.
    """
    if isinstance(source, Mapping):
        return {}
    path = Path(os.fspath(source))
    if path.suffix.lower() not in _SAFETENSORS_SUFFIXES or not path.is_file():
        return {}
    try:
        return read_metadata(path)
    except (SafetensorsFormatError, OSError) as exc:
        raise _unreadable_safetensors(path, exc) from exc


def _unreadable_safetensors(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable safetensors file ({exc}); "
                           "the download may be incomplete: delete it and fetch it again")


def _unwrap(raw, origin: str) -> StateDict:
    obj = raw
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{origin} does not hold a state dict (found {type(obj).__name__})")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{origin} holds no tensors; it is not a model checkpoint")
    return tensors


def _strip_common_prefix(state: StateDict, prefix: str) -> StateDict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


# --------------------------------------------------------------------------------------------
# recognising families


def require_layout(state: Mapping[str, torch.Tensor], layouts: Sequence[Fingerprint]) -> Fingerprint:
    """The layout of ``state`` if it is one of ``layouts``; else a CheckpointError saying what the file is.

    Refuses a checkpoint of another family before any key-by-key comparison (a family may be
    published in several layouts).
    """
    fp = identify(state.keys())
    if fp is not None and fp in layouts:
        return fp
    wanted = layouts[0].wanted
    raise CheckpointError(
        f"this is not {wanted}: the file looks like {describe(state.keys())}. "
        f"Choose {wanted} file in this loader, or use the loader for that model.")


def check_constant(state: Mapping[str, torch.Tensor], suffix: str, expected: torch.Tensor, what: str) -> None:
    """Every stored entry ending in ``suffix`` must equal ``expected`` (a constant the model recomputes)."""
    for key, value in state.items():
        if key.endswith(suffix) and (tuple(value.shape) != tuple(expected.shape)
                                     or not torch.equal(value.to(expected.dtype), expected)):
            raise CheckpointError(f"the checkpoint entry {key} is not {what}; the file is corrupted or belongs "
                                  "to another configuration")


# --------------------------------------------------------------------------------------------
# strict accounting


@dataclass(frozen=True)
class IgnoreRule:
    """Checkpoint entries dropped on purpose, and why (the reason goes to the log)."""

    reason: str
    names: frozenset[str] = frozenset()
    pattern: str | None = None

    def covers(self, key: str) -> bool:
        return key in self.names or (self.pattern is not None and re.fullmatch(self.pattern, key) is not None)


@dataclass
class KeyReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)   # "key: file [..] vs model [..]"
    ignored: dict[str, list[str]] = field(default_factory=dict)  # reason -> keys

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def account_keys(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size],
                 ignore: Sequence[IgnoreRule] = (), optional: Iterable[str] = ()) -> KeyReport:
    """Compare a checkpoint with the keys and shapes a model expects.

    ``optional`` keys may be absent from the file (recomputable buffers); they are not reported.
    """
    report = KeyReport()
    optional = set(optional)
    for key, tensor in state.items():
        if key in expected:
            if tuple(tensor.shape) != tuple(expected[key]):
                report.mismatched.append(
                    f"{key}: file {list(tensor.shape)} vs model {list(expected[key])}")
            continue
        rule = next((r for r in ignore if r.covers(key)), None)
        if rule is None:
            report.unexpected.append(key)
        else:
            report.ignored.setdefault(rule.reason, []).append(key)
    report.missing = sorted(k for k in expected if k not in state and k not in optional)
    report.unexpected.sort()
    return report


def _list(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_IN_MESSAGE])
    more = len(keys) - _MAX_KEYS_IN_MESSAGE
    return shown + (f" ... and {more} more" if more > 0 else "")


def raise_for_report(report: KeyReport, wanted: str) -> None:
    """Turn a failed report into one error naming the keys; log what was ignored on purpose."""
    for reason, keys in report.ignored.items():
        log.info("ignoring %d checkpoint entries (%s): %s", len(keys), reason, _list(sorted(keys)))
    if report.ok:
        return
    parts = []
    if report.missing:
        parts.append(f"{len(report.missing)} missing: {_list(report.missing)}")
    if report.unexpected:
        parts.append(f"{len(report.unexpected)} unexpected: {_list(report.unexpected)}")
    if report.mismatched:
        parts.append(f"{len(report.mismatched)} with the wrong shape: {_list(report.mismatched)}")
    raise CheckpointError(
        f"the checkpoint does not match {wanted}; " + "; ".join(parts) +
        ". The file may be truncated, from another model version, or edited; download the official file again.")


def load_checked(model: torch.nn.Module, state: Mapping[str, torch.Tensor], wanted: str,
                 ignore: Sequence[IgnoreRule] = (), optional: Iterable[str] = ()) -> KeyReport:
    """Strictly load ``state`` into ``model`` after accounting for every key.

    A model built on the meta device (``with torch.device("meta"): ...``) adopts the checkpoint's
    tensors instead of copying them, so loading costs one copy of the weights, not two; modules
    with an ``init_constants()`` method then rebuild the constant buffers the file did not carry.
    """
    expected = {k: v.shape for k, v in model.state_dict().items()}
    report = account_keys(state, expected, ignore, optional)
    raise_for_report(report, wanted)
    for key, tensor in state.items():
        # a sum is one cheap pass; only when it is not finite (NaN, inf, or an overflow) look closer
        if key in expected and tensor.is_floating_point() and not torch.isfinite(tensor.sum()) \
                and not torch.isfinite(tensor).all():
            raise CheckpointError(f"the checkpoint entry {key} contains NaN or inf values; the file is corrupted")
    usable = {k: v for k, v in state.items() if k in expected}
    on_meta = any(t.is_meta for t in model.state_dict().values())
    # strictness was enforced above, with messages that name the keys
    model.load_state_dict(usable, strict=False, assign=on_meta)
    if on_meta:
        _materialize_constants(model, wanted)
    return report


def _materialize_constants(model: torch.nn.Module, wanted: str) -> None:
    for module in model.modules():
        if hasattr(module, "init_constants") and any(b.is_meta for b in module.buffers(recurse=False)):
            module.init_constants()
    left = [k for k, v in model.state_dict().items() if v.is_meta]
    if left:
        raise CheckpointError(f"the checkpoint does not provide {wanted} entries {_list(left)}")


# --------------------------------------------------------------------------------------------
# the loading recipe every family follows


def load_family(source, layouts: Sequence[Fingerprint], build: Callable[[StateDict], nn.Module], *,
                device: torch.device | str = "cpu", dtype: torch.dtype | str = torch.float32,
                prepare: Callable[[StateDict, str], StateDict] | None = None,
                ignore: Sequence[IgnoreRule] | Callable[[nn.Module], Sequence[IgnoreRule]] = (),
                optional_suffixes: tuple[str, ...] = (),
                wanted: str | Callable[[nn.Module], str] | None = None, memory_format: torch.memory_format | None = None) -> nn.Module:
    """Read, check the layout, build on the meta device, load with strict accounting, place.

    ``layouts``: the checkpoint layouts the family is published in (``fingerprints``), the first
    naming the family in errors.  ``prepare(state, layout)`` renames or checks entries once the family is known (``layout`` is the
    matched fingerprint's name); ``build(state)`` returns the module for that state (its variant
    read from the shapes).  ``ignore`` lists the entries dropped on purpose, or builds that list
    from the module (rules that name each of its modules); ``wanted`` (a phrase, or built from the
    module) names the model in errors.  Entries whose name ends in
    ``optional_suffixes`` may be absent (recomputed constants).  The model comes back in eval mode without gradients, on ``device``.
    """
    dtype = as_dtype(dtype)
    state = read_state_dict(source)
    origin = None if isinstance(source, Mapping) else str(Path(os.fspath(source)))
    try:
        layout = require_layout(state, layouts)
        if prepare is not None:
            state = prepare(state, layout.name)
        with torch.device("meta"):
            model = build(state)
        optional = [k for k in model.state_dict() if optional_suffixes and k.endswith(optional_suffixes)]
        rules = ignore(model) if callable(ignore) else ignore
        what = wanted(model) if callable(wanted) else (wanted or layouts[0].wanted)
        load_checked(model, state, what, ignore=rules, optional=optional)
    except CheckpointError as exc:
        # every message about a checkpoint names its file (the checks themselves see only tensors)
        if origin is None or origin in str(exc):
            raise
        raise CheckpointError(f"{origin}: {exc}") from exc
    model.eval().requires_grad_(False)
    if memory_format is None:
        return model.to(device=device, dtype=dtype)
    return model.to(device=device, dtype=dtype, memory_format=memory_format)


# --------------------------------------------------------------------------------------------
# conversion


def save_safetensors(state: Mapping[str, torch.Tensor], path, dtype: str = "fp32",
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write floating-point tensors in ``dtype`` (integer buffers keep theirs), atomically."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    target = DTYPES[dtype]
    out = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    data = save(out, metadata=dict(metadata or {}))
    return atomic_write(Path(path), lambda fh: fh.write(data))
