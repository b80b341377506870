"""Loading Depth-Anything-V2 weights from any of the layouts they are published in.

Accepted: the official ``depth_anything_v2_{vits,vitb,vitl}.pth``, safetensors repacks with the same
names (fp16 or fp32), and the transformers layout of the ``*-hf`` repositories (renamed to the
official names here, with the split q/k/v projections fused back).  The size is read from the
tensor shapes; every key is accounted for by ``weights.load_checked``.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping

import torch

from ...fingerprints import DEPTH_ANYTHING, DEPTH_ANYTHING_HF
from ...weights import CheckpointError, IgnoreRule, StateDict, load_family
from .net import CONFIGS, DepthAnythingV2, get_config

# The checkpoint layouts this loader reads: the official one and the transformers (-hf) one.
LAYOUTS = (DEPTH_ANYTHING, DEPTH_ANYTHING_HF)

log = logging.getLogger("pdfnet_core")

IGNORED = (IgnoreRule("DINOv2's mask token is only used in pre-training", frozenset({"pretrained.mask_token"})),)

# --------------------------------------------------------------------------------------------
# transformers <-> official names


def _same(i: int) -> int:
    return i


def _plus_one(i: int) -> int:
    return i + 1


def _minus_one(i: int) -> int:
    return i - 1


def _reverse4(i: int) -> int:
    # transformers runs the fusion stages coarse-to-fine as layers.0..3; the official names count
    # fine-to-coarse (refinenet4 is the coarsest), so the index is mirrored both ways.
    return 4 - i


@dataclass(frozen=True)
class RenameRule:
    """One family of names in both layouts.  ``{i}`` is an index mapped by ``to_official`` /
    ``to_hf``; ``{p}``, ``{k}`` and ``{m}`` are copied as they are."""

    hf: str
    official: str
    to_official: Callable[[int], int] = _same
    to_hf: Callable[[int], int] = _same


_FIELDS = {"i": r"\d+", "p": r"weight|bias", "k": r"[12]", "m": r"[12]", "part": r"query|key|value"}

RENAMES: tuple[RenameRule, ...] = (
    RenameRule("backbone.embeddings.cls_token", "pretrained.cls_token"),
    RenameRule("backbone.embeddings.mask_token", "pretrained.mask_token"),
    RenameRule("backbone.embeddings.position_embeddings", "pretrained.pos_embed"),
    RenameRule("backbone.embeddings.patch_embeddings.projection.{p}", "pretrained.patch_embed.proj.{p}"),
    RenameRule("backbone.encoder.layer.{i}.attention.output.dense.{p}", "pretrained.blocks.{i}.attn.proj.{p}"),
    RenameRule("backbone.encoder.layer.{i}.layer_scale{k}.lambda1", "pretrained.blocks.{i}.ls{k}.gamma"),
    RenameRule("backbone.encoder.layer.{i}.norm{k}.{p}", "pretrained.blocks.{i}.norm{k}.{p}"),
    RenameRule("backbone.encoder.layer.{i}.mlp.fc{k}.{p}", "pretrained.blocks.{i}.mlp.fc{k}.{p}"),
    RenameRule("backbone.layernorm.{p}", "pretrained.norm.{p}"),
    RenameRule("neck.reassemble_stage.layers.{i}.projection.{p}", "depth_head.projects.{i}.{p}"),
    RenameRule("neck.reassemble_stage.layers.{i}.resize.{p}", "depth_head.resize_layers.{i}.{p}"),
    RenameRule("neck.convs.{i}.weight", "depth_head.scratch.layer{i}_rn.weight", _plus_one, _minus_one),
    RenameRule("neck.fusion_stage.layers.{i}.projection.{p}", "depth_head.scratch.refinenet{i}.out_conv.{p}",
               _reverse4, _reverse4),
    RenameRule("neck.fusion_stage.layers.{i}.residual_layer{k}.convolution{m}.{p}",
               "depth_head.scratch.refinenet{i}.resConfUnit{k}.conv{m}.{p}", _reverse4, _reverse4),
    RenameRule("head.conv1.{p}", "depth_head.scratch.output_conv1.{p}"),
    RenameRule("head.conv2.{p}", "depth_head.scratch.output_conv2.0.{p}"),
    RenameRule("head.conv3.{p}", "depth_head.scratch.output_conv2.2.{p}"),
)

# transformers splits the fused qkv projection; the pieces are concatenated in this order.
HF_QKV = "backbone.encoder.layer.{i}.attention.attention.{part}.{p}"
OFFICIAL_QKV = "pretrained.blocks.{i}.attn.qkv.{p}"
QKV_PARTS = ("query", "key", "value")

# transformers 5.x renames these at load time; a file saved from 5.x carries the new names.
HF_V5_ALIASES: tuple[tuple[str, str], ...] = (
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
)


@lru_cache(maxsize=None)   # a handful of fixed templates
def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(p) if n % 2 == 0 else f"(?P<{p}>{_FIELDS[p]})" for n, p in enumerate(parts))
    return re.compile(regex)


def _rename(key: str, source: str, target: str, index: Callable[[int], int]) -> str | None:
    m = _pattern(source).fullmatch(key)
    if m is None:
        return None
    fields = m.groupdict()
    if "i" in fields:
        fields["i"] = str(index(int(fields["i"])))
    return target.format(**fields)


def hf_to_official(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename a transformers-layout state dict to official names.

    Names that match no rule are kept as they are, so the strict accounting reports them; a q/k/v
    triple with a piece missing is left split for the same reason.
    """
    normalised = {}
    for key, value in state.items():
        for old, new in HF_V5_ALIASES:
            key = re.sub(old, new, key)
        normalised[key] = value

    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, str]] = {}
    qkv_pattern = _pattern(HF_QKV)
    for key, value in normalised.items():
        m = qkv_pattern.fullmatch(key)
        if m is not None:
            qkv.setdefault((m["i"], m["p"]), {})[m["part"]] = key
            continue
        new = next((n for r in RENAMES if (n := _rename(key, r.hf, r.official, r.to_official)) is not None), key)
        out[new] = value
    for (i, p), pieces in qkv.items():
        if len(pieces) == len(QKV_PARTS):
            out[OFFICIAL_QKV.format(i=i, p=p)] = torch.cat([normalised[pieces[q]] for q in QKV_PARTS], dim=0)
        else:
            out.update({name: normalised[name] for name in pieces.values()})
    return out


def official_to_hf(state: Mapping[str, torch.Tensor]) -> StateDict:
    """The inverse of ``hf_to_official`` (transformers 4.x names); used to write HF-layout files."""
    out: StateDict = {}
    qkv_pattern = _pattern(OFFICIAL_QKV)
    for key, value in state.items():
        m = qkv_pattern.fullmatch(key)
        if m is not None:
            for part, piece in zip(QKV_PARTS, value.chunk(len(QKV_PARTS), dim=0)):
                out[HF_QKV.format(i=m["i"], part=part, p=m["p"])] = piece.clone()
            continue
        new = next((n for r in RENAMES if (n := _rename(key, r.official, r.hf, r.to_hf)) is not None), None)
        if new is None:
            raise ValueError(f"state: {key} has no transformers name")
        out[new] = value
    return out


# --------------------------------------------------------------------------------------------
# variant detection


def _shape_summary(embed_dim: int | None, depth: int | None, features: int | None) -> str:
    return (f"embed dim {embed_dim if embed_dim is not None else '?'}, "
            f"{depth if depth is not None else '?'} blocks, "
            f"fusion width {features if features is not None else '?'}")


def _architecture(state: Mapping[str, torch.Tensor]) -> tuple[int | None, int | None, int | None]:
    dim_keys = ("pretrained.pos_embed", "pretrained.cls_token", "pretrained.norm.weight")
    embed_dim = next((int(state[k].shape[-1]) for k in dim_keys if k in state), None)
    blocks = [int(m.group(1)) for k in state if (m := re.match(r"pretrained\.blocks\.(\d+)\.", k))]
    depth = max(blocks) + 1 if blocks else None
    rn = state.get("depth_head.scratch.layer1_rn.weight")
    features = int(rn.shape[0]) if rn is not None else None
    return embed_dim, depth, features


def detect_variant(state: Mapping[str, torch.Tensor]) -> str:
    """``vits`` / ``vitb`` / ``vitl`` from the shapes of an official-layout state dict.

    Raises CheckpointError when the shapes fit no supported size (for example the unreleased vitg).
    """
    embed_dim, depth, features = _architecture(state)
    for config in CONFIGS.values():
        if (embed_dim, depth, features) == (config.embed_dim, config.depth, config.features):
            return config.variant
    raise CheckpointError(
        f"this Depth-Anything-V2 checkpoint has {_shape_summary(embed_dim, depth, features)}, which is "
        "none of the supported sizes (" + "; ".join(
            f"{c.variant}: {_shape_summary(c.embed_dim, c.depth, c.features)}" for c in CONFIGS.values()) +
        "). It may be truncated, or the giant (vitg) model, which is not supported.")


# --------------------------------------------------------------------------------------------
# loading


def load_depth_anything(source, variant: str | None = None, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> DepthAnythingV2:
    """A ready-to-run (eval, no grad) Depth-Anything-V2 from a file path or a state dict.

    ``variant`` ("vits", "vitb", "vitl") is detected from the tensor shapes when None; if given,
    it must agree with the file.  Weights are cast to ``dtype`` and placed on ``device``.
    """
    if variant is not None:
        get_config(variant)   # a bad name is the caller's error, before any file is read
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    def prepare(state: StateDict, layout: str) -> StateDict:
        return hf_to_official(state) if layout == DEPTH_ANYTHING_HF.name else state

    def build(state: StateDict) -> DepthAnythingV2:
        config = get_config(_check_variant(state, variant))
        # said before the key accounting, so it is said even for a file that then fails it
        if not config.commercial_use:
            log.warning("Depth-Anything-V2 %s weights are licensed %s (non-commercial use only); "
                        "the Apache-2.0 vits model can be used commercially", config.variant, config.licence)
        return DepthAnythingV2(config)

    # channels-last convolutions: the DPT head's results then do not depend on the batch size
    # (see DPTHead.forward), and it runs 1.2x faster in bf16 on a CPU
    return load_family(source, LAYOUTS, build, device=device, dtype=dtype, prepare=prepare, ignore=IGNORED,
                       wanted=lambda built: f"Depth-Anything-V2 {built.config.variant}",
                       memory_format=torch.channels_last)


def _check_variant(state: StateDict, variant: str | None) -> str:
    embed_dim, depth, features = _architecture(state)
    if variant is not None and None in (embed_dim, depth, features):
        # too incomplete to read the size: trust the caller and let the accounting name what is missing
        return variant
    detected = detect_variant(state)
    if variant is not None and variant != detected:
        raise CheckpointError(
            f"variant={variant!r} was requested, but the checkpoint holds {detected} weights "
            f"({_shape_summary(embed_dim, depth, features)}); pass variant={detected!r} or None")
    return detected
