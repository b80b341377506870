"""The SegRefiner family as the other layers see it."""
from __future__ import annotations

import torch

from ...registry import register_family
from ...specs import FamilySpec, LoaderOption, ModelEntry
from .loader import HR_PATCH_DTYPES, LAYOUTS, load_segrefiner
from .modes import SAMPLE_ACTIVATION, FreeBytes, free_bytes
from .refiner import SegRefiner

# MengyuWang826/SegRefiner (NeurIPS 2023) publishes its two checkpoints only as Google Drive links
# (no hub mirror), so these entries are manual-download only.  Sizes and hashes are not published.
_LICENCE = "Apache-2.0"
_NOTE = "the code repository MengyuWang826/SegRefiner's licence; the weights carry no explicit licence"

FILES = (
    ModelEntry("segrefiner_lr_latest.pth", "segrefiner", "lr", "", "segrefiner", _LICENCE,
               "SegRefiner LR (trained on LVIS): per-object refinement of instance masks",
               manual_url="https://drive.google.com/file/d/1FrhbdwNyTlQYNbF9IgFF2tY3iQXHFcau/view?usp=sharing",
               licence_note=_NOTE),
    ModelEntry("segrefiner_hr_latest.pth", "segrefiner", "hr", "", "segrefiner", _LICENCE,
               "SegRefiner HR (trained on ThinObject-5K + DIS-TR): high-resolution refinement of one mask",
               manual_url="https://drive.google.com/file/d/143kerk4WOerGZMqR-cAETb7rOcoQ0CQ_/view?usp=sharing",
               licence_note=_NOTE),
)


def work_size(model: SegRefiner, device: torch.device | str | None = None,
              free: FreeBytes = free_bytes) -> tuple[int, int]:
    """Its largest UNet call, (side, batch): a batch of 256² HR patches on ``device`` (default: where
    the weights are).  On the CPU the official batch_max, as before (the run itself takes one patch
    per call there); elsewhere the batch that fits in the free memory (``SegRefiner.hr_work_batch``),
    so a residency request does not ask for 32 patches' worth (10.7 GiB in fp32) on a small card."""
    cfg = model.hr_config
    target = model.placement()[0] if device is None else torch.device(device)
    if target.type == "cpu":
        return cfg.model_size, cfg.batch_max
    return cfg.model_size, model.hr_work_batch(target, free)


SPEC = register_family(FamilySpec(
    name="segrefiner",
    folder_key="segrefiner",
    module_type=SegRefiner,
    load=load_segrefiner,
    fingerprints=LAYOUTS,
    # per 256² sample, measured in a batch of 8 (HR patches run one per call on a CPU; elsewhere as
    # many as fit in free memory, up to 32): modes.SAMPLE_ACTIVATION, which sizes those batches too
    activation=SAMPLE_ACTIVATION,
    files=FILES,
    describe=lambda model: f"SegRefiner (UNet width {model.config.model_channels})",
    # its largest UNet call: a batch of 256² patches
    work_size=work_size,
    # fp32: the sampler thresholds the UNet's confidences (0.5 / fine_prob_thr) and parity with the
    # official run was only checked in fp32; lower precision is the user's explicit choice.
    auto_dtypes=(),
    options=(LoaderOption("hr_patches", tuple(HR_PATCH_DTYPES), "model", lambda choice, filename: choice),),
))
