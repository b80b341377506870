"""``load_birefnet``: the released BiRefNet checkpoints (HF ``model.safetensors``, GitHub/GDrive ``.pth``) as they are.

The backbone variant is read from the key shapes; the patch-channel order and the training
resolution cannot be, so they come from the registry entry of a known file name (or the caller).
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ...fingerprints import BIREFNET
from ...registry import lookup
from ...weights import CheckpointError, IgnoreRule, check_constant, load_family
from ..common.swin import relative_position_index
from .net import VARIANTS, BiRefNet, BiRefNetConfig, EvalBatchNorm2d, check_patch_order

log = logging.getLogger("pdfnet_core")

# The checkpoint layouts this loader reads.
LAYOUTS = (BIREFNET,)

DEFAULT_PATCH_ORDER = "current"   # for files the registry does not know: the current official code's order
DEFAULT_TRAIN_HW = (1024, 1024)   # unknown files, and the dynamic variants (trained at 256-2304)
AUTO = "auto"

_PROBE_EMBED = "bb.patch_embed.proj.weight"
_STAGE_BLOCK = re.compile(r"bb\.layers\.(\d+)\.blocks\.(\d+)\.")

TRAINING_HEADS = IgnoreRule(
    "training-only side-output and gradient-prediction heads (never used at inference)",
    pattern=r"decoder\.(conv_ms_spvn_[234]|gdt_convs_pred_[234]\.0)\.(weight|bias)")


def _known_entry(filename: str | None):
    entry = lookup(filename) if filename else None
    return entry if entry is not None and entry.arch == "birefnet" else None


def resolve_patch_order(choice: str | None, filename: str | None) -> str:
    """"legacy" or "current" for a choice ("auto"/None: the registry's order for a known file name,
    else DEFAULT_PATCH_ORDER).  The checkpoint itself cannot tell."""
    if choice in (None, AUTO):
        entry = _known_entry(filename)
        return entry.patch_order if entry is not None and entry.patch_order else DEFAULT_PATCH_ORDER
    return check_patch_order(choice)


def load_birefnet(source, patch_order: str | None = None, device="cpu", dtype: torch.dtype = torch.float32) -> BiRefNet:
    """Build BiRefNet for the checkpoint's backbone and load ``source`` strictly.

    ``source``: a .safetensors/.pth path or a state dict (fp32 or fp16; int64 buffers).
    ``patch_order``: "current" or "legacy"; None (or "auto") takes the registry's order for a known
    file name and "current" otherwise.  Every entry is accounted for: BatchNorm
    ``num_batches_tracked`` counters and the training-only heads are ignored by name (logged);
    ``relative_position_index`` is checked against the formula and recomputed when absent; anything
    else missing, unexpected or mis-shaped raises CheckpointError naming the keys.
    """
    filename = None if isinstance(source, Mapping) else Path(os.fspath(source)).name
    entry = _known_entry(filename)
    if filename is not None and entry is None:
        other = lookup(filename)
        if other is not None:
            raise CheckpointError(f"{other.filename} is a {other.arch} file, not {BIREFNET.wanted}; "
                                  f"use the {other.arch} loader")
    patch_order = resolve_patch_order(patch_order, filename)
    configs: list[BiRefNetConfig] = []

    def prepare(state, layout):
        config = detect_variant(state)
        window = config.swin.window_size
        check_constant(state, "relative_position_index", relative_position_index(window),
                       f"the relative-position index of a {window}x{window} window")
        configs.append(config)
        return state

    model = load_family(source, LAYOUTS, lambda state: BiRefNet(configs[0], patch_order=patch_order),
                        device=device, dtype=dtype, prepare=prepare,
                        ignore=lambda built: (TRAINING_HEADS, _batchnorm_counters(built)),
                        optional_suffixes=("relative_position_index",))
    model.train_hw = tuple(entry.train_hw) if entry is not None and entry.train_hw else DEFAULT_TRAIN_HW
    model.dynamic_sides = entry.dynamic_sides if entry is not None else None
    log.info("loaded BiRefNet %s, patch order %s, trained at %dx%d", model.config.name, patch_order, *model.train_hw)
    return model


def _batchnorm_counters(model: BiRefNet) -> IgnoreRule:
    """Exactly one ``num_batches_tracked`` per BatchNorm of the model: a training counter, unused in eval."""
    names = frozenset(f"{name}.num_batches_tracked" for name, module in model.named_modules()
                      if isinstance(module, EvalBatchNorm2d))
    return IgnoreRule("BatchNorm num_batches_tracked counters (training bookkeeping)", names=names)
def detect_variant(state: Mapping[str, torch.Tensor]) -> BiRefNetConfig:
    """The released variant whose embedding width and stage depths the checkpoint has."""
    if _PROBE_EMBED not in state:
        raise CheckpointError(f"the checkpoint has no {_PROBE_EMBED}; it is not a complete BiRefNet checkpoint")
    embed = int(state[_PROBE_EMBED].shape[0])
    depths = _stage_depths(state)
    for config in VARIANTS.values():
        if config.swin.embed_dim == embed and config.swin.depths == depths:
            return config
    known = "; ".join(f"{c.name}: embed {c.swin.embed_dim}, depths {c.swin.depths}" for c in VARIANTS.values())
    raise CheckpointError(
        f"this BiRefNet checkpoint has a Swin backbone with embed {embed} and depths {depths}, which no released "
        f"BiRefNet uses (Swin-S/Swin-B/PVT builds are not supported). Supported: {known}.")


def _stage_depths(state: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    blocks: dict[int, int] = {}
    for key in state:
        m = _STAGE_BLOCK.match(key)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    return tuple(blocks[i] for i in sorted(blocks))
