"""Typed training configuration: defaults from the paper, read from JSON and/or command-line flags."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..models.pdfnet.net import REVISIONS, PDFNetConfig

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.5              # probability of a horizontal flip (image, mask and depth together)
    crop: float = 0.5               # probability of a random crop, resized back to the network size
    crop_min_scale: float = 0.97    # smallest crop side as a fraction (official: up to 30 px of 1024)

    def validate(self) -> None:
        for name in ("hflip", "crop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} is a probability in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.crop_min_scale <= 1.0:
            raise ValueError(f"augment.crop_min_scale must be in (0, 1], got {self.crop_min_scale}")


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run.  Defaults follow the paper: AdamW lr 1e-5, wd 1e-4, cosine, 100 epochs,
    batch 1 at 1024."""

    train_dirs: tuple[Path, ...]
    out_dir: Path
    val_dirs: tuple[Path, ...] = ()
    # where the weights start: a released PDFNet checkpoint, or an ImageNet Swin-B for the encoder
    # (a timm or Microsoft .pth/.safetensors file, or "timm:<model name>" to let timm fetch it);
    # neither: random initialisation
    init: Path | None = None
    swin_imagenet: str | None = None
    resume: Path | None = None      # a training checkpoint (checkpoints/last.pt) to continue from
    # official formulas (and depth-head layout) to train with: "v1" (the released checkpoints'),
    # "v2" (the current code), or "auto": what the init checkpoint shows, else model.revision
    revision: str = "auto"
    model: PDFNetConfig = field(default_factory=PDFNetConfig)
    size: int = 1024
    batch_size: int = 1
    epochs: int = 100
    max_steps: int | None = None    # optimizer updates; the cosine schedule spans this many when set
    lr: float = 1e-5
    min_lr: float = 1e-7
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    grad_accum: int = 1
    clip_grad: float | None = None
    precision: str = "auto"         # auto: bf16 (or fp16) autocast on CUDA, float32 elsewhere
    ema_decay: float | None = None  # keep an exponential moving average of the weights (saved as the model)
    seed: int = 0
    val_every: int = 500            # optimizer updates between validations (and at the end)
    save_every: int = 500           # optimizer updates between resumable checkpoints (and at the end)
    per_item_losses: bool = False   # per-item integrity/SiLog statistics instead of the official batch-wide ones
    save_depth_head: bool = True    # also store the auxiliary head as depth_decoder.* in the saved model
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    depth_weights: Path | None = None   # Depth-Anything-V2 for images without depth/ (default: Small)
    depth_cache: Path | None = None     # where computed depth maps are kept (default: OUT/depth_cache)
    models_dir: Path | None = None
    download: bool = False
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True

    def validate(self) -> None:
        if not self.train_dirs:
            raise ValueError("no training folder given")
        if self.size < 32 or self.size % 32:
            raise ValueError(f"size must be a positive multiple of 32 (PDFNet was trained at 1024), got {self.size}")
        for name in ("batch_size", "epochs", "grad_accum", "val_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.lr <= 0 or self.min_lr < 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("lr must be positive; min_lr, weight_decay and warmup_steps non-negative")
        if self.revision not in ("auto",) + REVISIONS:
            raise ValueError(f"revision must be auto, {' or '.join(REVISIONS)}, got {self.revision!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.init is not None and self.swin_imagenet is not None:
            raise ValueError("give either init (a PDFNet checkpoint to fine-tune) or swin_imagenet "
                             "(an ImageNet Swin-B to train from), not both")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        self.augment.validate()


# --------------------------------------------------------------------------------------------
# dict / JSON conversion (nested dataclasses, paths and tuples)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected an object with the fields of {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        items = [value] if isinstance(value, (str, Path)) else list(value)
        item_type = typing.get_args(tp)[0]
        return tuple(_convert(item_type, v, f"{where}[{i}]") for i, v in enumerate(items))
    if tp is Path:
        return Path(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, values: Mapping[str, Any], where: str = "config"):
    """Build dataclass ``cls`` from plain values; unknown names are an error that lists the known ones."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return cls(**{k: _convert(hints[k], v, f"{where}.{k}") for k, v in values.items()})


def to_dict(obj: Any) -> Any:
    """Plain JSON-able values (paths as strings, tuples as lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_config(path: Path | None, overrides: Mapping[str, Any]) -> TrainConfig:
    """A JSON file (optional) with ``overrides`` on top; paths in the file are relative to the file."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(values, dict):
            raise ValueError(f"{path}: the configuration must be a JSON object")
        values = _relative_to(values, Path(path).parent)
    values = _merged(values, overrides)
    missing = [k for k in ("train_dirs", "out_dir") if k not in values]
    if missing:
        raise ValueError(f"missing required setting(s): {', '.join(missing)}")
    config = from_dict(TrainConfig, values)
    config.validate()
    return config


def _merged(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``; nested settings (augment, model) are merged field by field."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


_PATH_KEYS = ("train_dirs", "val_dirs", "out_dir", "init", "resume", "depth_weights", "depth_cache", "models_dir")


def _relative_to(values: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(values)
    for key in _PATH_KEYS:
        if key not in out or out[key] is None:
            continue
        if isinstance(out[key], list):
            out[key] = [str(base / v) for v in out[key]]
        else:
            out[key] = str(base / out[key])
    return out
