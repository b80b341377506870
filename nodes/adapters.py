"""What the node layer needs beyond one call into pdfnet_core, without importing ComfyUI.

Everything here is plain Python/torch so CI tests it without a ComfyUI install: model-name checks
and the choices a loader offers, the batch/shape checks whose messages name a node's inputs,
widget values turned into pdfnet_core options, and the chunked loops that put residency and
progress around pdfnet_core's functions.  What a loop needs from ComfyUI comes in as a
``Runtime`` (``nodes.comfy_models.ComfyRuntime`` inside ComfyUI; a fake in the tests).
"""
from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import Callable, Mapping, Protocol, Sequence

import torch

from pdfnet_core.cache import activation_bytes_estimate
from pdfnet_core.registry import hf_url, known_files, lookup

# Only these are offered by the loaders: a models folder often holds READMEs, configs and
# half-finished downloads that must not appear in the list.
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt", ".bin")

# Images per outer chunk.  pdfnet_core converts its input to float CHW copies (and the depth
# prior to full-size maps), so a 1000-frame video handed over at once would double its memory;
# in chunks the extra memory stays that of a few frames whatever the batch size.
IMAGE_CHUNK = 8
# Depth-Anything images per forward pass (estimate_depth's own default).
DEPTH_BATCH = 4


class NodeInputError(ValueError):
    """A problem with what the user wired or chose; the message names the input and the fix."""


# --------------------------------------------------------------------------------------------
# model names and choices


def is_weight_file(name: str) -> bool:
    return name.lower().endswith(WEIGHT_SUFFIXES)


def model_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a file inside a models folder, or None if it can.

    Sub-folders are fine (ComfyUI lists files in them as ``sub/name.pth``); what is refused is a
    name that would lead out of the folder: absolute paths, drive letters, ``..`` parts, NUL.
    """
    if not isinstance(name, str) or not name.strip():
        return "is empty"
    if "\x00" in name:
        return "contains a NUL character"
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ":" in name:
        return "contains ':'"
    if any(part in ("..", "") for part in re.split(r"[\\/]", name)):
        return "has '..' or empty path parts"
    return None


def model_choices(present: Sequence[str], folder_key: str) -> list[str]:
    """The loader's list: weight files found in the folder, then known files not yet there.

    Known files that are absent stay in the list so a workflow that names one still loads; the
    loader says where to get it, or downloads it when its download toggle is on.
    """
    found = sorted({p for p in present if is_weight_file(p)}, key=str.lower)
    have = {os.path.basename(p) for p in found}
    return found + [e.filename for e in known_files(folder_key) if e.filename not in have]


def missing_model_message(folder_key: str, name: str, folders: Sequence[str], download: bool) -> str:
    """What to do about a chosen file that is in none of the folders."""
    where = ", ".join(folders) if folders else f"models/{folder_key}"
    first = folders[0] if folders else f"models/{folder_key}"
    entry = lookup(os.path.basename(name))
    if entry is None or entry.folder_key != folder_key:
        return (f"model_name {name!r} is not in the '{folder_key}' models folder ({where}); place the file "
                f"in {first}, or choose another file")
    if not entry.on_hub:
        # Published outside the hub (SegRefiner: Google Drive only): the download toggle cannot help,
        # so the message must not suggest it.
        return (f"model_name {name!r} is not in the '{folder_key}' models folder ({where}): it cannot be "
                f"downloaded automatically; download it by hand from {entry.manual_url} and place it in {first} "
                f"(keep the name {entry.filename})")
    if download:
        return ""   # the loader will fetch it
    return (f"model_name {name!r} is not in the '{folder_key}' models folder ({where}): turn on 'download' "
            f"to fetch it from {hf_url(entry)}, or download it by hand and place it in {first}")


# BiRefNet's patch-channel order (see pdfnet_core.models.birefnet): the file cannot tell, so the
# loader offers the registry's order for known files ("auto") and lets the user override it.
PATCH_ORDER_AUTO = "auto"


def birefnet_patch_order(choice: str, name: str) -> str:
    """The loader's patch_order widget as "legacy" or "current".

    Resolved here rather than left to load_birefnet(None) so the model cache keys on the order
    actually used: 'auto' and the explicit order it stands for then share one model.
    """
    from pdfnet_core.birefnet_loader import DEFAULT_PATCH_ORDER
    from pdfnet_core.registry import PATCH_ORDERS

    if choice == PATCH_ORDER_AUTO:
        entry = lookup(os.path.basename(name))
        if entry is not None and entry.arch == "birefnet" and entry.patch_order:
            return entry.patch_order
        return DEFAULT_PATCH_ORDER
    if choice not in PATCH_ORDERS:
        raise NodeInputError(f"patch_order must be one of {PATCH_ORDER_AUTO}, {', '.join(PATCH_ORDERS)}; "
                             f"got {choice!r}")
    return choice


# --------------------------------------------------------------------------------------------
# inputs of the image nodes


def check_image(image, name: str = "image") -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (3, 4):
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise NodeInputError(f"{name}: expected a ComfyUI IMAGE [batch, height, width, 3], got {shape}")
    if image.shape[0] == 0:
        raise NodeInputError(f"{name} is an empty batch")
    return image


def check_depth_for(image: torch.Tensor, depth, image_name: str = "image", depth_name: str = "depth") -> torch.Tensor:
    """``depth`` as [B,H,W] matching ``image`` [B,H,W,C]; otherwise an error saying what to fix."""
    if not isinstance(depth, torch.Tensor):
        raise NodeInputError(f"{depth_name}: expected a MASK tensor, got {type(depth).__name__}")
    if depth.ndim == 2:
        depth = depth[None]
    if depth.ndim != 3:
        raise NodeInputError(f"{depth_name} has shape {list(depth.shape)}, not a MASK [batch, height, width]: "
                             "connect a single-channel depth map (e.g. the depth output of PDFNet Depth Estimate, "
                             "or ImageToMask of a depth image)")
    n_img, h, w = image.shape[0], image.shape[1], image.shape[2]
    if depth.shape[0] != n_img:
        raise NodeInputError(f"{depth_name} holds {depth.shape[0]} map(s) but {image_name} holds {n_img} image(s): "
                             f"pass one depth map per image (same batch size, same order)")
    if tuple(depth.shape[1:]) != (h, w):
        raise NodeInputError(f"{depth_name} is {depth.shape[2]}x{depth.shape[1]} (WxH) but {image_name} is {w}x{h}: "
                             f"the depth map must have the size of its image; resize it to {w}x{h} first, or leave "
                             f"{depth_name} unconnected and connect a depth model")
    return depth


def as_mask_batch(mask, name: str = "mask") -> torch.Tensor:
    """A ComfyUI MASK as [B,H,W] (some nodes hand out a single [H,W] mask)."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise NodeInputError(f"{name}: expected a MASK [batch, height, width], got {shape}")
    return mask[None] if mask.ndim == 2 else mask


# --------------------------------------------------------------------------------------------
# depth normalisation


def _per_image(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    from pdfnet_core.depth import normalize_depth

    return torch.stack([normalize_depth(d, quantize=False) for d in maps])


def _per_batch(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    # One min/max over the whole batch: for video, so brightness does not flicker frame to frame.
    from pdfnet_core.depth import normalize_depth

    return normalize_depth(torch.stack(list(maps)), quantize=False)


DEPTH_NORMALISATIONS: Mapping[str, Callable[[Sequence[torch.Tensor]], torch.Tensor]] = {
    "per_image": _per_image,
    "per_batch": _per_batch,
}


# --------------------------------------------------------------------------------------------
# runtime: what a loop needs from its host


class Progress(Protocol):
    def step(self, count: int = 1) -> None:
        """``count`` more units of work are done (and the user may have cancelled: raise then)."""


class Runtime(Protocol):
    def resident(self, model: torch.nn.Module, memory_required: int) -> None:
        """Make ``model`` ready to run with ``memory_required`` bytes spare for activations."""

    def progress(self, total: int) -> Progress:
        """A progress reporter for ``total`` units of work."""


def pipeline_callback(progress: Progress) -> Callable[[int, int], None]:
    """pdfnet_core's ``progress(done, total)`` (cumulative per call) as increments of ``progress``."""
    last = 0

    def report(done: int, total: int) -> None:
        nonlocal last
        if done > last:
            progress.step(done - last)
            last = done

    return report


def _param(model: torch.nn.Module) -> torch.Tensor:
    p = next(model.parameters(), None)
    if p is None:
        raise NodeInputError(f"the {type(model).__name__} has no weights; load it with its loader node")
    return p


# pdfnet_core.pipeline's segmenter kind -> pdfnet_core.cache's activation formula.
SEGMENTER_ACTIVATIONS: Mapping[str, str] = {"PDFNet": "pdfnet", "BiRefNet": "birefnet"}


def segmenter_kind(model):
    """pipeline.segmenter_kind, with its error as a message about the node's model input."""
    from pdfnet_core.pipeline import segmenter_kind as kind_of

    try:
        return kind_of(model)
    except TypeError as exc:
        raise NodeInputError(f"pdfnet_model: {exc}") from exc


def segment_memory(model: torch.nn.Module, options) -> int:
    """Activation estimate for one forward pass of the segmenter at the options' size (TTA: its largest scale)."""
    side = options.size
    if options.tta:
        side = max(32, int(round(options.size * max(options.tta_scales) / 32)) * 32)
    arch = SEGMENTER_ACTIVATIONS[segmenter_kind(model).name]
    variant = getattr(getattr(model, "config", None), "name", None)
    return activation_bytes_estimate(arch, side, options.batch_size, _param(model).dtype, variant=variant)


pdfnet_memory = segment_memory   # the earlier name


def depth_memory(depth_model: torch.nn.Module, height: int, width: int, batch: int,
                 input_size: int = 518) -> int:
    from pdfnet_core.depth import network_size

    variant = getattr(getattr(depth_model, "config", None), "variant", None)
    return activation_bytes_estimate("depth_anything", network_size(height, width, input_size),
                                     min(batch, DEPTH_BATCH), _param(depth_model).dtype, variant=variant)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, max(1, size))]


# --------------------------------------------------------------------------------------------
# the loops the nodes run


def segment_images(image: torch.Tensor, model: torch.nn.Module, options, runtime: Runtime, *,
                   depth_model: torch.nn.Module | None = None, depth: torch.Tensor | None = None,
                   chunk: int = IMAGE_CHUNK) -> torch.Tensor:
    """Masks [B,H,W] (foreground = 1) of a PDFNet or BiRefNet for a ComfyUI IMAGE batch, in chunks.

    A model that needs no depth (BiRefNet) ignores ``depth`` and ``depth_model``.  For PDFNet: with
    ``depth`` the depth model is not used; without it the depth prior is computed here, chunk by
    chunk, exactly as ``segment`` computes it itself (so the result is the same), but with progress
    and residency around each model.
    """
    from pdfnet_core.depth import depth_prior
    from pdfnet_core.pipeline import segment

    image = check_image(image)
    options.validate()
    if not segmenter_kind(model).needs_depth:
        depth = depth_model = None
        n = image.shape[0]
        progress = runtime.progress(n)
        masks = []
        for part in _chunks(n, chunk):
            runtime.resident(model, segment_memory(model, options))
            masks.extend(segment(image[part, ..., :3], None, model, options=options,
                                 progress=pipeline_callback(progress)))
        return torch.stack(masks)
    if depth is not None:
        depth = check_depth_for(image, depth)
    elif depth_model is None:
        raise NodeInputError("PDFNet needs depth: connect a Depth-Anything-V2 model (Load Depth-Anything-V2) to "
                             "'depth_model', or a depth map to 'depth'")
    n, h, w = image.shape[0], image.shape[1], image.shape[2]
    progress = runtime.progress(n if depth is not None else 2 * n)
    masks: list[torch.Tensor] = []
    for part in _chunks(n, chunk):
        images = image[part, ..., :3]
        if depth is None:
            runtime.resident(depth_model, depth_memory(depth_model, h, w, images.shape[0]))
            maps = depth_prior(images, depth_model, quantize=options.quantize_depth, batch_size=DEPTH_BATCH,
                               progress=pipeline_callback(progress), name="image")
        else:
            maps = depth[part]
        runtime.resident(model, segment_memory(model, options))
        masks.extend(segment(images, maps, model, options=options, progress=pipeline_callback(progress)))
    return torch.stack(masks)


def estimate_depth_images(image: torch.Tensor, depth_model: torch.nn.Module, runtime: Runtime, *,
                          normalization: str = "per_image", input_size: int = 518,
                          chunk: int = IMAGE_CHUNK) -> torch.Tensor:
    """Depth [B,H,W] in 0..1, near = 1, normalised per image or over the batch."""
    from pdfnet_core.depth import estimate_depth

    image = check_image(image)
    if normalization not in DEPTH_NORMALISATIONS:
        raise NodeInputError(f"normalization must be one of {sorted(DEPTH_NORMALISATIONS)}, got {normalization!r}")
    n, h, w = image.shape[0], image.shape[1], image.shape[2]
    progress = runtime.progress(n)
    raw: list[torch.Tensor] = []
    for part in _chunks(n, chunk):
        images = image[part, ..., :3]
        runtime.resident(depth_model, depth_memory(depth_model, h, w, images.shape[0], input_size))
        raw.extend(estimate_depth(images, depth_model, input_size=input_size, batch_size=DEPTH_BATCH,
                                  progress=pipeline_callback(progress), name="image"))
    return DEPTH_NORMALISATIONS[normalization](raw)


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
        progress.step(size)
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# SegRefiner (model-based refinement)


def segrefiner_memory(model: torch.nn.Module) -> int:
    """Activations of the largest UNet call SegRefiner makes: a batch of its 256² patches."""
    from pdfnet_core.segrefiner_modes import SemanticConfig

    cfg = getattr(model, "semantic_cfg", SemanticConfig())
    return activation_bytes_estimate("segrefiner", cfg.model_size, cfg.batch_max, _param(model).dtype)


def pair_batches(image: torch.Tensor, mask: torch.Tensor) -> int:
    """How many (image, mask) pairs: equal counts, or one of either for all; else a clear error."""
    n_img, n_mask = image.shape[0], mask.shape[0]
    if n_img != n_mask and 1 not in (n_img, n_mask):
        raise NodeInputError(f"image holds {n_img} images and mask holds {n_mask} masks: pass one mask per image "
                             "(same batch size, same order), or one mask for all images")
    if image.shape[1:3] != mask.shape[1:3]:
        raise NodeInputError(f"image is {image.shape[2]}x{image.shape[1]} (WxH) but mask is {mask.shape[2]}x"
                             f"{mask.shape[1]}: connect the mask made from this image (same size)")
    return max(n_img, n_mask)


def segrefine_images(image: torch.Tensor, mask: torch.Tensor, model: torch.nn.Module, mode: str, seed: int,
                     runtime: Runtime) -> torch.Tensor:
    """SegRefiner over a batch, one image at a time: binary masks [B,H,W] (foreground = 1).

    One image per call because a single HR refinement already fills memory with its patch batch and
    takes minutes on a CPU; stepping the progress after each image is also where a cancel request is
    honoured.  Every image gets the same ``seed``, so an image's result does not depend on its place
    in the batch.
    """
    from pdfnet_core.segrefiner import MODES, refine_with_segrefiner

    if mode not in MODES:
        raise NodeInputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    image = check_image(image)[..., :3]
    mask = as_mask_batch(mask)
    n = pair_batches(image, mask)
    progress = runtime.progress(n)
    memory = segrefiner_memory(model)
    out = []
    for i in range(n):
        runtime.resident(model, memory)
        im = image[i if image.shape[0] > 1 else 0]
        m = mask[i if mask.shape[0] > 1 else 0]
        out.append(refine_with_segrefiner(model, im, m, mode=mode, seed=seed).to(torch.float32).cpu())
        progress.step(1)
    return torch.stack(out)


# --------------------------------------------------------------------------------------------
# refinement widgets -> RefineConfig


TEMPORAL_OFF = "off"


def refine_config(*, threshold: float = 0.0, threshold_high: float = 0.0, remove_islands: int = 0,
                  fill_holes: bool = False, hole_max_area: int = 0, grow: int = 0, guided_radius: int = 0,
                  guided_eps: float = 1e-3, guide: str = "color", feather: float = 0.0,
                  temporal: str = TEMPORAL_OFF, temporal_radius: int = 1, temporal_decay: float = 0.5):
    """The node's widgets as a ``RefineConfig``; 0 (or 'off') switches a step off.

    threshold > 0 alone is a hard threshold; with threshold_high above it, a soft ramp between the
    two.  hole_max_area 0 fills holes of any size.
    """
    from pdfnet_core.refine import RefineConfig

    if threshold_high and not threshold_high > threshold:
        raise NodeInputError(f"threshold_high ({threshold_high}) must be above threshold ({threshold}) for a soft "
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


def refine_masks(mask: torch.Tensor, config, runtime: Runtime, image: torch.Tensor | None = None,
                 device: torch.device | str | None = None, chunk: int = IMAGE_CHUNK) -> torch.Tensor:
    """``refine_mask`` over a batch: per-image steps in chunks, the temporal step over the whole batch.

    Temporal smoothing mixes frames, so it cannot run per chunk; it runs last on the full result,
    which is the order ``refine_mask`` applies it in anyway.
    """
    from pdfnet_core.refine import refine_mask, temporal_smooth

    mask = as_mask_batch(mask)
    if config.guided_radius > 0:
        if image is None:
            raise NodeInputError("guided_radius > 0 needs the 'image' input connected: the guided filter follows "
                                 "the edges of that image (or set guided_radius to 0)")
        image = check_image(image)
        if image.shape[0] not in (1, mask.shape[0]) or image.shape[1:3] != mask.shape[1:3]:
            raise NodeInputError(f"image is {list(image.shape[:3])} and mask is {list(mask.shape)} ([batch, height, "
                                 "width]): connect the image the mask was made from (one per mask, same size)")
        image = image[..., :3]
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
    from pdfnet_core.foreground import estimate_foreground

    image = check_image(image)[..., :3]
    mask = as_mask_batch(mask)
    if image.shape[0] not in (1, mask.shape[0]) and mask.shape[0] != 1:
        raise NodeInputError(f"image holds {image.shape[0]} images and mask holds {mask.shape[0]} masks: pass one "
                             "mask per image, or one of either for all")
    if image.shape[1:3] != mask.shape[1:3]:
        raise NodeInputError(f"image is {image.shape[2]}x{image.shape[1]} (WxH) but mask is {mask.shape[2]}x"
                             f"{mask.shape[1]}: connect the mask made from this image (same size)")
    on = (lambda t: t) if device is None else (lambda t: t.to(device))
    n = max(image.shape[0], mask.shape[0])
    return map_chunks(lambda im, m: estimate_foreground(on(im), on(m), method).foreground.cpu(),
                      runtime.progress(n), image, mask, chunk=chunk)
