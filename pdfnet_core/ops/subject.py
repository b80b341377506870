"""The geometry of seeing a subject at full resolution: its box, the crop around it, whether a second
look at the crop pays, and putting a crop's mask back into the frame without a seam.

A network sees every photo at one square size, so a subject that fills a fifth of a 6000x4000
frame gets a few hundred network pixels across.  Cropping the subject's box (with a margin of
context) and running the network on the crop gives it more of them; these functions decide where
and whether, and merge the result.  They are pure tensor functions; ``pipeline.segment`` runs the
models.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .checks import InputError

__all__ = ["Box", "subject_box", "margin_pixels", "with_margin", "subject_gain", "blend_weights", "merge_crop", "paste_crop",
           "region_box", "boundary_band", "tile_boxes", "TILE_RATIO", "MIN_GAIN", "MARGIN", "MIN_MARGIN", "BOX_THRESHOLD"]

# A second pass runs when it gives the subject at least this many times the network pixels.
MIN_GAIN = 1.5
# Context around the subject's box: this fraction of the box's longer side on every side, at least
# MIN_MARGIN pixels; the outer half of it is the band where the two passes are blended.
MARGIN = 0.1
MIN_MARGIN = 16
# Foreground for the box: where the mask says more likely subject than not.
BOX_THRESHOLD = 0.5
# Boundary tiles pay when the subject is this many times wider or taller than the network side.
TILE_RATIO = 2.0


@dataclass(frozen=True)
class Box:
    """Rows top..top+height-1, columns left..left+width-1 of an image."""

    top: int
    left: int
    height: int
    width: int

    @property
    def bottom(self) -> int:
        return self.top + self.height

    @property
    def right(self) -> int:
        return self.left + self.width

    @property
    def area(self) -> int:
        return self.height * self.width

    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.bottom), slice(self.left, self.right)

    def covers(self, height: int, width: int) -> bool:
        return (self.top, self.left, self.height, self.width) == (0, 0, height, width)


def subject_box(mask: torch.Tensor, threshold: float = BOX_THRESHOLD) -> Box | None:
    """The bounding box of the pixels of an [H,W] mask at or above ``threshold``; None if there are none."""
    fg = mask >= threshold
    rows = torch.nonzero(fg.any(1)).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(fg.any(0)).flatten()
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1
    return Box(top, left, bottom - top, right - left)


def margin_pixels(box: Box, margin: float = MARGIN, min_margin: int = MIN_MARGIN) -> int:
    """The context kept on every side of ``box``: ``margin`` of its longer side, at least ``min_margin``."""
    return max(min_margin, math.ceil(margin * max(box.height, box.width)))


def with_margin(box: Box, height: int, width: int, pad: int) -> Box:
    """``box`` grown by ``pad`` pixels on every side, inside the image."""
    top, left = max(0, box.top - pad), max(0, box.left - pad)
    bottom, right = min(height, box.bottom + pad), min(width, box.right + pad)
    return Box(top, left, bottom - top, right - left)


def subject_gain(box: Box, first_scale: tuple[float, float], crop_scale: tuple[float, float]) -> float:
    """How many times more network pixels the subject gets from the crop than from the whole frame.

    ``*_scale`` are the (vertical, horizontal) factors from source pixels to network pixels of the
    two placements.  A factor above 1 is upsampling, which adds no detail the photo does not have,
    so each counts at most 1: a photo smaller than the network never pays for a second pass.
    """
    def pixels(scale: tuple[float, float]) -> float:
        return box.height * min(1.0, scale[0]) * box.width * min(1.0, scale[1])

    return pixels(crop_scale) / pixels(first_scale)


def blend_weights(crop: Box, height: int, width: int, band: int,
                  device: torch.device | None = None) -> torch.Tensor:
    """[h,w] weights of a crop's mask against the frame's: 1 inside, falling to 0 across ``band``
    pixels at each crop edge that lies inside the image (an edge on the frame's border needs no
    blending, there is nothing beyond it)."""
    def ramp(n: int, start: int, end: int, limit: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float32, device=device)
        w = torch.ones(n, device=device)
        if band > 0 and start > 0:
            w = torch.minimum(w, (i + 0.5) / band)
        if band > 0 and end < limit:
            w = torch.minimum(w, (n - i - 0.5) / band)
        return w.clamp_(0, 1)

    return ramp(crop.height, crop.top, crop.bottom, height)[:, None] * ramp(crop.width, crop.left, crop.right, width)[None]


def merge_crop(frame: torch.Tensor, crop_mask: torch.Tensor, crop: Box, band: int) -> torch.Tensor:
    """The frame's [H,W] mask with ``crop_mask`` inside ``crop``, blended over ``band`` pixels at its inner edges.

    Outside the crop the result is ``frame`` exactly; at a crop edge the crop's weight is
    1/(2*band), so the two meet without a step.
    """
    if tuple(crop_mask.shape) != (crop.height, crop.width):
        raise ValueError(f"merge_crop: the crop's mask is {list(crop_mask.shape)}, its box {crop.height}x{crop.width}")
    out = frame.clone()
    rows, cols = crop.slices()
    w = blend_weights(crop, frame.shape[-2], frame.shape[-1], band, frame.device)
    inside = out[rows, cols]
    out[rows, cols] = torch.lerp(inside, crop_mask.to(inside), w.to(inside))
    return out


def paste_crop(crop_mask: torch.Tensor, crop: Box, height: int, width: int) -> torch.Tensor:
    """An [H,W] mask that is ``crop_mask`` inside ``crop`` and 0 elsewhere."""
    out = crop_mask.new_zeros(height, width)
    out[crop.slices()] = crop_mask
    return out


def region_box(region: Any, height: int, width: int, name: str = "region") -> Box:
    """Where the user says the subject is, as a box inside an image of ``height`` x ``width``.

    ``region``: an [H,W] mask (torch or numpy; its pixels >= 0.5) at the image's size, or a box
    ``(x, y, width, height)`` in pixels (a sequence, an "x,y,w,h" string, or a dict with those
    keys as ComfyUI's BOUNDING_BOX), clipped to the image.
    """
    if isinstance(region, str):
        try:
            region = [int(round(float(v))) for v in region.replace(" ", "").split(",")]
        except ValueError:
            raise InputError(f"{name}: {region!r} is not a box; write it as x,y,width,height in pixels") from None
    if isinstance(region, dict):
        try:
            region = [region["x"], region["y"], region["width"], region["height"]]
        except KeyError:
            raise InputError(f"{name}: a box needs the keys x, y, width and height, got {sorted(region)}") from None
    if isinstance(region, Sequence) and not isinstance(region, torch.Tensor):
        if len(region) != 4:
            raise InputError(f"{name}: a box is (x, y, width, height), got {len(region)} values")
        x, y, w, h = (int(v) for v in region)
        if w < 1 or h < 1:
            raise InputError(f"{name}: the box ({x}, {y}, {w}, {h}) is empty; give it a width and height of at least 1")
        left, top = max(0, x), max(0, y)
        right, bottom = min(width, x + w), min(height, y + h)
        if right <= left or bottom <= top:
            raise InputError(f"{name}: the box ({x}, {y}, {w}, {h}) lies outside the {width}x{height} image")
        return Box(top, left, bottom - top, right - left)
    mask = torch.as_tensor(region)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise InputError(f"{name}: expected an [H,W] mask or an (x, y, width, height) box, got shape {list(mask.shape)}")
    if tuple(mask.shape) != (height, width):
        raise InputError(f"{name}: the mask is {mask.shape[0]}x{mask.shape[1]} but the image is {height}x{width}; "
                         "give a region mask of the image's size")
    box = subject_box(mask.float())
    if box is None:
        raise InputError(f"{name}: the mask is empty (no pixel >= {BOX_THRESHOLD}); mark where the subject is, or "
                         "leave the region out")
    return box


def boundary_band(mask: torch.Tensor, radius: int, low: float = 0.1, high: float = 0.9) -> torch.Tensor:
    """[H,W] bool: where the mask is unsure, widened by ``radius`` (a square's half side): within
    ``radius`` of a pixel above ``low`` and not deep inside the part at or above ``high``.

    A thin strand a low-resolution pass saw only as a faint trace is in the band, as is every edge.
    Separable max pooling, so a 6000x4000 mask costs a few passes whatever the radius.
    """
    k = 2 * radius + 1

    def dilate(x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(x[None, None].float(), (1, k), stride=1, padding=(0, radius))
        return F.max_pool2d(x, (k, 1), stride=1, padding=(radius, 0))[0, 0] > 0

    return dilate(mask > low) & dilate(mask < high)


def tile_boxes(band: torch.Tensor, tile: int, overlap: int) -> list[Box]:
    """Overlapping ``tile`` x ``tile`` boxes (clipped to the image) that hold some pixel of ``band``."""
    height, width = band.shape
    stride = max(1, tile - overlap)

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        s = list(range(0, n - tile, stride))
        return s + [n - tile]

    boxes = []
    for top in starts(height):
        for left in starts(width):
            box = Box(top, left, min(tile, height - top), min(tile, width - left))
            if bool(band[box.slices()].any()):
                boxes.append(box)
    return boxes
