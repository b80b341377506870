"""The deterministic synthetic BiRefNet weights of shared/reference/birefnet/README.md, from the key lists alone."""
from __future__ import annotations

import hashlib
import json
import math
import zlib
from pathlib import Path

import torch

KEY_FILES = {"swin_v1_t": "keys_swin_v1_t.json", "swin_v1_l": "keys_swin_v1_l.json"}


def _window_index(window: int) -> torch.Tensor:
    coords = [(y, x) for y in range(window) for x in range(window)]
    return torch.tensor([[(ya - yb + window - 1) * (2 * window - 1) + (xa - xb + window - 1)
                          for (yb, xb) in coords] for (ya, xa) in coords], dtype=torch.int64)


def _scaled(gain: float):
    return lambda z, shape: z * math.sqrt(gain / math.prod(shape[1:]))  # not 1/sqrt: see the README


# (applies, value) in the README's order; the first rule that applies gives the value.
_RULES = (
    (lambda k, s: k.endswith(".running_var"), lambda z, s: torch.exp(0.2 * z)),
    (lambda k, s: k.endswith(".running_mean"), lambda z, s: 0.1 * z),
    (lambda k, s: k.endswith(".relative_position_bias_table"), lambda z, s: 0.5 * z),
    (lambda k, s: k.endswith(".offset_conv.weight"), _scaled(1.0)),
    (lambda k, s: k.endswith(".offset_conv.bias"), lambda z, s: 0.5 * z),
    (lambda k, s: len(s) == 1 and k.endswith(".weight"), lambda z, s: 1 + 0.1 * z),
    (lambda k, s: len(s) == 1 and k.endswith(".bias"), lambda z, s: 0.05 * z),
    (lambda k, s: len(s) == 4 and k.endswith(".weight"), _scaled(1.5)),
    (lambda k, s: len(s) == 2 and k.endswith(".weight"), _scaled(1.0)),
)


def synthetic_tensor(key: str, shape: list[int], seed: int = 0) -> torch.Tensor:
    if key.endswith(".relative_position_index"):
        return _window_index(math.isqrt(shape[0]))
    if key.endswith(".num_batches_tracked"):
        return torch.tensor(0, dtype=torch.int64)
    g = torch.Generator(device="cpu")
    g.manual_seed(zlib.crc32(key.encode("utf-8")) + seed)
    z = torch.randn(tuple(shape), generator=g, dtype=torch.float64)
    for applies, value in _RULES:
        if applies(key, shape):
            return value(z, shape).to(torch.float32)
    raise KeyError(f"no recipe rule for {key} {shape}")


def key_list(reference_dir: Path, variant: str) -> dict:
    return json.loads((Path(reference_dir) / "birefnet" / KEY_FILES[variant]).read_text())


def synthetic_state_dict(reference_dir: Path, variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    return {k: synthetic_tensor(k, v["shape"], seed) for k, v in key_list(reference_dir, variant).items()}


def tensor_sha256(t: torch.Tensor) -> str:
    array = t.contiguous().numpy()
    return hashlib.sha256(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()).hexdigest()


def sha256_all(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(f"{key}\0{tensor_sha256(state[key])}\n".encode())
    return h.hexdigest()
