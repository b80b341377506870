"""ImageNet Swin-B weights (``swin_base_patch4_window12_384``, 22k) for PDFNet's encoder.

The official training starts the encoder from the Microsoft Swin-B 384 checkpoint.  It exists in
two key layouts, both accepted here:
* Microsoft's (``swin_base_patch4_window12_384_22k.pth``): the patch merging closes stage i as
  ``layers.i.downsample``, as in our encoder;
* timm's (``timm/swin_base_patch4_window12_384.ms_in22k``): it opens stage i+1 as
  ``layers.{i+1}.downsample``, same tensors and channel order.
The classifier (``head``, ``norm``) and the per-size buffers (``attn_mask``,
``relative_position_index``, recomputed by our encoder) are dropped.  ``absolute_pos_embed`` and
the per-stage output norms ``norm0..3`` have no ImageNet counterpart; they keep their
initialisation, as in the official code.  Only the weights are reused: our blocks keep the
official pad-before-roll order that timm's own blocks do not follow.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from ..models.common.swin import SwinTransformer
from ..weights import CheckpointError, IgnoreRule, account_keys, raise_for_report, read_state_dict

log = logging.getLogger("pdfnet_core")

TIMM_PREFIX = "timm:"
DEFAULT_TIMM_NAME = "swin_base_patch4_window12_384.ms_in22k"
WANTED = "an ImageNet Swin checkpoint matching PDFNet's encoder"

_DROPPED = (
    IgnoreRule("ImageNet classifier", pattern=r"(head|norm)\..*"),
    IgnoreRule("per-size buffers recomputed by the encoder", pattern=r".*\.(attn_mask|relative_position_index)"),
)
# our encoder entries that ImageNet does not provide
_NOT_IN_IMAGENET = re.compile(r"absolute_pos_embed|norm\d+\..*|.*\.relative_position_index")
_DOWNSAMPLE = re.compile(r"layers\.(\d+)\.downsample\.(.*)")


def read_imagenet_swin(source: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file, or ``timm:<name>`` (downloaded by timm, which needs network access)."""
    text = str(source)
    if text.startswith(TIMM_PREFIX):
        import timm   # deferred: the optional extra pdfnet[train]

        name = text[len(TIMM_PREFIX):] or DEFAULT_TIMM_NAME
        model = timm.create_model(name, pretrained=True, num_classes=0)
        return {k: v.detach() for k, v in model.state_dict().items()}
    return read_state_dict(source)


def to_encoder_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm-layout state dict to the Microsoft/our layout (no-op for the Microsoft layout)."""
    timm_layout = any(k.startswith("layers.0.blocks.") for k in state) and \
        not any(k.startswith("layers.0.downsample.") for k in state) and \
        any(_DOWNSAMPLE.fullmatch(k) for k in state)
    if not timm_layout:
        return dict(state)
    out = {}
    for key, value in state.items():
        match = _DOWNSAMPLE.fullmatch(key)
        out[f"layers.{int(match[1]) - 1}.downsample.{match[2]}" if match else key] = value
    return out


def load_imagenet_swin(encoder: SwinTransformer, source: str | Path) -> list[str]:
    """Copy ImageNet weights into ``encoder`` after strict accounting; returns the entries left at init.

    Refuses a checkpoint of another Swin size (shapes differ) or one that misses any transferable entry.
    """
    state = to_encoder_keys(read_imagenet_swin(source))
    expected = {k: v.shape for k, v in encoder.state_dict().items()}
    transferable = {k: s for k, s in expected.items() if not _NOT_IN_IMAGENET.fullmatch(k)}
    report = account_keys(state, transferable, ignore=_DROPPED)
    try:
        raise_for_report(report, WANTED)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc} (PDFNet's encoder is Swin-B, window 12: "
                              "swin_base_patch4_window12_384)") from None
    encoder.load_state_dict({k: state[k] for k in transferable}, strict=False)
    left = sorted(set(expected) - set(transferable))
    log.info("loaded %d ImageNet Swin entries; %d keep their initialisation: %s", len(transferable), len(left),
             ", ".join(k for k in left if not k.endswith("relative_position_index")))
    return left
