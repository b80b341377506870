"""The BiRefNet family as the other layers see it."""
from __future__ import annotations

from ...registry import register_family
from ...specs import HOW_MEASURED, FamilySpec, InputContract, LoaderOption, MeasuredActivation, ModelEntry
from .loader import LAYOUTS, load_birefnet, resolve_patch_order
from .net import PATCH_ORDERS, SIZE_MULTIPLE, VARIANTS, BiRefNet

_LICENCE = "MIT (ZhengPeng7/BiRefNet code and model cards)"

# Every ZhengPeng7 repository holds its weights as ``model.safetensors``; the local name is the
# repository name (lldacing and 1038lab also name files after the variant).  Patch order, from the
# release dates in the official README: weights released before the order change of 2024-11-05
# (commit 5198d3f) were trained with the legacy order; BiRefNet_HR (2025-02-01), _HR-matting
# (2025-02-12) and _dynamic (2025-03-31) with the current one.  Where no release date is documented
# the order is left unknown (None: the loader then uses "current" and the user can override it).
# No real checkpoint was available to confirm any of these.  The dynamic variants have no single
# training size (None).
_REPOS = (
    # repo, backbone, (train height, width), patch order, description
    ("BiRefNet", "swin_v1_l", (1024, 1024), "legacy", "general use (DIS, HRSOD, COD and more), 1024x1024"),
    ("BiRefNet_HR", "swin_v1_l", (2048, 2048), "current", "general use, trained at 2048x2048 (high-resolution images)"),
    ("BiRefNet_HR-matting", "swin_v1_l", (2048, 2048), "current", "general matting, trained at 2048x2048"),
    ("BiRefNet_dynamic", "swin_v1_l", None, "current",
     "general use, trained at dynamic resolutions 256-2304: run near the image's own size (multiples of 32)"),
    ("BiRefNet_dynamic-matting", "swin_v1_l", None, None,
     "general matting, dynamic resolutions: run near the image's own size (multiples of 32)"),
    ("BiRefNet_512x512", "swin_v1_l", (512, 512), None, "general use at 512x512"),
    ("BiRefNet-portrait", "swin_v1_l", (1024, 1024), "legacy", "portrait segmentation"),
    ("BiRefNet-matting", "swin_v1_l", (1024, 1024), "legacy", "general trimap-free matting"),
    ("BiRefNet-DIS5K", "swin_v1_l", (1024, 1024), "legacy", "the paper's DIS model (trained on DIS5K-TR)"),
    ("BiRefNet-DIS5K-TR_TEs", "swin_v1_l", (1024, 1024), "legacy", "DIS, trained on DIS5K-TR and the test sets"),
    ("BiRefNet-HRSOD", "swin_v1_l", (1024, 1024), "legacy", "high-resolution salient object detection (paper)"),
    ("BiRefNet-COD", "swin_v1_l", (1024, 1024), "legacy", "camouflaged object detection (paper)"),
    ("BiRefNet-legacy", "swin_v1_l", (1024, 1024), "legacy", "the first general-use release"),
    ("BiRefNet_lite", "swin_v1_t", (1024, 1024), "legacy", "Swin-T: faster, lighter general use, 1024x1024"),
    ("BiRefNet_lite-2K", "swin_v1_t", (1440, 2560), "legacy", "Swin-T general use at 2560x1440 (width x height)"),
    ("BiRefNet_lite-matting", "swin_v1_t", (1024, 1024), None, "Swin-T general matting"),
)

FILES = tuple(
    ModelEntry(f"{repo}.safetensors", "birefnet", variant, f"ZhengPeng7/{repo}", "birefnet", _LICENCE,
               f"BiRefNet ({'Swin-L' if variant == 'swin_v1_l' else 'Swin-T'}): {description}",
               hf_filename="model.safetensors", train_hw=train_hw, patch_order=order)
    for repo, variant, train_hw, order, description in _REPOS)

if set(PATCH_ORDERS) != {"legacy", "current"}:
    raise ValueError(f"BiRefNet patch orders changed: {sorted(PATCH_ORDERS)}; update the loader option")
for _entry in FILES:
    if _entry.patch_order is not None and _entry.patch_order not in PATCH_ORDERS:
        raise ValueError(f"registry entry {_entry.filename!r}: unknown patch order {_entry.patch_order!r}")


def _describe(model: BiRefNet) -> str:
    return f"BiRefNet {model.config.name} ({model.patch_order} patch order)"


SPEC = register_family(FamilySpec(
    name="birefnet",
    folder_key="birefnet",
    module_type=BiRefNet,
    load=load_birefnet,
    fingerprints=LAYOUTS,
    # measured for Swin-T and Swin-L; the other backbones take the larger of the two
    activation=MeasuredActivation({"swin_v1_t": {512: 260, 1024: 718}, "swin_v1_l": {512: 324, 1024: 915}},
                                  HOW_MEASURED),
    inputs=InputContract(size_multiple=SIZE_MULTIPLE),
    files=FILES,
    variants=tuple(VARIANTS),
    variant_of=lambda model: model.config.name,
    describe=_describe,
    # the widget lists the older order first, as the loader node always has
    options=(LoaderOption("patch_order", ("auto", "legacy", "current"), "auto", resolve_patch_order),),
    segment=lambda model, image, depth: model(image),
))
