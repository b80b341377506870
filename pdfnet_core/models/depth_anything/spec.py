"""The Depth-Anything-V2 family as the other layers see it."""
from __future__ import annotations

from ...registry import register_family
from ...specs import HOW_MEASURED, FamilySpec, InputContract, MeasuredActivation, ModelEntry
from .loader import LAYOUTS, load_depth_anything
from .net import CONFIGS, PATCH_SIZE, DepthAnythingV2

_SIZE_NAMES = {"vits": "Small", "vitb": "Base", "vitl": "Large"}
# The official fp32 .pth files as the hub lists them (99.2 MB, 390 MB, 1.34 GB), for listings only.
_FP32_BYTES = {"vits": 99_200_000, "vitb": 390_000_000, "vitl": 1_340_000_000}


def _files() -> tuple[ModelEntry, ...]:
    # Kijai's safetensors are conversions of the official weights, so they carry their licence.
    entries = []
    for variant, size_name in _SIZE_NAMES.items():
        licence = CONFIGS[variant].licence
        entries.append(ModelEntry(
            f"depth_anything_v2_{variant}.pth", "depth_anything", variant,
            f"depth-anything/Depth-Anything-V2-{size_name}", "depthanything", licence,
            f"Depth-Anything-V2 {size_name} ({variant}), official PyTorch checkpoint",
            approx_bytes=_FP32_BYTES[variant]))
        for precision in ("fp16", "fp32"):
            entries.append(ModelEntry(
                f"depth_anything_v2_{variant}_{precision}.safetensors", "depth_anything", variant,
                "Kijai/DepthAnythingV2-safetensors", "depthanything", licence,
                f"Depth-Anything-V2 {size_name} ({variant}), {precision} safetensors conversion",
                licence_note="a conversion of the official weights, under their licence",
                approx_bytes=_FP32_BYTES[variant] // (2 if precision == "fp16" else 1)))
    return tuple(entries)


SPEC = register_family(FamilySpec(
    name="depth_anything",
    # the folder name other depth packs already use, so users keep one copy of these weights
    folder_key="depthanything",
    module_type=DepthAnythingV2,
    load=load_depth_anything,
    fingerprints=LAYOUTS,
    activation=MeasuredActivation({"vits": {518: 189, 1036: 690}, "vitb": {518: 251, 1036: 1040},
                                   "vitl": {518: 407, 1036: 1740}}, HOW_MEASURED),
    inputs=InputContract(size_multiple=PATCH_SIZE),
    files=_files(),
    # Small: the only size under a permissive licence (Apache-2.0); see README.
    default_file="depth_anything_v2_vits.pth",
    variants=tuple(CONFIGS),
    variant_of=lambda model: model.config.variant,
    describe=lambda model: f"Depth-Anything-V2 {model.config.variant}",
))
