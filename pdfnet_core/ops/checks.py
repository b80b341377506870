"""Input checks shared by every entry point, so each mistake is worded once, naming the input.

Images are ComfyUI's IMAGE layout [B,H,W,C] float 0..1; masks [B,H,W] float 0..1.  The errors are
``InputError`` (a ValueError; ``InputTypeError`` also a TypeError for a wrong type), whose message
says what is wrong and what to do; the node layer shows them as they are.
"""
from __future__ import annotations

import torch


class InputError(ValueError):
    """Bad input: the message names the input, what is wrong and what to do."""


class InputTypeError(InputError, TypeError):
    """An input of the wrong type."""


def _shape(x) -> str:
    return str(list(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_values(x: torch.Tensor, name: str, kind: str) -> torch.Tensor:
    if not x.is_floating_point():
        raise InputError(f"{name}: expected a floating {kind} in 0..1, got dtype {x.dtype}")
    if x.numel() == 0:
        raise InputError(f"{name} is empty (shape {_shape(x)})")
    if torch.isnan(x).any():
        raise InputError(f"{name} contains NaN values")
    return x


def check_image(image, name: str = "image", channels: tuple[int, ...] = (3,)) -> torch.Tensor:
    """``image`` if it is a non-empty floating [B,H,W,C] tensor without NaN, C in ``channels``."""
    if not isinstance(image, torch.Tensor):
        raise InputTypeError(f"{name}: expected a torch.Tensor [B,H,W,3], got {type(image).__name__}")
    if image.ndim != 4 or image.shape[-1] not in channels:
        raise InputError(f"{name}: expected a [B,H,W,3] RGB image, got shape {_shape(image)}")
    return _check_values(image, name, "image")


def check_mask(mask, name: str = "mask", single: bool = False) -> torch.Tensor:
    """``mask`` if it is a non-empty floating [B,H,W] tensor without NaN (bool becomes float32).

    ``single``: a lone [H,W] mask (as some ComfyUI nodes hand out) is taken as a batch of one.
    """
    if not isinstance(mask, torch.Tensor):
        raise InputTypeError(f"{name}: expected a torch.Tensor [B,H,W], got {type(mask).__name__}")
    if single and mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise InputError(f"{name}: expected a [B,H,W] mask, got shape {_shape(mask)}")
    if mask.dtype == torch.bool:
        mask = mask.float()
    return _check_values(mask, name, "mask")


def check_same_size(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str,
                    hint: str = "resize one to the other first") -> None:
    """Both [B,H,W,...] with the same H and W."""
    if a.shape[1:3] != b.shape[1:3]:
        raise InputError(f"{a_name} is {a.shape[2]}x{a.shape[1]} (WxH) but {b_name} is {b.shape[2]}x{b.shape[1]}: "
                         f"{hint}")


def batch_pair(n_a: int, n_b: int, a_name: str, b_name: str, broadcast: bool = True) -> int:
    """The number of (a, b) pairs: equal counts, or (``broadcast``) one of either for all."""
    if n_a == n_b:
        return n_a
    if broadcast and 1 in (n_a, n_b):
        return max(n_a, n_b)
    either = f", or one {b_name} for all" if broadcast else ""
    raise InputError(f"{a_name} has {n_a} items and {b_name} has {n_b}: pass one {b_name} per item of "
                     f"{a_name} (same order){either}")
