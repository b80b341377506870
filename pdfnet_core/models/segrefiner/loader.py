"""``load_segrefiner``: the official SegRefiner checkpoints (``segrefiner_lr_latest.pth``,
``segrefiner_hr_latest.pth``) as they are, or their safetensors conversion."""
from __future__ import annotations

import dataclasses
import logging

import torch

from ...fingerprints import SEGREFINER
from ...weights import CheckpointError, IgnoreRule, load_family
from .refiner import SegRefiner
from .unet import SegRefinerUNetConfig

log = logging.getLogger("pdfnet_core")

# The checkpoint layouts this loader reads.
LAYOUTS = (SEGREFINER,)

_WIDTH_KEY = "denoise_model.input_blocks.0.0.weight"

IGNORED = (
    # The fixed Sobel kernels of the training-only TextureL1Loss are nn.Conv2d parameters, so mmcv
    # saved them with the weights.  Inference never uses them.  Exactly these two names are accepted.
    IgnoreRule("Sobel kernels of the training-only TextureL1Loss",
               names=frozenset({"loss_texture.sobel.conv_x.weight", "loss_texture.sobel.conv_y.weight"})),
)


def config_from_state(state) -> SegRefinerUNetConfig:
    """The UNet width is read from the file (official: 128; the narrow test variant: 32)."""
    first = state.get(_WIDTH_KEY)
    if first is None or first.ndim != 4:
        raise CheckpointError(f"the checkpoint has no usable {_WIDTH_KEY}; it is not a complete SegRefiner file")
    width = int(first.shape[0])
    groups = SegRefinerUNetConfig.groups
    if width < groups or width % groups:
        raise CheckpointError(f"the checkpoint's UNet width {width} is not a multiple of {groups} "
                              "(GroupNorm groups); the file is not a SegRefiner UNet")
    return dataclasses.replace(SegRefinerUNetConfig(), model_channels=width)


# HR patch precision choices: "model" runs the patches in the weights' own dtype.
HR_PATCH_DTYPES = {"model": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_segrefiner(source, device="cpu", dtype: torch.dtype = torch.float32, hr_patches: str = "model") -> SegRefiner:
    """Build SegRefiner and load ``source`` (a .pth/.safetensors path or a state dict) strictly.

    ``hr_patches`` ("model", "bf16", "fp16"): the precision of HR mode's full-resolution patch
    pass (``HRConfig.patch_dtype``); the global pass, which picks the patches, keeps ``dtype``.

    The mmcv wrapper ``{'meta', 'state_dict', 'optimizer'}`` is unwrapped and the optimizer state
    dropped (``read_state_dict``); the two training-loss Sobel kernels are ignored (logged);
    anything else missing, unexpected or mis-shaped raises CheckpointError naming the keys.
    """
    if hr_patches not in HR_PATCH_DTYPES:
        raise ValueError(f"hr_patches must be one of {', '.join(HR_PATCH_DTYPES)}; got {hr_patches!r}")
    model = load_family(source, LAYOUTS, lambda state: SegRefiner(config_from_state(state)), device=device, dtype=dtype,
                        ignore=IGNORED)
    model.hr_config = dataclasses.replace(model.hr_config, patch_dtype=HR_PATCH_DTYPES[hr_patches])
    return model
