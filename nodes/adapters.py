"""Adapters from ComfyUI's batches and widgets to pdfnet_core's calls, without importing ComfyUI.

A node hands its whole batch to one pdfnet_core call (``segment``, ``estimate_depth``), which
converts each image when it reaches it and reports ``progress(done, total)`` straight to the
node's bar; the per-image operations (refinement, foreground) run here in chunks, so memory stays
that of a few frames and a cancel is honoured between chunks.  Widget values become pdfnet_core
configs.  What a node needs from ComfyUI comes in as a ``Runtime`` (``nodes.host.ComfyRuntime``
inside ComfyUI, one per node execution; a fake in the tests): ``resident`` makes a model ready before
each batch, and ``progress`` is the node's bar.  A runtime that also knows the device's memory
(``DeviceMemory``) gets the node's models and memory up front, for one residency call per
execution, and sizes the batches from each family's measured activation memory and the free memory
on the load device by the CLI's rule, ``pdfnet_core.fitting_batch`` (1 on a CPU, where the tuned
path and the parity numbers assume it).  When the GPU runs out of memory, the batch is halved and the
run retried.
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Callable, Mapping, Protocol, Sequence, TypeVar, runtime_checkable

import torch

from pdfnet_core import (SEGREFINER_MODES, InputError, LoadedModel, MattingConfig, Progress, RefineConfig,
                         SegmentOptions, as_loaded, batch_pair, check_image, check_mask, check_same_size,
                         estimate_depth, estimate_foreground, fitting_batch, matte, matting_steps, normalize_depth, refine_mask,
                         refine_with_segrefiner, segment, segmenter, temporal_smooth)

log = logging.getLogger(__name__)

# Images per chunk of the per-image operations (refinement, foreground colours).
IMAGE_CHUNK = 8
# What segment() runs the depth prior at: Depth-Anything-V2's short side, images per batch
# (pdfnet_core.depth's defaults; here only for the memory estimate).
DEPTH_INPUT_SIZE = 518
DEPTH_PRIOR_BATCH = 4


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


@runtime_checkable
class DeviceMemory(Protocol):
    """What a runtime may also know of the device (``nodes.host.ComfyRuntime`` does; the fakes of
    the older tests do not, and get batches of 1 and a residency call per batch)."""

    def activation_budget(self, models: Sequence[torch.nn.Module]) -> tuple[torch.device, int] | None:
        """(load device, bytes free there for activations once ``models`` are loaded), None on a CPU."""

    def will_run(self, models: Sequence[torch.nn.Module], memory_required: int) -> None:
        """The models this execution runs and the activation memory of its largest batch: the first
        ``resident`` makes them all resident at once."""

    def free_cached_memory(self) -> None:
        """After an out-of-memory error: cached allocator blocks back to the device."""


def depth_side(height: int, width: int, input_size: int = DEPTH_INPUT_SIZE) -> tuple[int, int]:
    """Depth-Anything-V2's network size for an image, rounded up (an upper bound for the memory
    estimate: the short side to ``input_size``, each side up to a multiple of 14)."""
    scale = input_size / max(1, min(height, width))
    return (math.ceil(height * scale / 14) * 14, math.ceil(width * scale / 14) * 14)


def is_out_of_memory(exc: BaseException) -> bool:
    """A GPU out-of-memory error (torch.OutOfMemoryError, i.e. torch.cuda.OutOfMemoryError), matched
    by name so no CUDA is needed to tell."""
    return any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__)


def _out_of_memory(exc: BaseException, message: str) -> BaseException:
    # The same type, so ComfyUI still recognises it (it unloads its models after an OOM).
    try:
        return type(exc)(message)
    except Exception:
        return RuntimeError(message)


R = TypeVar("R")


def run_in_batches(run: Callable[[int], R], batch: int, runtime: Runtime, what: str, advice: str) -> R:
    """``run(batch)``; when the GPU runs out of memory, the batch is halved and ``run`` retried after
    the allocator's cache is freed (one log line each time); at batch 1 the error is raised again
    with ``advice``.  A batch does not change the results (pdfnet_core's batch invariance).  The
    retry runs the whole call again: the images of one ComfyUI IMAGE batch share one size, so every
    forward pass has the first one's shape and an out-of-memory error comes at the first (or not at
    all, short of another process taking memory meanwhile)."""
    while True:
        try:
            return run(batch)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if batch <= 1:
                raise _out_of_memory(exc, f"{what}: out of GPU memory at batch 1. {advice}") from exc
            smaller = max(1, batch // 2)
            log.warning("%s: out of GPU memory at batch %d; retrying at batch %d", what, batch, smaller)
        # Outside the except block: the failed run's frames (and their tensors) are gone by now.
        if isinstance(runtime, DeviceMemory):
            runtime.free_cached_memory()
        batch = smaller


class _Forward:
    """A progress callback that never goes back (a retried run reports from the start again)."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.done = progress, 0

    def __call__(self, done: int, total: int) -> None:
        self.done = max(self.done, done)
        self.progress(self.done, total)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, max(1, size))]


# --------------------------------------------------------------------------------------------
# the model runs


def segment_images(image: torch.Tensor, model, options: SegmentOptions, runtime: Runtime, *, depth_model=None,
                   depth: torch.Tensor | None = None, region: torch.Tensor | None = None,
                   region_box=None) -> torch.Tensor:
    """Masks [B,H,W] (foreground = 1) of a PDFNet or BiRefNet for a ComfyUI IMAGE batch.

    A model that needs no depth (BiRefNet) ignores ``depth`` and ``depth_model``.  For PDFNet: with
    ``depth`` the depth model is not used; without it ``segment`` computes the prior with
    ``depth_model`` (progress then counts both model runs).  With a ``DeviceMemory`` runtime the
    batch is sized to the free GPU memory (``options.batch_size`` on a CPU) and halved on an
    out-of-memory error.  ``region`` (a MASK) or ``region_box`` (a BOUNDING_BOX dict or an
    "x,y,width,height" string) says where the subject is: see ``segment(region=...)``.
    """
    if region is not None and region_box is not None:
        raise InputError("connect either 'region' (a mask) or 'region_box' (a box), not both")
    where = region if region is not None else region_box
    net = segmenter_of(model)
    if not net.spec.inputs.needs_depth:
        depth = depth_model = None
    elif depth is not None:
        depth = check_depth_for(image, depth)
    elif depth_model is None:
        raise InputError("PDFNet needs depth: connect a Depth-Anything-V2 model (Load Depth-Anything-V2) to "
                         "'depth_model', or a depth map to 'depth'")
    n = image.shape[0] if image.ndim == 4 else 1
    depth_net = as_loaded(depth_model, "depth_model") if depth is None and depth_model is not None else None
    batch = _plan_segment(runtime, net, depth_net, options, n, image.shape[-3], image.shape[-2])
    bar = _Forward(runtime.progress(n))

    def run(size: int) -> list[torch.Tensor]:
        return segment(image, depth, net, options=replace(options, batch_size=size), depth_model=depth_model,
                       name="image", progress=bar, before_run=runtime.resident, region=where)

    masks = run_in_batches(run, batch, runtime, "PDFNet Segment",
                           "Free GPU memory (other models, other programs), lower 'resolution', turn 'tta' off, or "
                           "load the models in bf16 or fp16.")
    return torch.stack(masks)


def _plan_segment(runtime: Runtime, net: LoadedModel, depth_net: LoadedModel | None, options: SegmentOptions,
                  images: int, height: int, width: int) -> int:
    """The segmenter's batch, and (with a DeviceMemory runtime) the execution's models and memory."""
    if not isinstance(runtime, DeviceMemory):
        return options.batch_size
    models = [net.module] + ([] if depth_net is None else [depth_net.module])
    budget = runtime.activation_budget(models)
    device = None if budget is None else budget[0]
    side = options.network_hw(net.canvas, height, width)
    batch = options.batch_size if budget is None else \
        fitting_batch(net.activation_bytes(side, 1, device=device), budget[1], images=images)
    memory = net.activation_bytes(side, batch, device=device)
    if depth_net is not None:   # the depth prior runs before the segmenter, not beside it
        memory = max(memory, depth_net.activation_bytes(depth_side(height, width), min(DEPTH_PRIOR_BATCH, images),
                                                        device=device))
    runtime.will_run(models, memory)
    return batch


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
    """Depth [B,H,W] in 0..1, near = 1, normalised per image or over the batch.

    With a ``DeviceMemory`` runtime the batch is sized to the free GPU memory (estimate_depth's
    default on a CPU) and halved on an out-of-memory error."""
    if normalization not in DEPTH_NORMALISATIONS:
        raise InputError(f"normalization must be one of {sorted(DEPTH_NORMALISATIONS)}, got {normalization!r}")
    n = image.shape[0] if image.ndim == 4 else 1
    batch = None
    if isinstance(runtime, DeviceMemory):
        net = as_loaded(depth_model, "the depth model")   # estimate_depth's name for it
        budget = runtime.activation_budget([net.module])
        device = None if budget is None else budget[0]
        side = depth_side(image.shape[-3], image.shape[-2], input_size)
        if budget is not None:
            batch = fitting_batch(net.activation_bytes(side, 1, device=device), budget[1], images=n)
        runtime.will_run([net.module], net.activation_bytes(side, batch or min(DEPTH_PRIOR_BATCH, n), device=device))
    bar = _Forward(runtime.progress(n))

    def run(size: int | None) -> list[torch.Tensor]:
        sizing = {} if size is None else {"batch_size": size}
        return estimate_depth(image, depth_model, input_size=input_size, progress=bar, name="image",
                              before_run=runtime.resident, **sizing)

    raw = run(None) if batch is None else run_in_batches(
        run, batch, runtime, "PDFNet Depth Estimate",
        "Free GPU memory (other models, other programs), lower 'input_size', or load the model in bf16 or fp16.")
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


def _segrefiner_memory(net: LoadedModel, runtime: Runtime) -> int:
    """The memory of SegRefiner's largest UNet call on the device it will run on.

    Asked before the model is resident: until then its weights sit on the offload device (the
    CPU), where the patch batch is the official 32 (10.7 GiB in fp32), so the load device comes from
    the runtime, not from the weights."""
    device = None
    if isinstance(runtime, DeviceMemory):
        budget = runtime.activation_budget([net.module])
        device = None if budget is None else budget[0]
    return net.activation_bytes(*net.spec.work_size(net.module, device), device=device)


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
    memory = _segrefiner_memory(net, runtime)
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
KEEP_OFF = "off"      # keep every component (else a key of pdfnet_core.KEEP_COMPONENT)


def refine_config(*, threshold: float = 0.0, threshold_high: float = 0.0, remove_islands: int = 0,
                  fill_holes: bool = False, hole_max_area: int = 0, grow: int = 0, guided_radius: int = 0,
                  guided_eps: float = 1e-3, guide: str = "color", feather: float = 0.0,
                  temporal: str = TEMPORAL_OFF, temporal_radius: int = 1, temporal_decay: float = 0.5,
                  keep_component: str = KEEP_OFF) -> RefineConfig:
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
        keep_component=None if keep_component == KEEP_OFF else keep_component,
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
# matting (PDFNet Matting)


def matting_config(*, network_size: int, band: float, fine_hair: float, edge_shift: int, despill: str,
                   despill_color: str, despill_strength: float, foreground: str) -> MattingConfig:
    """The Matting node's widgets as a MattingConfig (network_size 0: the mask was made at the image's
    size; despill "color" takes the key from despill_color)."""
    return MattingConfig.from_options(network_size=network_size or None, band=band, fine_hair=fine_hair,
                                      edge_shift=edge_shift, despill=despill_color if despill == "color" else despill,
                                      despill_strength=despill_strength, foreground=foreground)


def matte_images(image: torch.Tensor, mask: torch.Tensor, config: MattingConfig, runtime: Runtime,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha [B,H,W], foreground [B,H,W,3]) of a batch by ``matte``, one image at a time on ``device``:
    a 6000x4000 photo's matting takes most of a minute on a CPU, so the bar moves tile by tile and a
    cancel is honoured after the tile running.  An image under N masks or N images under one mask; sizes are
    checked before the first image runs."""
    image = node_image(image)
    mask = check_mask(mask, "mask", single=True)
    n = batch_pair(image.shape[0], mask.shape[0], "image", "mask")
    check_same_size(mask, image, "mask", "image",
                    f"resize the mask to the image's {image.shape[2]}x{image.shape[1]} first (the mask must be made "
                    "from this image)")
    on = (lambda t: t) if device is None else (lambda t: t.to(device))
    steps = matting_steps(image.shape[1], image.shape[2], config)
    bar = runtime.progress(n * steps)
    alphas, colours = [], []
    for i in range(n):
        def progress(done: int, total: int, before: int = i * steps) -> None:
            bar(before + done, n * steps)

        alpha, fg = matte(on(image[i if image.shape[0] > 1 else 0][None]), on(mask[i if mask.shape[0] > 1 else 0][None]),
                          config, progress)
        alphas.append(alpha.cpu())
        colours.append(fg.cpu())
    return torch.cat(alphas), torch.cat(colours)


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
