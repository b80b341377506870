"""The SegRefiner family as the other layers see it."""
from __future__ import annotations

from ...registry import register_family
from ...specs import HOW_MEASURED, FamilySpec, LoaderOption, MeasuredActivation, ModelEntry
from .loader import HR_PATCH_DTYPES, LAYOUTS, load_segrefiner
from .refiner import SegRefiner

# MengyuWang826/SegRefiner (NeurIPS 2023) publishes its two checkpoints only as Google Drive links
# (no hub mirror), so these entries are manual-download only.  Sizes and hashes are not published.
_LICENCE = "Apache-2.0 code (MengyuWang826/SegRefiner); the weights carry no explicit licence"

FILES = (
    ModelEntry("segrefiner_lr_latest.pth", "segrefiner", "lr", "", "segrefiner", _LICENCE,
               "SegRefiner LR (trained on LVIS): per-object refinement of instance masks",
               manual_url="https://drive.google.com/file/d/1FrhbdwNyTlQYNbF9IgFF2tY3iQXHFcau/view?usp=sharing"),
    ModelEntry("segrefiner_hr_latest.pth", "segrefiner", "hr", "", "segrefiner", _LICENCE,
               "SegRefiner HR (trained on ThinObject-5K + DIS-TR): high-resolution refinement of one mask",
               manual_url="https://drive.google.com/file/d/143kerk4WOerGZMqR-cAETb7rOcoQ0CQ_/view?usp=sharing"),
)


SPEC = register_family(FamilySpec(
    name="segrefiner",
    folder_key="segrefiner",
    module_type=SegRefiner,
    load=load_segrefiner,
    fingerprints=LAYOUTS,
    # per 256² sample, measured in a batch of 8 (HR patches run one per call on a CPU, 32 on a GPU)
    activation=MeasuredActivation({None: {256: 342}}, HOW_MEASURED),
    files=FILES,
    describe=lambda model: f"SegRefiner (UNet width {model.config.model_channels})",
    # its largest UNet call: a batch of 256² patches
    work_size=lambda model: (model.hr_config.model_size, model.hr_config.batch_max),
    # fp32: the sampler thresholds the UNet's confidences (0.5 / fine_prob_thr) and parity with the
    # official run was only checked in fp32; lower precision is the user's explicit choice.
    auto_dtypes=(),
    options=(LoaderOption("hr_patches", tuple(HR_PATCH_DTYPES), "model", lambda choice, filename: choice),),
))
