"""The deterministic synthetic SegRefiner weights of shared/reference/segrefiner/README.md §7.

Built from keys.json / keys_narrow.json alone, so no model code is involved in making them.
"""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch

_SOBEL_X = [[[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]]]
_SOBEL_Y = [[[[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]]]
_GN_SUFFIXES = ("in_layers.0.weight", "in_layers.0.bias", "out_layers.0.weight", "out_layers.0.bias",
                ".norm.weight", ".norm.bias")
_GN_NAMES = ("denoise_model.out.0.weight", "denoise_model.out.0.bias")


def synthetic_tensor(key: str, shape: list[int], seed: int = 0) -> torch.Tensor:
    if key == "loss_texture.sobel.conv_x.weight":
        return torch.tensor(_SOBEL_X)
    if key == "loss_texture.sobel.conv_y.weight":
        return torch.tensor(_SOBEL_Y)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()) + seed)
    z = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    if key == "denoise_model.time_embed.weight":
        return z
    if key.endswith(_GN_SUFFIXES) or key in _GN_NAMES:
        return 1 + 0.1 * z if key.endswith("weight") else 0.1 * z
    if len(shape) == 1:
        return 0.02 * z
    gain = 4.0 if key == "denoise_model.out.2.weight" else 1.0
    return z * (gain / math.sqrt(math.prod(shape[1:])))


def synthetic_state_dict(reference_dir: Path, narrow: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    name = "keys_narrow.json" if narrow else "keys.json"
    keys = json.loads((Path(reference_dir) / "segrefiner" / name).read_text())
    return {k: synthetic_tensor(k, v["shape"], seed) for k, v in keys.items()}


def disc_scene(h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A red disc on blue (uint8 RGB) and a coarse square mask around it: a refinement has edges to fix."""
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (h / 3) ** 2)
    image = np.where(disc[..., None], [200, 60, 40], [30, 90, 160]).astype(np.uint8)
    coarse = ((np.abs(yy - h / 2) < h / 3) & (np.abs(xx - w / 2) < h / 3)).astype(np.uint8)
    return image, coarse
