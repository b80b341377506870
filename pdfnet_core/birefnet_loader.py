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

from .models.birefnet import VARIANTS, BiRefNet, BiRefNetConfig, EvalBatchNorm2d, check_patch_order
from .models.swin import relative_position_index
from .registry import lookup
from .weights import CheckpointError, IgnoreRule, load_checked, read_state_dict, require_family

log = logging.getLogger("pdfnet_core")

WANTED = "a BiRefNet checkpoint"
DEFAULT_PATCH_ORDER = "current"   # for files the registry does not know: the current official code's order
DEFAULT_TRAIN_HW = (1024, 1024)   # unknown files, and the dynamic variants (trained at 256-2304)

# torch.compile wraps the model as ``_orig_mod``; the official ``check_state_dict`` strips it too.
_WRAPPER_PREFIXES = ("_orig_mod.",)
_PROBE_EMBED = "bb.patch_embed.proj.weight"
_STAGE_BLOCK = re.compile(r"bb\.layers\.(\d+)\.blocks\.(\d+)\.")

TRAINING_HEADS = IgnoreRule(
    "training-only side-output and gradient-prediction heads (never used at inference)",
    pattern=r"decoder\.(conv_ms_spvn_[234]|gdt_convs_pred_[234]\.0)\.(weight|bias)")


def load_birefnet(source, patch_order: str | None = None, device="cpu", dtype: torch.dtype = torch.float32) -> BiRefNet:
    """Build BiRefNet for the checkpoint's backbone and load ``source`` strictly.

    ``source``: a .safetensors/.pth path or a state dict (fp32 or fp16; int64 buffers).
    ``patch_order``: "current" or "legacy"; None takes the registry's order for a known file name
    and "current" otherwise.  Every entry is accounted for: BatchNorm ``num_batches_tracked`` counters
    and the training-only heads are ignored by name (logged); ``relative_position_index`` is checked
    against the formula and recomputed when absent; anything else missing, unexpected or mis-shaped
    raises CheckpointError naming the keys.
    """
    entry = lookup(Path(os.fspath(source)).name) if not isinstance(source, Mapping) else None
    if entry is not None and entry.arch != "birefnet":
        raise CheckpointError(f"{entry.filename} is a {entry.arch} file, not {WANTED}; use the {entry.arch} loader")
    if patch_order is None:
        patch_order = entry.patch_order if entry is not None and entry.patch_order else DEFAULT_PATCH_ORDER
    check_patch_order(patch_order)

    state = _strip_wrappers(read_state_dict(source))
    require_family(state, ("birefnet",), WANTED)
    config = detect_variant(state)
    with torch.device("meta"):
        model = BiRefNet(config, patch_order=patch_order)
    _check_position_index(state, config)
    optional = [k for k in model.state_dict() if k.endswith("relative_position_index")]
    load_checked(model, state, f"{WANTED} ({config.name})", ignore=(TRAINING_HEADS, _batchnorm_counters(model)),
                 optional=optional)
    model.train_hw = tuple(entry.train_hw) if entry is not None and entry.train_hw else DEFAULT_TRAIN_HW
    model.eval().requires_grad_(False)
    log.info("loaded BiRefNet %s, patch order %s, trained at %dx%d", config.name, patch_order, *model.train_hw)
    return model.to(device=device, dtype=dtype)


def detect_variant(state: Mapping[str, torch.Tensor]) -> BiRefNetConfig:
    """The released variant whose embedding width and stage depths the checkpoint has."""
    if _PROBE_EMBED not in state:
        raise CheckpointError(f"the checkpoint has no {_PROBE_EMBED}; it is not a complete {WANTED}")
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


def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _batchnorm_counters(model: BiRefNet) -> IgnoreRule:
    """Exactly one ``num_batches_tracked`` per BatchNorm of the model: a training counter, unused in eval."""
    names = frozenset(f"{name}.num_batches_tracked" for name, module in model.named_modules()
                      if isinstance(module, EvalBatchNorm2d))
    return IgnoreRule("BatchNorm num_batches_tracked counters (training bookkeeping)", names=names)


def _check_position_index(state: Mapping[str, torch.Tensor], config: BiRefNetConfig) -> None:
    window = config.swin.window_size
    index = relative_position_index(window)
    for key, value in state.items():
        if key.endswith("relative_position_index") and (
                tuple(value.shape) != tuple(index.shape) or not torch.equal(value.long(), index)):
            raise CheckpointError(f"the checkpoint entry {key} is not the relative-position index of a "
                                  f"{window}x{window} window; the file is corrupted or belongs to another "
                                  "Swin configuration")
