"""The deterministic synthetic PDFNet weights of shared/reference/pdfnet/README.md, from keys.json alone."""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch

_SOBEL_X = [[[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]]]
_SOBEL_Y = [[[[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]]]


def _window_index(window: int = 12) -> torch.Tensor:
    coords = [(y, x) for y in range(window) for x in range(window)]
    return torch.tensor([[(ya - yb + window - 1) * (2 * window - 1) + (xa - xb + window - 1)
                          for (yb, xb) in coords] for (ya, xa) in coords], dtype=torch.int64)


def synthetic_tensor(key: str, shape: list[int], seed: int = 0) -> torch.Tensor:
    if key.endswith("relative_position_index"):
        return _window_index()
    if key == "IntegrityPriorLoss.sobel_x.weight":
        return torch.tensor(_SOBEL_X)
    if key == "IntegrityPriorLoss.sobel_y.weight":
        return torch.tensor(_SOBEL_Y)
    g = torch.Generator(device="cpu")
    g.manual_seed(zlib.crc32(key.encode("utf-8")) + seed)
    z = torch.randn(tuple(shape), generator=g, dtype=torch.float64)
    if key.endswith("relative_position_bias_table") or key.endswith("absolute_pos_embed"):
        scale, offset = 0.5, 0.0
    elif len(shape) == 1 and key.endswith(".weight"):
        scale, offset = 0.1, 1.0
    elif len(shape) == 1 and key.endswith(".bias"):
        scale, offset = 0.05, 0.0
    else:
        gain = 4.0 if key.startswith("decoder.Bside.") else 1.0
        scale, offset = gain / math.sqrt(math.prod(shape[1:])), 0.0
    return (z * scale + offset).to(torch.float32)


def synthetic_state_dict(reference_dir: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    keys = json.loads((Path(reference_dir) / "pdfnet" / "keys.json").read_text())
    return {k: synthetic_tensor(k, v["shape"], seed) for k, v in keys.items()}
