"""The BiRefNet family as the other layers see it."""
from __future__ import annotations

import re
from functools import lru_cache

import torch

from ...registry import register_family
from ...specs import HOW_MEASURED, FamilySpec, InputContract, LoaderOption, MeasuredActivation, ModelEntry
from .deform_conv import default_backend, torchvision_dtype
from .loader import LAYOUTS, load_birefnet, resolve_patch_order
from .net import PATCH_ORDERS, SIZE_MULTIPLE, VARIANTS, BiRefNet, DeformableConv2d

_LICENCE = "MIT"   # ZhengPeng7/BiRefNet code and model cards
# fp32 files as the hub lists them (shared/reference/birefnet/NOTES.md A2), for listings only
_BYTES = {"swin_v1_l": 885_000_000, "swin_v1_t": 177_634_392}
# BiRefNet_dynamic(-matting): trained at every side from 256 to 2304 (official README)
DYNAMIC_SIDES = (256, 2304)

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

_OFFICIAL = tuple(
    ModelEntry(f"{repo}.safetensors", "birefnet", variant, f"ZhengPeng7/{repo}", "birefnet", _LICENCE,
               f"BiRefNet ({'Swin-L' if variant == 'swin_v1_l' else 'Swin-T'}): {description}",
               hf_filename="model.safetensors", train_hw=train_hw, patch_order=order, approx_bytes=_BYTES[variant],
               dynamic_sides=DYNAMIC_SIDES if repo.startswith("BiRefNet_dynamic") else None)
    for repo, variant, train_hw, order, description in _REPOS)

# Fine-tunes and copies of the same architecture, from their release pages.  The patch order of a
# fine-tune is the order of the code it was trained with; where a page does not say it, what is
# written here is inferred (see each comment), and the loader's patch_order input overrides it.
_OTHERS = (
    # ToonOut (Kartoon AI, arXiv 2509.06839): ZhengPeng7/BiRefNet fine-tuned on 1,228 anime images at
    # 1024, code and weights MIT (github MatteoKartoon/BiRefNet).  The fork is of the 2025 official code,
    # which cuts patches in the current (einops) order; not confirmed on the weights.  The .pth keys
    # carry a "module._orig_mod." prefix (DDP + torch.compile), which the reader strips.
    ModelEntry("birefnet_finetuned_toonout.pth", "birefnet", "swin_v1_l", "joelseytre/toonout", "birefnet",
               "MIT", "ToonOut (BiRefNet Swin-L fine-tuned for anime characters and objects), 1024x1024",
               train_hw=(1024, 1024), patch_order="current", approx_bytes=_BYTES["swin_v1_l"]),
    # Lucida (egeorcun/lucida, MIT): BiRefNet_HR fine-tuned for glass, camouflage, text, glow/VFX and
    # line art; its own benchmark runs it at 1024 (bgr/registry.py), and its ComfyUI weight-folding script
    # documents the current patch layout ('b c (hg h) (wg w) -> b (c hg wg) h w').  Taken from
    # Comfy-Org/BiRefNet, which holds it byte-identical to the author's export under this name (so core's
    # models/background_removal/lucida.safetensors is recognised too).
    ModelEntry("lucida.safetensors", "birefnet", "swin_v1_l", "Comfy-Org/BiRefNet", "birefnet", "MIT",
               "Lucida (BiRefNet_HR fine-tuned for glass, camouflage, text, glow/VFX and illustrations), 1024x1024",
               train_hw=(1024, 1024), patch_order="current", approx_bytes=_BYTES["swin_v1_l"],
               licence_note="the author's release, egeorcun/lucida"),
    # ComfyUI core's own copy of ZhengPeng7/BiRefNet (models/background_removal/birefnet.safetensors),
    # byte-identical to the hub export; core runs it in the legacy order.
    ModelEntry("birefnet.safetensors", "birefnet", "swin_v1_l", "Comfy-Org/BiRefNet", "birefnet", _LICENCE,
               "ComfyUI core's copy of BiRefNet (general use, 1024x1024), as in models/background_removal",
               train_hw=(1024, 1024), patch_order="legacy", approx_bytes=_BYTES["swin_v1_l"]),
    # RMBG-2.0 (BRIA): BiRefNet Swin-L trained by BRIA, legacy order, 1024.  Gated and non-commercial:
    # never downloaded here; users accept the terms on the page and bring the file.
    ModelEntry("RMBG-2.0.safetensors", "birefnet", "swin_v1_l", "", "birefnet", "CC-BY-NC-4.0",
               "RMBG-2.0 (BRIA; BiRefNet Swin-L), 1024x1024: bring your own file",
               train_hw=(1024, 1024), patch_order="legacy", approx_bytes=_BYTES["swin_v1_l"],
               manual_url="https://huggingface.co/briaai/RMBG-2.0",
               licence_note="BRIA's RMBG-2.0 terms; commercial use needs an agreement with BRIA. Gated: accept the "
                            "terms on the page, download model.safetensors and save it as RMBG-2.0.safetensors"),
)
FILES = _OFFICIAL + _OTHERS

if set(PATCH_ORDERS) != {"legacy", "current"}:
    raise ValueError(f"BiRefNet patch orders changed: {sorted(PATCH_ORDERS)}; update the loader option")
for _entry in FILES:
    if _entry.patch_order is not None and _entry.patch_order not in PATCH_ORDERS:
        raise ValueError(f"registry entry {_entry.filename!r}: unknown patch order {_entry.patch_order!r}")


# --------------------------------------------------------------------------------------------
# memory off the CPU: torchvision's deformable-convolution columns
#
# The activation tables were measured on the CPU, where the pure-torch deformable convolution samples
# in chunks of at most deform_conv._COLUMN_BUDGET elements.  torchvision's kernel (the default off the
# CPU) allocates the whole im2col buffer at once: ``columns`` of (C_in*k_h*k_w) x (n*H_out*W_out)
# elements for n = the largest divisor of the batch up to 32 images (kMaxParallelImgs), in the dtype
# it computes in.  The largest is decoder_block1's 7x7 branch on the x1 map (64 channels at a quarter
# of the input side): 196*H*W elements per image, about 0.8 GB in fp32 at 1024^2.

_DECODER_BLOCK = re.compile(r"decoder\.decoder_block(\d)\.")


def _level(name: str) -> int:
    """The feature level (1..4: x1..x4) that the block holding module ``name`` runs on: the squeeze
    block on x4, ``decoder_block{k}`` on x{k} (BiRefNet.forward, Decoder.forward)."""
    if name.startswith("squeeze_module."):
        return 4
    found = _DECODER_BLOCK.match(name)
    if found is None:
        raise ValueError(f"BiRefNet: no feature level known for the deformable convolution {name!r}")
    return int(found.group(1))


@lru_cache(maxsize=None)
def deform_layers(variant: str) -> tuple[tuple[int, int, int], ...]:
    """(stride of its map, input channels, kernel taps) of every deformable convolution of a variant,
    read off its module tree (built once on the meta device)."""
    config = VARIANTS[variant]
    with torch.device("meta"):
        model = BiRefNet(config)
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, DeformableConv2d):
            _, channels, kh, kw = module.regular_conv.weight.shape
            if module.padding != kh // 2 or kh != kw:
                raise ValueError(f"BiRefNet: {name} is not a same-size square deformable convolution")
            layers.append((config.swin.patch_size * 2 ** (_level(name) - 1), channels, kh * kw))
    return tuple(layers)


def deform_columns(h: int, w: int, variant: str | None) -> int:
    """Elements of the largest ``columns`` buffer torchvision's deform_conv2d allocates for one image
    of network size h x w (a variant not in ``VARIANTS``: the largest over them)."""
    variants = [variant] if variant in VARIANTS else list(VARIANTS)
    return max(channels * taps * -(-h // stride) * -(-w // stride)
               for v in variants for stride, channels, taps in deform_layers(v))


def device_extra(h: int, w: int, variant: str | None, device: torch.device, dtype: torch.dtype) -> int:
    """Bytes per image beyond the CPU-measured activations: torchvision's largest columns buffer where
    its op runs (off the CPU, unless it fell back to the pure-torch path there)."""
    if default_backend(device) != "torchvision":
        return 0
    return deform_columns(h, w, variant) * torchvision_dtype(dtype).itemsize


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
    device_extra=device_extra,
    inputs=InputContract(size_multiple=SIZE_MULTIPLE, train_hw=(1024, 1024), max_side=2048),
    # the loader records the file's training size and dynamic range on the module (a module that
    # does not, e.g. a stand-in: the family's)
    file_sizes=lambda model: (getattr(model, "train_hw", None), getattr(model, "dynamic_sides", None)),
    files=FILES,
    default_file="BiRefNet.safetensors",
    shared_folders=("background_removal",),
    variants=tuple(VARIANTS),
    variant_of=lambda model: model.config.name,
    describe=_describe,
    # the widget lists the older order first, as the loader node always has
    options=(LoaderOption("patch_order", ("auto", "legacy", "current"), "auto", resolve_patch_order),),
    segment=lambda model, image, depth: model(image),
))
