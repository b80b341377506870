"""Synthetic Depth-Anything-V2 weights, built by the recipe in reference/dam2/README.md.

The parity fixtures were produced by the official code with exactly these weights, so the recipe
must be followed to the letter (order of operations included); ``weights_checksum_vits_seed0.json``
checks it.  Shapes come from the reference key lists, never from this project's model.
"""
from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

# (pattern, kind, a, b): the first match wins; see the reference README's table.
RULES: tuple[tuple[str, str, float, float | None], ...] = (
    (r"\.ls[12]\.gamma$", "affine", 0.3, 0.1),
    (r"norm[12]?\.weight$", "affine", 1.0, 0.1),
    (r"norm[12]?\.bias$", "affine", 0.0, 0.1),
    (r"pos_embed$", "affine", 0.0, 0.5),
    (r"cls_token$", "affine", 0.0, 0.5),
    (r"mask_token$", "affine", 0.0, 0.02),
    (r"attn\.qkv\.weight$", "fanin", 1.5, None),
    (r"resize_layers\.[01]\.weight$", "fanin0", 1.0, None),
    (r"output_conv2\.2\.weight$", "absfanin", 1.0, None),
    (r"output_conv2\.2\.bias$", "affine", -1.5, 0.0),
)


def synth_weight(key: str, shape: Sequence[int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")) + seed)
    z = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    fan_in = math.prod(shape[1:])
    for pattern, kind, a, b in RULES:
        if re.search(pattern, key):
            break
    else:
        kind, a, b = ("fanin", 1.0, None) if len(shape) >= 2 else ("affine", 0.0, 0.1)
    if kind == "affine":
        return a + b * z
    if kind == "fanin":
        return z * (a / math.sqrt(fan_in))
    if kind == "absfanin":
        return z.abs() * (a / math.sqrt(fan_in))
    return z * (a / math.sqrt(shape[0]))  # fanin0


def key_shapes(reference_dir: Path, variant: str, layout: str = "") -> dict[str, list[int]]:
    """``keys_<variant><layout>.json`` as name -> shape (layout "" official, "_hf" transformers)."""
    with open(Path(reference_dir) / "dam2" / f"keys_{variant}{layout}.json") as f:
        return {k: v["shape"] for k, v in json.load(f).items()}


def synth_state_dict(shapes: Mapping[str, Sequence[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    return {k: synth_weight(k, s, seed) for k, s in shapes.items()}


def empty_state_dict(shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Right shapes, no storage: enough for detection and accounting tests of the big sizes."""
    return {k: torch.empty(tuple(s), device="meta") for k, s in shapes.items()}


def formula_image(h: int, w: int, variant: int) -> np.ndarray:
    """The reference README's integer test image, uint8 HxWx3 RGB."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    r = (x * 255) // (w - 1)
    g = (y * 255) // (h - 1)
    b = ((x // 16 + y // 16 + variant) % 2) * 160 + ((x * x + 3 * y * y + 7 * variant * x) % 61) + 17 * variant
    img = np.stack([r, g, b], axis=-1) % 256
    cx, cy = (6 * w) // 10, (4 * h) // 10
    ax, ay = max(w // 4, 1), max(h // 5, 1)
    inside = (x - cx) ** 2 * ay ** 2 + (y - cy) ** 2 * ax ** 2 <= (ax * ay) ** 2
    img[inside] = 255 - img[inside]
    return img.astype(np.uint8)
