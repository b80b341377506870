"""``load_pdfnet``: the official PDFNet checkpoints (``PDFNet_Best.pth``, ``PDF-Generally.pth``) as they are."""
from __future__ import annotations

import dataclasses
import json
import logging
from importlib import resources

import torch

from ...fingerprints import PDFNET
from ...weights import IgnoreRule, check_constant, load_family
from ..common.swin import relative_position_index
from .net import PDFNet, PDFNetConfig
from .revision import check_request, resolve_revision, source_facts

log = logging.getLogger("pdfnet_core")

# The checkpoint layouts this loader reads.
LAYOUTS = (PDFNET,)


def _stale_depth_decoder_keys() -> frozenset[str]:
    text = resources.files(__package__).joinpath("stale_depth_decoder_keys.json").read_text()
    return frozenset(json.loads(text))


IGNORED = (
    # Both code revisions train an auxiliary depth head that inference never runs; the released
    # PDFNet_Best.pth carries the first revision's.  The two layouts share these names (five shapes
    # differ, which revision.py reads as evidence), so exactly these names are accepted.
    IgnoreRule("training-only depth_decoder head", names=_stale_depth_decoder_keys()),
)
# Constants of the model that a file may omit: they are recomputed, and checked when present.
_CONSTANT_SUFFIXES = ("relative_position_index", "IntegrityPriorLoss.sobel_x.weight", "IntegrityPriorLoss.sobel_y.weight")
# The Sobel kernels of the training loss: fixed, so never read from a file.
_TRAINING_CONSTANTS = "IntegrityPriorLoss."


def load_pdfnet(source, device="cpu", dtype: torch.dtype = torch.float32,
                config: PDFNetConfig | None = None, revision: str = "auto") -> PDFNet:
    """Build PDFNet and load ``source`` (a .pth/.safetensors path or a state dict) strictly.

    Every entry is accounted for: the 42 stale ``depth_decoder.*`` entries of the released
    checkpoint are ignored (logged); the fixed Sobel kernels of the training loss are kept as
    constants; anything else missing, unexpected or mis-shaped raises CheckpointError naming the keys.

    ``revision``: the official code revision whose formulas run, "v1" (802b477, which saved the
    released checkpoints) or "v2" (the current code); "auto" decides from the checkpoint's own
    evidence and logs why (revision.py), falling back to ``config.revision`` (default v2) with a
    warning when the checkpoint shows nothing.  The chosen revision replaces ``config.revision``.
    """
    check_request(revision)
    filename, metadata = source_facts(source)
    cfg = config or PDFNetConfig()
    window = cfg.swin.window_size
    chosen: dict[str, str] = {}

    def prepare(state, layout):
        chosen["revision"], _ = resolve_revision(state, revision, filename, metadata, fallback=cfg.revision)
        check_constant(state, "relative_position_index", relative_position_index(window),
                       f"the relative-position index of a {window}x{window} window")
        sobel = sorted(k for k in state if k.startswith(_TRAINING_CONSTANTS))
        if sobel:
            log.info("ignoring %d training-loss constants: %s", len(sobel), ", ".join(sobel))
        return {k: v for k, v in state.items() if not k.startswith(_TRAINING_CONSTANTS)}

    def build(state) -> PDFNet:
        return PDFNet(dataclasses.replace(cfg, revision=chosen["revision"]))

    # Channels-last convolution weights: 1.5x faster 3x3 convolutions on this CPU (and the layout
    # tensor cores want); only the memory order changes, not the numbers.
    return load_family(source, LAYOUTS, build, device=device, dtype=dtype, prepare=prepare, ignore=IGNORED,
                       optional_suffixes=_CONSTANT_SUFFIXES, memory_format=torch.channels_last)
