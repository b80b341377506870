"""``load_pdfnet``: the official PDFNet checkpoints (``PDFNet_Best.pth``, ``PDF-Generally.pth``) as they are."""
from __future__ import annotations

import json
import logging
from importlib import resources

import torch

from .models.pdfnet import PDFNet, PDFNetConfig
from .models.swin import relative_position_index
from .weights import CheckpointError, IgnoreRule, load_checked, read_state_dict, require_family

log = logging.getLogger("pdfnet_core")

WANTED = "a PDFNet checkpoint"


def _stale_depth_decoder_keys() -> frozenset[str]:
    text = resources.files("pdfnet_core").joinpath("data/pdfnet_stale_depth_decoder_keys.json").read_text()
    return frozenset(json.loads(text))


IGNORED = (
    # The released PDFNet_Best.pth carries an auxiliary depth head of an older code revision
    # (training-only, shape-incompatible with the published code).  Exactly these names are accepted.
    IgnoreRule("training-only depth_decoder head of an older PDFNet revision", names=_stale_depth_decoder_keys()),
)
# Constants of the model that a file may omit: they are recomputed, and checked when present.
_CONSTANT_SUFFIXES = ("relative_position_index", "IntegrityPriorLoss.sobel_x.weight", "IntegrityPriorLoss.sobel_y.weight")


def load_pdfnet(source, device="cpu", dtype: torch.dtype = torch.float32,
                config: PDFNetConfig | None = None) -> PDFNet:
    """Build PDFNet and load ``source`` (a .pth/.safetensors path or a state dict) strictly.

    Every entry is accounted for: the 42 stale ``depth_decoder.*`` entries of the released
    checkpoint are ignored (logged); the fixed Sobel kernels of the training loss are kept as
    constants; anything else missing, unexpected or mis-shaped raises CheckpointError naming the keys.
    """
    state = read_state_dict(source)
    require_family(state, ("pdfnet",), WANTED)
    with torch.device("meta"):
        model = PDFNet(config)
    optional = [k for k in model.state_dict() if k.endswith(_CONSTANT_SUFFIXES)]
    _check_constants(state, model)
    load_checked(model, _without_training_constants(state), WANTED, ignore=IGNORED, optional=optional)
    model.eval().requires_grad_(False)
    # Channels-last convolution weights: 1.5x faster 3x3 convolutions on this CPU (and the layout
    # tensor cores want); only the memory order changes, not the numbers.
    return model.to(device=device, dtype=dtype, memory_format=torch.channels_last)


def _without_training_constants(state):
    return {k: v for k, v in state.items() if not k.startswith("IntegrityPriorLoss.")}


def _check_constants(state, model: PDFNet) -> None:
    """A stored relative-position index must be the formula's; the Sobel kernels are training-only."""
    index = None
    for key, value in state.items():
        if key.endswith("relative_position_index"):
            if index is None:
                index = relative_position_index(model.config.swin.window_size)
            if tuple(value.shape) != tuple(index.shape) or not torch.equal(value.long(), index):
                raise CheckpointError(f"the checkpoint entry {key} is not the relative-position index of a "
                                      f"{model.config.swin.window_size}x{model.config.swin.window_size} window; "
                                      "the file is corrupted or belongs to another Swin configuration")
    sobel = [k for k in state if k.startswith("IntegrityPriorLoss.")]
    if sobel:
        log.info("ignoring %d training-loss constants: %s", len(sobel), ", ".join(sorted(sobel)))
