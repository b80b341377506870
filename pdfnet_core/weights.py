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

log = logging.getLogger("pdfnet_core")

StateDict = dict[str, torch.Tensor]
Source = "str | os.PathLike | Mapping[str, torch.Tensor]"

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
_SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
_MAX_KEYS_IN_MESSAGE = 12


class CheckpointError(ValueError):
    """A checkpoint cannot be used for the requested model; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# reading


def read_state_dict(source) -> StateDict:
    """Return a flat ``name -> tensor`` dict from a file path or an in-memory mapping.

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}`` containers and strips a ``module.`` prefix
    shared by every key.  Non-tensor entries next to the weights (epoch counters, optimizer state,
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
    return _strip_common_prefix(state, "module.")


def _read_file(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix in _SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); "
                                  "the download may be incomplete: delete it and fetch it again") from exc
    if suffix not in _TORCH_SUFFIXES:
        raise CheckpointError(f"{path}: unsupported checkpoint type {suffix!r}; expected one of "
                              f"{', '.join(_TORCH_SUFFIXES + _SAFETENSORS_SUFFIXES)}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        # mmap fails on legacy (non-zip) files; they can still be read with weights_only.
        if "mmap" not in str(exc):
            raise _unreadable(path, exc) from exc
    except Exception as exc:  # pickle errors, truncated zips, refused globals
        raise _unreadable(path, exc) from exc
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} could not be read as a weights-only PyTorch checkpoint ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else ''}). The file may be truncated or corrupted "
        "(delete it and download it again), or it may contain pickled code, which is never executed here.")


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
# recognising architectures


@dataclass(frozen=True)
class Fingerprint:
    """How to recognise a family of checkpoints from its key names alone."""

    name: str
    description: str
    matches: Callable[[Sequence[str]], bool]


def _has_prefix(*prefixes: str) -> Callable[[Sequence[str]], bool]:
    return lambda keys: all(any(k.startswith(p) for k in keys) for p in prefixes)


FINGERPRINTS: list[Fingerprint] = [
    Fingerprint("pdfnet", "a PDFNet checkpoint (Swin-B encoder + FSE decoder)",
                _has_prefix("encoder.absolute_pos_embed", "decoder.FSE_mix.")),
    Fingerprint("depth_anything", "a Depth-Anything-V2 checkpoint (official layout)",
                _has_prefix("pretrained.patch_embed.", "depth_head.")),
    Fingerprint("depth_anything_hf", "a Depth-Anything-V2 checkpoint (transformers layout)",
                _has_prefix("backbone.embeddings.", "neck.", "head.")),
    Fingerprint("birefnet", "a BiRefNet checkpoint (Swin backbone 'bb.' + decoder)",
                _has_prefix("bb.patch_embed.", "decoder.")),
    Fingerprint("segrefiner", "a SegRefiner checkpoint (diffusion UNet 'denoise_model.')",
                _has_prefix("denoise_model.")),
    Fingerprint("stable_diffusion", "a Stable Diffusion / ComfyUI diffusion checkpoint",
                _has_prefix("model.diffusion_model.")),
    Fingerprint("vae", "a VAE checkpoint", _has_prefix("encoder.down.", "decoder.up.")),
    Fingerprint("clip_text", "a CLIP text encoder", _has_prefix("text_model.")),
]


def identify(keys: Iterable[str]) -> Fingerprint | None:
    """The first known family whose fingerprint matches these keys, or None."""
    keys = list(keys)
    return next((fp for fp in FINGERPRINTS if fp.matches(keys)), None)


def describe(keys: Iterable[str]) -> str:
    fp = identify(keys)
    if fp is not None:
        return fp.description
    keys = sorted(keys)
    roots = sorted({k.split(".")[0] for k in keys})
    return (f"an unknown model ({len(keys)} tensors; top-level names: "
            f"{', '.join(roots[:8])}{', ...' if len(roots) > 8 else ''})")


def require_family(state: Mapping[str, torch.Tensor], accepted: Sequence[str], wanted: str) -> str:
    """Refuse a checkpoint of another architecture before any key-by-key comparison.

    Returns the matched family name.  ``wanted`` is the human name used in the message.
    """
    fp = identify(state.keys())
    if fp is not None and fp.name in accepted:
        return fp.name
    raise CheckpointError(
        f"this is not {wanted}: the file looks like {describe(state.keys())}. "
        f"Choose {wanted} file in this loader, or use the loader for that model.")


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
# conversion

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def save_safetensors(state: Mapping[str, torch.Tensor], path, dtype: str = "fp32",
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write floating-point tensors in ``dtype`` (integer buffers keep theirs), atomically."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    target = DTYPES[dtype]
    out = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file(out, str(tmp), metadata=dict(metadata or {}))
    os.replace(tmp, path)
    return path
