"""Loading the official PDFNet fixtures and building the model inputs exactly as the README says."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from pdfnet_core.ops.images import imagenet_normalize


def case_dir(reference_dir: Path, case: str) -> Path:
    return Path(reference_dir) / "pdfnet" / case


def model_inputs(reference_dir: Path, case: str) -> tuple[torch.Tensor, torch.Tensor]:
    folder = case_dir(reference_dir, case)
    image_u8 = np.load(folder / "image_u8.npy")
    depth_u8 = np.load(folder / "depth_u8.npy")
    image = imagenet_normalize(torch.from_numpy(image_u8).permute(0, 3, 1, 2).float() / 255)
    depth = torch.from_numpy(depth_u8).float()[:, None] / 255
    meta = json.loads((folder / "meta.json").read_text())
    assert hashlib.sha256(image.numpy().tobytes()).hexdigest() == meta["image_tensor_sha256"]
    assert hashlib.sha256(depth.numpy().tobytes()).hexdigest() == meta["depth_tensor_sha256"]
    return image, depth


def load(reference_dir: Path, case: str, name: str) -> torch.Tensor:
    return torch.from_numpy(np.load(case_dir(reference_dir, case) / f"{name}.npy"))
