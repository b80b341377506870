"""Turning the image types users hand us into float tensors, and back.

Accepted inputs everywhere in pdfnet_core:
* a PIL image (any mode PIL can convert to RGB; 16-bit and float modes are rescaled),
* a numpy array HxW, HxWx1, HxWx3 or HxWx4 (uint8, uint16, bool or float in 0..1),
* a torch tensor [H,W,C] or [B,H,W,C] float 0..1 (ComfyUI's IMAGE layout); an integer or bool
  tensor is scaled by its dtype's range exactly as the numpy array of that dtype is,
* a list of any of these (sizes may differ).

Float images must be in 0..1: a slight overshoot (resampling ringing, within -0.5..1.5) is clipped,
anything further out (a 0..255 image passed as float, say) is an error that says so.

Every image becomes a [3,H,W] float32 tensor in 0..1 on the CPU; alpha is dropped (a cut-out is
computed from the colour), gray is repeated to three channels.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# How far outside 0..1 a float image may stray (and be clipped) before it is an error.
FLOAT_RANGE_SLACK = 0.5


@dataclass(frozen=True)
class ImageSource:
    """One input image before conversion: its name and size now, its pixels when they are needed.

    A batch is converted one image at a time as the work reaches it (``rgb()``: the one layout
    conversion and the one scan of its values), so a long video costs the memory of the frames in
    flight, not a float copy of all of them.
    """

    item: Any
    name: str
    height: int
    width: int

    def rgb(self) -> torch.Tensor:
        """The image as a [3,H,W] float32 CPU tensor in 0..1 (errors name the input)."""
        return _one_to_chw(self.item, self.name)

    def converted(self) -> "ImageSource":
        """This image with its pixels converted now, for work that reads them more than once."""
        return _Converted(self.rgb(), self.name, self.height, self.width)


class _Converted(ImageSource):
    def rgb(self) -> torch.Tensor:
        return self.item


def image_sources(images: Any, name: str = "images") -> list[ImageSource]:
    """Every image of any accepted input, with its size; shapes and types are checked here, values by ``rgb()``."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return [_source(im, f"{name}[{i}]") for i, im in enumerate(images)]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{name} is empty: pass at least one image")
        return [s for i, im in enumerate(images) for s in image_sources(im, f"{name}[{i}]")]
    return [_source(images, name)]


def _source(image: Any, name: str) -> ImageSource:
    if isinstance(image, torch.Tensor):
        if image.ndim != 3:
            raise ValueError(f"{name}: expected a [H,W,C] or [B,H,W,C] tensor, got shape {list(image.shape)}")
        if image.shape[-1] not in (1, 3, 4):
            raise ValueError(f"{name}: expected channels-last [H,W,C] with C in 1, 3 or 4, got {list(image.shape)}")
        return ImageSource(image, name, image.shape[0], image.shape[1])
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"{name}: expected an HxW, HxWx1, HxWx3 or HxWx4 array, got shape {image.shape}")
        return ImageSource(image, name, image.shape[0], image.shape[1])
    if isinstance(image, Image.Image):
        return ImageSource(image, name, image.height, image.width)
    raise TypeError(f"{name}: unsupported image type {type(image).__name__}; "
                    "pass a PIL image, a numpy array or a torch tensor")


def to_rgb_list(images: Any, name: str = "images") -> list[torch.Tensor]:
    """Normalise any accepted input to a list of [3,H,W] float32 tensors in 0..1."""
    return [source.rgb() for source in image_sources(images, name)]


def _one_to_chw(image: Any, name: str) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        if image.ndim != 3:
            raise ValueError(f"{name}: expected a [H,W,C] or [B,H,W,C] tensor, got shape {list(image.shape)}")
        if not (image.is_floating_point() or image.is_complex()):
            # integer / bool tensors: the same scaling (and the same refusals) as numpy arrays
            return _array_to_chw(image.detach().cpu().numpy(), name)
        return _tensor_to_chw(image, name)
    if isinstance(image, np.ndarray):
        return _array_to_chw(image, name)
    if isinstance(image, Image.Image):
        return _array_to_chw(pil_to_array(image), name)
    raise TypeError(f"{name}: unsupported image type {type(image).__name__}; "
                    "pass a PIL image, a numpy array or a torch tensor")


def pil_to_array(image) -> np.ndarray:
    """A PIL image as HxWx3 (or HxWx4) array, keeping 16-bit and float precision."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        return np.clip(arr / peak, 0, 1).astype(np.float32)
    if mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        return np.asarray(image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))


def _array_to_chw(arr: np.ndarray, name: str) -> torch.Tensor:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected an HxW, HxWx1, HxWx3 or HxWx4 array, got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} is empty ({arr.shape[0]}x{arr.shape[1]})")
    if not arr.flags.writeable:  # PIL-backed arrays are read-only; torch wants to own writable memory
        arr = arr.copy()
    if arr.dtype == np.uint8:
        return _uint8_to_chw(arr)
    if arr.dtype == np.uint16:
        t = torch.from_numpy(arr.astype(np.float32)) / 65535.0
    elif arr.dtype == np.bool_:
        t = torch.from_numpy(arr.astype(np.float32))
    elif np.issubdtype(arr.dtype, np.floating):
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    else:
        raise ValueError(f"{name}: unsupported array dtype {arr.dtype}; use uint8, uint16 or float 0..1")
    return _tensor_to_chw(t, name)


def _uint8_to_chw(arr: np.ndarray) -> torch.Tensor:
    # Converted straight into the [3,H,W] result: 8-bit values need no range or finiteness check,
    # and a photo makes one float copy instead of three (float, divided, transposed).
    h, w, c = arr.shape
    src = torch.from_numpy(arr).permute(2, 0, 1)
    src = src.expand(3, h, w) if c == 1 else src[:3]
    return torch.empty(3, h, w).copy_(src).div_(255.0)


def _tensor_to_chw(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.ndim != 3 or t.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name}: expected channels-last [H,W,C] with C in 1, 3 or 4, got {list(t.shape)}")
    t = t.detach().to("cpu", torch.float32)
    h, w = t.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"{name} is empty ({h}x{w})")
    lo, hi = (float(v) for v in torch.aminmax(t))  # NaN propagates to both, inf shows as a bound
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or inf values")
    if lo < -FLOAT_RANGE_SLACK or hi > 1 + FLOAT_RANGE_SLACK:
        hint = "; it looks like a 0..255 image: divide it by 255, or pass it as uint8" if hi > 1 + FLOAT_RANGE_SLACK \
            and lo >= -FLOAT_RANGE_SLACK and hi <= 255 + FLOAT_RANGE_SLACK else ""
        raise ValueError(f"{name} has float values from {lo:g} to {hi:g}, but float images must be in 0..1{hint}")
    c = t.shape[-1]
    if c == 1:
        t = t.expand(h, w, 3)
    elif c == 4:
        t = t[..., :3]
    chw = t.permute(2, 0, 1)
    if lo < 0 or hi > 1:
        chw = chw.clamp(0, 1)  # a new tensor: the caller's image is never changed
    # An image that is already a channels-first buffer seen as [H,W,3] (as read_image returns it) is
    # used as it is: a photo is not copied again by every function it passes through.
    return chw.contiguous()


UINT8_BAND_VALUES = 1 << 22  # values per band of to_uint8 (16 MiB of float32)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[H,W,C] float 0..1 (C = 1, 3 or 4, any device) as the 8-bit array an image file holds
    ([H,W] for C = 1): clamped, rounded half up.

    Converted in bands of rows: a 6000x4000 RGBA makes no full-size float temporaries (each is
    384 MiB) beside the 96 MiB result.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"to_uint8: expected an [H,W,C] tensor with C in 1, 3 or 4, got {getattr(image, 'shape', type(image))}")
    h, w, c = image.shape
    out = np.empty((h, w) if c == 1 else (h, w, c), np.uint8)
    dst = torch.from_numpy(out).view(h, w, c)
    rows = max(1, UINT8_BAND_VALUES // max(1, w * c))
    for y0 in range(0, h, rows):
        # in the image's own dtype, as (x.clamp(0, 1) * 255 + 0.5).to(uint8) computes it whole
        dst[y0:y0 + rows] = image[y0:y0 + rows].clamp(0, 1).mul_(255).add_(0.5).to(torch.uint8).cpu()
    return out


def to_mask_list(masks: Any, name: str = "depth") -> list[torch.Tensor]:
    """Single-channel maps (depth, masks) as a list of [H,W] float32 tensors (any scale)."""
    if isinstance(masks, torch.Tensor):
        if masks.ndim == 2:
            masks = masks[None]
        elif masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        elif masks.ndim == 4 and masks.shape[-1] in (1, 3):
            masks = masks[..., 0]
        if masks.ndim != 3:
            raise ValueError(f"{name}: expected [H,W], [B,H,W] or [B,1,H,W], got {list(masks.shape)}")
        out = [m.detach().to("cpu", torch.float32) for m in masks]
    elif isinstance(masks, (list, tuple)):
        out = [m for i, x in enumerate(masks) for m in to_mask_list(x, f"{name}[{i}]")]
    elif isinstance(masks, np.ndarray):
        arr = masks[..., 0] if masks.ndim == 3 and masks.shape[-1] in (1, 3, 4) else masks
        if arr.ndim != 2:
            raise ValueError(f"{name}: expected an HxW array, got shape {masks.shape}")
        out = [torch.from_numpy(arr.astype(np.float32))]
    else:
        if not isinstance(masks, Image.Image):
            raise TypeError(f"{name}: unsupported type {type(masks).__name__}")
        # np.array, not asarray: PIL's buffer is read-only, and torch must own a writable one
        arr = np.array(masks.convert("F") if masks.mode not in ("I;16", "I") else masks, dtype=np.float32)
        out = [torch.from_numpy(arr)]
    for i, m in enumerate(out):
        if not torch.isfinite(m).all():
            raise ValueError(f"{name} contains NaN or inf values (item {i})")
    return out


def group_by_size(sizes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    """Indices of same-sized images (by their (H, W)), so each group can run through a network as one batch."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, size in enumerate(sizes):
        groups[(int(size[0]), int(size[1]))].append(i)
    return dict(groups)


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] in 0..1 -> ImageNet statistics (subtract, then divide, as the official code)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def minmax_per_item(x: torch.Tensor) -> torch.Tensor:
    """Each item of a batch min-max scaled to 0..1 in float32; a constant item becomes zeros (not NaN)."""
    d = x.float()
    dims = tuple(range(1, d.ndim))
    lo = d.amin(dim=dims, keepdim=True)
    span = d.amax(dim=dims, keepdim=True) - lo
    flat = ~(span > 0)
    # One result tensor, worked on in place (a full-size depth map is 96 MiB at 6000x4000).
    return (d - lo).div_(span.masked_fill(flat, 1)).masked_fill_(flat, 0)


def resize_bilinear(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """[...,H,W] bilinear to ``size`` (no antialias); the input itself when it already has that size."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``: to a GPU through pinned memory without waiting (the copy is ordered before
    the kernels that read it); elsewhere a plain move (none on the CPU)."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


T = TypeVar("T")


def chunks(seq: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    """Consecutive slices of ``seq`` with ``size`` items (the last may be shorter)."""
    for i in range(0, len(seq), max(1, size)):
        yield seq[i:i + size]
