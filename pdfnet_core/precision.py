"""Precisions by name (``DTYPES``, ``as_dtype``) and what "auto" means on this machine: the device
(``resolve_device``) and, for a model family on it, the dtype (``auto_dtype``).

A family lists in ``FamilySpec.auto_dtypes`` the half types it runs faster in (and with results
close enough to fp32); "auto" takes the first of them the device computes natively, else fp32.
* bf16 on a CPU: only where oneDNN has native bf16 kernels (AVX-512 BF16 or AMX); elsewhere torch
  emulates it and it is slower than fp32.
* bf16 on CUDA: where the GPU has bf16 arithmetic (Ampere and later), without emulation.
* fp16: on CUDA from Volta on (tensor cores); never on a CPU, whose fp16 paths are slow.
"""
from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_ALIASES = {**DTYPES, "float": torch.float32, "half": torch.float16}
# What a --dtype option or a loader's dtype widget offers.
DTYPE_CHOICES = ("auto", *DTYPES)

# fp16 tensor cores (Volta) and native bf16 (Ampere)
_FP16_CAPABILITY = (7, 0)
_BF16_CAPABILITY = (8, 0)


def resolve_device(name: str | torch.device) -> torch.device:
    """A ``--device`` value: "auto" is CUDA, else Apple's MPS, else the CPU."""
    if str(name) != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively (the kernels, not an emulation)."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= _BF16_CAPABILITY
    return False


def fp16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` runs fp16 fast (CUDA tensor cores only)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.is_available() \
        and torch.cuda.get_device_capability(device) >= _FP16_CAPABILITY


def auto_dtype(auto_dtypes: tuple[torch.dtype, ...], device: torch.device | str) -> torch.dtype:
    """The first of a family's ``auto_dtypes`` that ``device`` runs natively, else float32."""
    for dtype in auto_dtypes:
        if dtype == torch.bfloat16 and bf16_supported(device):
            return dtype
        if dtype == torch.float16 and fp16_supported(device):
            return dtype
    return torch.float32


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating torch dtype from a dtype or a name ('fp16', 'float16', 'torch.float16', ...)."""
    if isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.")
        resolved = _DTYPE_ALIASES.get(name, getattr(torch, name, None))
    else:
        resolved = dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"unsupported model dtype {dtype!r}; use fp32, fp16 or bf16 (or a floating torch.dtype)")
    return resolved


def allow_tf32() -> None:
    """Let float32 matrix products and convolutions on CUDA use TF32 (10-bit mantissa inputs, fp32
    sums): what a command line that owns its process wants from fp32 on Ampere and later."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def default_dtype_name(device: torch.device | str) -> str:
    """What a command line runs when it is not told: "auto" on CUDA (bf16 from Ampere on), else the
    official numbers in fp32 (a CPU's bf16 is a choice the user makes, see README)."""
    return "auto" if torch.device(device).type == "cuda" else "fp32"


def dtype_for(name: str, auto_dtypes: tuple[torch.dtype, ...], device: torch.device | str) -> torch.dtype:
    """A command line's ``--dtype`` (fp32, fp16, bf16 or auto) for a family (its ``auto_dtypes``) on a device."""
    if name == "auto":
        return auto_dtype(auto_dtypes, device)
    if name not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)}, got {name!r}")
    return DTYPES[name]
