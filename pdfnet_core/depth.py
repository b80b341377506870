"""Relative depth from Depth-Anything-V2, computed the way the official ``infer_image`` does.

``estimate_depth`` returns relative inverse depth (larger = nearer) at each image's own size;
``depth_prior`` turns it into the 0..1 map PDFNet was trained with (per-image min-max, 8-bit).
Images arrive as RGB (ComfyUI's layout); the official function takes BGR from cv2 and swaps it
itself, so the network sees the same RGB either way.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from .families import as_loaded
from .models.depth_anything.net import PATCH_SIZE
from .ops.images import (ImageSource, chunks, group_by_size, image_sources, imagenet_normalize, minmax_per_item,
                         to_device)
from .specs import BeforeRun, LoadedModel, Progress, parameter_placement

DEFAULT_INPUT_SIZE = 518
DEFAULT_BATCH_SIZE = 4


def network_size(height: int, width: int, input_size: int = DEFAULT_INPUT_SIZE) -> tuple[int, int]:
    """The (h, w) the official preprocessing resizes an image to.

    Aspect kept so that both sides are at least ``input_size``; each side is rounded to the
    nearest multiple of 14 (half to even, like numpy), or up if that falls below ``input_size``.
    There is no upper clamp, and the long side may round down, so the aspect is only approximate.
    """
    scale_h = input_size / height
    scale_w = input_size / width
    scale = scale_w if scale_w > scale_h else scale_h   # the official tie goes to height

    def side(length: int) -> int:
        v = scale * length / PATCH_SIZE
        n = round(v) * PATCH_SIZE             # Python's round is half-to-even, as np.round
        return n if n >= input_size else math.ceil(v) * PATCH_SIZE

    return side(height), side(width)


def preprocess(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B,3,H,W] RGB in 0..1 -> the normalised float32 network input [B,3,*size].

    Bicubic (a=-0.75, half-pixel) without antialias and without clamping, done in float64 as the
    official cv2 call on a float64 image: antialiasing, uint8 resizing or clamping each move the
    output by 0.1-0.2.  The resize is separable: rows are resized to the new width in bands (a
    bicubic "resize" to the same height is exact, its weights being 0, 1, 0, 0), then columns, so
    only a band of a large photo is ever float64 (a whole 6000x4000 one would be 576 MiB).
    """
    b, c, h, w = images.shape
    if (h, w) == tuple(size):
        return imagenet_normalize(images.to(torch.float64)).to(torch.float32)
    band = max(1, _BAND_VALUES // (b * c * w))
    narrow = torch.cat([_bicubic(images[..., y0:y0 + band, :].to(torch.float64), size[1])
                        for y0 in range(0, h, band)], dim=-2)
    x = _bicubic(narrow.transpose(-1, -2), size[0]).transpose(-1, -2)
    return imagenet_normalize(x).to(torch.float32)


_BAND_VALUES = 1 << 21  # float64 values per band of preprocess (16 MiB)


def _bicubic(x: torch.Tensor, width: int) -> torch.Tensor:
    """[...,h,w] bicubic to [...,h,width] (rows only)."""
    if x.shape[-1] == width:
        return x
    return F.interpolate(x, size=(x.shape[-2], width), mode="bicubic", align_corners=False, antialias=False)


def postprocess(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B,h,w] network output -> [B,H,W] float32 at the source size (bilinear, align_corners=True)."""
    return F.interpolate(depth[:, None].float(), size=size, mode="bilinear", align_corners=True)[:, 0]


def _check_arguments(input_size: int, batch_size: int) -> None:
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < PATCH_SIZE:
        raise ValueError(f"input_size must be an integer >= {PATCH_SIZE}, got {input_size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def estimate_depth(images: Any, model: torch.nn.Module | LoadedModel, input_size: int = DEFAULT_INPUT_SIZE,
                   batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None,
                   name: str = "images", before_run: BeforeRun | None = None) -> list[torch.Tensor]:
    """Relative inverse depth for each image, as a list of [H,W] float32 CPU tensors.

    ``images``: anything ``ops.images.image_sources`` accepts (PIL, numpy HxWx3 uint8, torch
    [B,H,W,3] 0..1, or a list of those; gray and RGBA are converted).  Images of one size run
    through ``model`` together, ``batch_size`` at a time, on the model's device and dtype; each is
    converted when its batch runs.  ``progress(done, total)`` is called after each batch, counting
    images; ``before_run(module, bytes_needed)`` before each batch, with the activation memory the
    family spec estimates for it.
    """
    _check_arguments(input_size, batch_size)
    sources = image_sources(images, name)
    _check_sizes(sources, [f"{name}[{i}]" for i in range(len(sources))])
    net = as_loaded(model, "the depth model")
    results: list[torch.Tensor | None] = [None] * len(sources)
    done = 0
    for indices, depth in depth_batches(sources, net, input_size, batch_size, before_run):
        host = [d.cpu() for d in depth]   # one transfer back per image
        check_finite(host, [sources[i].name for i in indices], net.dtype)
        for i, d in zip(indices, host):
            results[i] = d
        done += len(indices)
        if progress is not None:
            progress(done, len(sources))
    return results  # type: ignore[return-value]


def _check_sizes(sources: Sequence[ImageSource], names: Sequence[str]) -> None:
    for source, shown in zip(sources, names):
        if source.height < PATCH_SIZE or source.width < PATCH_SIZE:
            raise ValueError(f"{shown} is {source.height}x{source.width}: depth needs images of at least "
                             f"{PATCH_SIZE}x{PATCH_SIZE} pixels (one patch)")


def depth_batches(sources: Sequence[ImageSource], net: LoadedModel, input_size: int = DEFAULT_INPUT_SIZE,
                  batch_size: int = DEFAULT_BATCH_SIZE, before_run: BeforeRun | None = None,
                  ) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
    """(indices, depth maps) per batch of same-size images: the work of ``estimate_depth``, batch by batch.

    Everything runs on the model's device (where ``before_run`` left it): each image goes there once,
    and the resize, normalisation and the resize back happen there.  The maps stay there, float32
    [H,W]; on a CPU they are checked for NaN here, elsewhere by the caller on its host copy
    (``check_finite``), so the GPU is never waited for in the middle of the work.
    """
    _check_sizes(sources, [s.name for s in sources])
    for (h, w), indices in group_by_size([(s.height, s.width) for s in sources]).items():
        target = network_size(h, w, input_size)
        for batch in chunks(indices, batch_size):
            if before_run is not None:
                before_run(net.module, net.activation_bytes(target, len(batch)))
            device, dtype = parameter_placement(net.module)   # where before_run left it
            # resized one by one: a batch of large float64 sources would cost 24 bytes/pixel
            x = torch.cat([preprocess(to_device(sources[i].rgb()[None], device), target) for i in batch])
            with torch.inference_mode():
                depth = postprocess(net.module(x.to(dtype=dtype)), (h, w))
            # own storage, so one map does not pin the whole batch (and, made outside inference
            # mode, a tensor callers may change in place)
            maps = [d.clone() for d in depth]
            if device.type == "cpu":
                check_finite(maps, [sources[i].name for i in batch], dtype)
            yield list(batch), maps


def check_finite(maps: Sequence[torch.Tensor], names: Sequence[str], dtype: torch.dtype) -> None:
    """Depth maps (host copies) without NaN or inf, else an error that says what to change."""
    bad = [name for name, m in zip(names, maps) if not torch.isfinite(m).all()]
    if bad:
        raise FloatingPointError(
            f"the depth model produced NaN or inf for {', '.join(bad)} in {dtype}; half precision can "
            "overflow here: load the model in float32 or bfloat16")


def normalize_depth(depth: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """Per-map min-max to 0..1, optionally quantised to 8 bits as PDFNet's training depth was.

    The training maps were ``(d - min) / (max - min) * 255`` written by ``cv2.imwrite``, whose
    float-to-uint8 conversion rounds half to even and saturates; ``torch.round`` rounds the same
    way.  (The files were JPEG as well; that lossy step is not reproduced.)  A constant map has
    no depth information and gives zeros rather than NaN.
    """
    scaled = minmax_per_item(depth[None])[0].mul_(255.0)  # a new tensor, then in place
    if quantize:
        scaled.round_().clamp_(0, 255)
    return scaled.div_(255.0)


def depth_prior(images: Any, model: torch.nn.Module | LoadedModel, quantize: bool = True,
                input_size: int = DEFAULT_INPUT_SIZE, batch_size: int = DEFAULT_BATCH_SIZE,
                progress: Progress | None = None, name: str = "images",
                before_run: BeforeRun | None = None) -> list[torch.Tensor]:
    """PDFNet's depth input: per-image 0..1 depth (near = 1) at each source size, float32 CPU."""
    depths = estimate_depth(images, model, input_size, batch_size, progress, name, before_run)
    return [normalize_depth(d, quantize) for d in depths]

