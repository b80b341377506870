"""Adapters from ComfyUI's batches and widgets to pdfnet_core's calls, without importing ComfyUI.

A node hands its whole batch to one pdfnet_core call (``segment``, ``estimate_depth``), which
converts each image when it reaches it and reports ``progress(done, total)`` straight to the
node's bar; the per-image operations (refinement, foreground) run here in chunks, so memory stays
that of a few frames and a cancel is honoured between chunks.  Widget values become pdfnet_core
configs.  What a node needs from ComfyUI comes in as a ``Runtime`` (``nodes.host.ComfyRuntime``
inside ComfyUI; a fake in the tests): ``resident`` makes a model ready before each batch, and
``progress`` is the node's bar.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping, Protocol, Sequence

import torch

from pdfnet_core import (SEGREFINER_MODES, InputError, LoadedModel, Progress, RefineConfig, SegmentOptions, as_loaded,
                         batch_pair, check_image, check_mask, check_same_size, estimate_depth, estimate_foreground,
                         normalize_depth, refine_mask, refine_with_segrefiner, segment, segmenter, temporal_smooth)

# Images per chunk of the per-image operations (refinement, foreground colours).
IMAGE_CHUNK = 8


# --------------------------------------------------------------------------------------------
# inputs


def node_image(image, name: str = "image") -> torch.Tensor:
    """A ComfyUI IMAGE as RGB [B,H,W,3] (an alpha channel, as some loaders keep, is dropped)."""
    return check_image(image, name, channels=(3, 4))[..., :3]


def check_depth_for(image: torch.Tensor, depth, image_name: str = "image", depth_name: str = "depth") -> torch.Tensor:
    """``depth`` as [B,H,W] matching ``image`` [B,H,W,C]; otherwise an error saying which node to connect."""
    if isinstance(depth, torch.Tensor) and depth.ndim not in (2, 3):
        raise InputError(f"{depth_name} has shape {list(depth.shape)}, not a MASK [batch, height, width]: "
                             "connect a single-channel depth map (e.g. the depth output of PDFNet Depth Estimate, "
                             "or ImageToMask of a depth image)")
    depth = check_mask(depth, depth_name, single=True)
    batch_pair(image.shape[0], depth.shape[0], image_name, depth_name, broadcast=False)
    check_same_size(depth, image, depth_name, image_name,
                    f"the depth map must have the size of its image; resize it to {image.shape[2]}x{image.shape[1]} "
                    f"first, or leave {depth_name} unconnected and connect a depth model")
    return depth


def segmenter_of(model) -> LoadedModel:
    """The segmentation model at the node's model input, or an error naming that input."""
    try:
        return segmenter(model)
    except TypeError as exc:
        raise InputError(f"pdfnet_model: {exc}") from exc


# --------------------------------------------------------------------------------------------
# runtime: what a node needs from its host


class Runtime(Protocol):
    def resident(self, model: torch.nn.Module, memory_required: int) -> None:
        """Make ``model`` ready to run with ``memory_required`` bytes spare for activations."""

    def progress(self, total: int) -> Progress:
        """The node's progress bar, as pdfnet_core's ``progress(done, total)`` (raises when the user cancels)."""


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, max(1, size))]


# --------------------------------------------------------------------------------------------
# the model runs


def segment_images(image: torch.Tensor, model, options: SegmentOptions, runtime: Runtime, *, depth_model=None,
                   depth: torch.Tensor | None = None) -> torch.Tensor:
    """Masks [B,H,W] (foreground = 1) of a PDFNet or BiRefNet for a ComfyUI IMAGE batch.

    A model that needs no depth (BiRefNet) ignores ``depth`` and ``depth_model``.  For PDFNet: with
    ``depth`` the depth model is not used; without it ``segment`` computes the prior with
    ``depth_model`` (progress then counts both model runs).
    """
    net = segmenter_of(model)
    if not net.spec.inputs.needs_depth:
        depth = depth_model = None
    elif depth is not None:
        depth = check_depth_for(image, depth)
    elif depth_model is None:
        raise InputError("PDFNet needs depth: connect a Depth-Anything-V2 model (Load Depth-Anything-V2) to "
                         "'depth_model', or a depth map to 'depth'")
    masks = segment(image, depth, net, options=options, depth_model=depth_model, name="image",
                    progress=runtime.progress(image.shape[0]), before_run=runtime.resident)
    return torch.stack(masks)


def _per_image(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([normalize_depth(d, quantize=False) for d in maps])


def _per_batch(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    # One min/max over the whole batch: for video, so brightness does not flicker frame to frame.
    return normalize_depth(torch.stack(list(maps)), quantize=False)


DEPTH_NORMALISATIONS: Mapping[str, Callable[[Sequence[torch.Tensor]], torch.Tensor]] = {
    "per_image": _per_image,
    "per_batch": _per_batch,
}


def estimate_depth_images(image: torch.Tensor, depth_model, runtime: Runtime, *, normalization: str = "per_image",
                          input_size: int = 518) -> torch.Tensor:
    """Depth [B,H,W] in 0..1, near = 1, normalised per image or over the batch."""
    if normalization not in DEPTH_NORMALISATIONS:
        raise InputError(f"normalization must be one of {sorted(DEPTH_NORMALISATIONS)}, got {normalization!r}")
    raw = estimate_depth(image, depth_model, input_size=input_size, progress=runtime.progress(image.shape[0]),
                         name="image", before_run=runtime.resident)
    return DEPTH_NORMALISATIONS[normalization](raw)


# --------------------------------------------------------------------------------------------
# per-image operations


def map_chunks(fn: Callable[..., torch.Tensor], progress: Progress, *batches: torch.Tensor | None,
               chunk: int = IMAGE_CHUNK) -> torch.Tensor:
    """``fn`` over aligned chunks of the given batches (None passes through), concatenated.

    For per-image operations (refinement, foreground estimation): memory stays that of a chunk and
    the user can cancel between chunks.  Batches of 1 are broadcast to every chunk.
    """
    n = max(b.shape[0] for b in batches if b is not None)
    out = []
    for part in _chunks(n, chunk):
        size = part.stop - part.start
        args = [None if b is None else (b.expand(size, *b.shape[1:]) if b.shape[0] == 1 else b[part])
                for b in batches]
        out.append(fn(*args))
        progress(part.stop, n)
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# SegRefiner (model-based refinement)


class UNetCallBar:
    """One bar over a SegRefiner batch, in UNet calls (seconds each on a CPU, so a cancel is honoured
    within one call).  An image's count is known only once it runs (HR learns its patches from the
    global pass), so the images still to come are estimated at the mean count of those begun."""

    def __init__(self, progress: Progress, images: int) -> None:
        self.progress, self.images = progress, images
        self.index = 0          # the image running now
        self.before = 0         # calls of the finished images
        self.done = 0           # calls of the whole batch so far
        self.total = 1          # the batch's calls, as estimated now

    def report(self, done: int, planned: int) -> None:
        """pdfnet_core's ``progress(done, planned)`` for the current image."""
        seen = self.before + planned
        self.total = max(1, seen + round((self.images - self.index - 1) * seen / (self.index + 1)))
        self.done = self.before + done
        self.progress(self.done, self.total)

    def finished(self) -> None:
        """The current image is done (also the cancel point of an image that needed no UNet call)."""
        self.before = self.done
        self.index += 1
        if self.index == self.images:
            self.total = max(1, self.done)
        self.progress(self.done, self.total)


def segrefiner_images(image: torch.Tensor, mask: torch.Tensor, model, mode: str, seed: int,
                     runtime: Runtime) -> torch.Tensor:
    """SegRefiner over a batch, one image at a time: binary masks [B,H,W] (foreground = 1).

    One image per call because a single HR refinement already fills memory with its patch batch and
    takes minutes on a CPU.  Progress counts UNet calls and a cancel request is honoured after any
    of them.  Every image gets the same ``seed``, so an image's result does not depend on its place
    in the batch.
    """
    if mode not in SEGREFINER_MODES:
        raise InputError(f"mode must be one of {', '.join(SEGREFINER_MODES)}, got {mode!r}")
    net = as_loaded(model, "segrefiner_model")
    image = node_image(image)
    mask = check_mask(mask, "mask", single=True)
    check_same_size(image, mask, "image", "mask", "connect the mask made from this image (same size)")
    n = batch_pair(image.shape[0], mask.shape[0], "image", "mask")
    bar = UNetCallBar(runtime.progress(n), n)
    memory = net.activation_bytes(*net.spec.work_size(net.module))
    out = []
    for i in range(n):
        runtime.resident(net.module, memory)
        im = image[i if image.shape[0] > 1 else 0]
        m = mask[i if mask.shape[0] > 1 else 0]
        out.append(refine_with_segrefiner(net.module, im, m, mode=mode, seed=seed,
                                          progress=bar.report).to(torch.float32).cpu())
        bar.finished()
    return torch.stack(out)


# --------------------------------------------------------------------------------------------
# refinement and foreground


TEMPORAL_OFF = "off"


def refine_config(*, threshold: float = 0.0, threshold_high: float = 0.0, remove_islands: int = 0,
                  fill_holes: bool = False, hole_max_area: int = 0, grow: int = 0, guided_radius: int = 0,
                  guided_eps: float = 1e-3, guide: str = "color", feather: float = 0.0,
                  temporal: str = TEMPORAL_OFF, temporal_radius: int = 1, temporal_decay: float = 0.5) -> RefineConfig:
    """The node's widgets as a ``RefineConfig``; 0 (or 'off') switches a step off.

    threshold > 0 alone is a hard threshold; with threshold_high above it, a soft ramp between the
    two.  hole_max_area 0 fills holes of any size.
    """
    if threshold_high and not threshold_high > threshold:
        raise InputError(f"threshold_high ({threshold_high}) must be above threshold ({threshold}) for a soft "
                             "ramp, or 0 for a hard threshold")
    return RefineConfig(
        threshold_low=threshold if threshold > 0 else None,
        threshold_high=threshold_high if threshold > 0 and threshold_high else None,
        island_min_area=int(remove_islands),
        fill_holes=bool(fill_holes),
        hole_max_area=int(hole_max_area) if hole_max_area > 0 else None,
        grow_pixels=int(grow),
        guided_radius=int(guided_radius),
        guided_eps=float(guided_eps),
        guide=guide,
        feather_sigma=float(feather),
        temporal_method=None if temporal == TEMPORAL_OFF else temporal,
        temporal_radius=int(temporal_radius),
        temporal_decay=float(temporal_decay),
    )


def refine_masks(mask: torch.Tensor, config: RefineConfig, runtime: Runtime, image: torch.Tensor | None = None,
                 device: torch.device | str | None = None, chunk: int = IMAGE_CHUNK) -> torch.Tensor:
    """``refine_mask`` over a batch: per-image steps in chunks, the temporal step over the whole batch.

    Temporal smoothing mixes frames, so it cannot run per chunk; it runs last on the full result,
    which is the order ``refine_mask`` applies it in anyway.
    """
    mask = check_mask(mask, "mask", single=True)
    if config.guided_radius > 0:
        if image is None:
            raise InputError("guided_radius > 0 needs the 'image' input connected: the guided filter follows "
                                 "the edges of that image (or set guided_radius to 0)")
        image = node_image(image)
        check_same_size(mask, image, "mask", "image", "connect the image the mask was made from")
        batch_pair(mask.shape[0], image.shape[0], "mask", "image")
    spatial = replace(config, temporal_method=None)
    on = (lambda t: t) if device is None else (lambda t: None if t is None else t.to(device))
    out = map_chunks(lambda m, im: refine_mask(on(m), spatial, on(im)).cpu(), runtime.progress(mask.shape[0]),
                     mask, image if config.guided_radius > 0 else None, chunk=chunk)
    if config.temporal_method is not None:
        out = temporal_smooth(out, config.temporal_method, config.temporal_radius, config.temporal_decay)
    return out


def estimate_foreground_images(image: torch.Tensor, mask: torch.Tensor, method: str, runtime: Runtime,
                               device: torch.device | str | None = None, chunk: int = IMAGE_CHUNK) -> torch.Tensor:
    """Foreground colours [B,H,W,3] for a batch (an image under N masks, or N images under one mask)."""
    image = node_image(image)
    mask = check_mask(mask, "mask", single=True)
    n = batch_pair(image.shape[0], mask.shape[0], "image", "mask")
    check_same_size(image, mask, "image", "mask", "connect the mask made from this image (same size)")
    on = (lambda t: t) if device is None else (lambda t: t.to(device))
    return map_chunks(lambda im, m: estimate_foreground(on(im), on(m), method).foreground.cpu(),
                      runtime.progress(n), image, mask, chunk=chunk)


# --------------------------------------------------------------------------------------------
# ComfyUI mask polarity


def foreground_to_loadimage_mask(mask: torch.Tensor) -> torch.Tensor:
    """This pack's foreground mask (subject = 1) -> the polarity of ComfyUI's LoadImage MASK.

    LoadImage outputs MASK = 1 - alpha (transparent = 1), and JoinImageWithAlpha sets
    alpha = 1 - mask. So to cut out with JoinImageWithAlpha, or to match a mask from LoadImage,
    feed it this (1 - mask), not the foreground mask itself.
    """
    return 1 - check_mask(mask, single=True)


def loadimage_mask_to_foreground(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI LoadImage MASK (1 - alpha, transparent = 1) -> this pack's foreground mask (alpha).

    Use it on the MASK of a transparent PNG loaded by LoadImage to get its alpha as a foreground
    mask; the inverse of ``foreground_to_loadimage_mask``.
    """
    return 1 - check_mask(mask, single=True)
