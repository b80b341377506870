"""Decoding sources and encoding outputs: plain functions, safe to call from worker threads."""
from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..atomic_files import atomic_write
from ..ops.images import pil_to_array, to_mask_list, to_rgb_list, to_uint8
from .config import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV
from .jobs import Job, open_source


# PIL reads its decompression-bomb limit from a module global when a file is opened: decoder
# threads take turns to open, each with its own budget in force.
_OPEN_LOCK = threading.Lock()


def _open(fh, max_pixels: int):
    """``Image.open`` with PIL's own bomb limit set to our budget (we check the header ourselves)."""
    with _OPEN_LOCK:
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(fh)
        finally:
            Image.MAX_IMAGE_PIXELS = before
    try:
        _check_pixels(im, max_pixels)
    except ValueError:
        im.close()
        raise
    return im


def _check_pixels(im, max_pixels: int) -> None:
    w, h = im.size
    if w * h > max_pixels:
        raise ValueError(f"{w}x{h} ({w * h:,} pixels) is above the pixel budget of {max_pixels:,} pixels; "
                         f"raise --max-pixels (or {MAX_PIXELS_ENV}) to process it")


def _unreadable():
    return UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError


def read_image(source: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """An RGB float tensor [H,W,3] (orientation from EXIF applied), or a ValueError saying why not.

    An image over ``max_pixels`` is refused from its header size, before it is decoded.
    """
    try:
        with open_source(str(source)) as fh, _open(fh, max_pixels) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode == "CMYK":
                im = im.convert("RGB")
            arr = pil_to_array(im)
    except _unreadable() as exc:
        raise ValueError(f"not a readable image ({exc})") from exc
    return to_rgb_list(arr, str(source))[0].permute(1, 2, 0)


def header_size(source: str) -> tuple[int, int] | None:
    """(height, width) after EXIF orientation, from the header only; None if unreadable (reported
    when the input is decoded)."""
    try:
        with open_source(source) as fh, Image.open(fh) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Exception:
        return None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def read_depth(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """A depth map [H,W] float32 (any scale, 8- or 16-bit files) from an image file."""
    try:
        with open(path, "rb") as fh, _open(fh, max_pixels) as im:
            im.load()
            return to_mask_list(im, str(path))[0]
    except _unreadable() as exc:
        raise ValueError(f"depth map {path} is not a readable image ({exc})") from exc


def write_array(arr: np.ndarray, path: Path) -> Path:
    """Save an 8-bit array as PNG or lossless WebP, atomically (``files.atomic_write``); PIL's
    encoders release the GIL, so writer threads overlap with the model."""
    image = Image.fromarray(arr)
    fmt = "WEBP" if path.suffix == ".webp" else "PNG"
    return atomic_write(path, lambda fh: image.save(fh, format=fmt, **({"lossless": True} if fmt == "WEBP" else {})))


def write_image(tensor: torch.Tensor, path: Path) -> Path:
    """Save [H,W,C] float 0..1 (C = 1, 3 or 4) as 8-bit PNG/WebP, atomically."""
    return write_array(to_uint8(tensor), path)


def size_order(todo: list[Job], threads: int) -> list[Job]:
    """``todo`` ordered by image size (read from the headers), unreadable ones last, else stable."""
    with ThreadPoolExecutor(threads) as pool:
        sizes = list(pool.map(lambda job: header_size(job.source), todo))
    return [job for _, job in sorted(zip(sizes, todo), key=lambda pair: (pair[0] is None, pair[0] or (0, 0)))]
