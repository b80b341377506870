"""``segment()``: images of any size in, foreground alpha (1 = object) at each source size out.

Pre-processing follows how PDFNet was trained (DIS5K loader): image and depth are resized with
bilinear ``align_corners=True`` to a square network size (default 1024, the training size), the
image is ImageNet-normalised, the depth is min-max normalised by the model.  The probability map
is resized back to the source size as float (no 8-bit round trip).

The work goes chunk by chunk (``CHUNK`` images, or more for a large batch size): each image of a
chunk is converted once, the depth model (when the prior is computed) runs over the chunk, then
the segmenter in batches.  Memory stays that of a chunk whatever the number of images.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .defaults import default_model
from .depth import depth_batches, normalize_depth
from .families import FAMILIES, as_loaded
from .ops.checks import InputError
from .ops.images import (ImageSource, chunks, image_sources, imagenet_normalize, resize_bilinear, to_device,
                         to_mask_list)
from .ops.subject import (MARGIN, MIN_GAIN, TILE_RATIO, Box, blend_weights, boundary_band, margin_pixels, merge_crop,
                          paste_crop, region_box, subject_box, subject_gain, tile_boxes, with_margin)
from .segment_options import RESIZE_MODES, Canvas, SegmentOptions, tta_side
from .specs import BeforeRun, LoadedModel, Progress, parameter_placement

# Images converted and depth-estimated together (rounded up to whole batches).
CHUNK = 8


# --------------------------------------------------------------------------------------------
# where a source image sits inside the network input


@dataclass(frozen=True)
class Placement:
    """The source (H, W) is resized to (h, w) and put at (top, left) of the network canvas: S x S
    for ``size`` S, or (height, width) for a non-square canvas (BiRefNet_lite-2K, _dynamic)."""

    size: int | tuple[int, int]
    h: int
    w: int
    top: int
    left: int

    @property
    def canvas_hw(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else self.size

    def to_network(self, x: torch.Tensor, pad_mode: str,
                   transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """[B,C,H,W] -> [B,C,*canvas_hw]; the border is zero ('constant') or the edge values ('replicate').

        ``transform`` is applied between the resize and the pad (at network size, not source size).
        """
        x = resize_bilinear(x, (self.h, self.w), align_corners=True)
        if transform is not None:
            x = transform(x)
        ch, cw = self.canvas_hw
        pads = (self.left, cw - self.w - self.left, self.top, ch - self.h - self.top)
        if not any(pads):
            return x
        return F.pad(x, pads, mode=pad_mode)

    def from_network(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """[B,C,*canvas_hw] -> [B,C,height,width]."""
        x = x[..., self.top:self.top + self.h, self.left:self.left + self.w]
        if (self.h, self.w) == (height, width):
            return x
        shrink = height < self.h or width < self.w
        return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)


def squash_placement(height: int, width: int, size: int | tuple[int, int]) -> Placement:
    ch, cw = (size, size) if isinstance(size, int) else size
    return Placement(size, ch, cw, 0, 0)


def pad_placement(height: int, width: int, size: int | tuple[int, int]) -> Placement:
    ch, cw = (size, size) if isinstance(size, int) else size
    scale = min(ch / height, cw / width)
    h, w = max(1, min(ch, round(height * scale))), max(1, min(cw, round(width * scale)))
    return Placement(size, h, w, (ch - h) // 2, (cw - w) // 2)


# (source height, source width, canvas side or (height, width)) -> Placement
PLACEMENTS: dict[str, Callable[[int, int, int | tuple[int, int]], Placement]] = {
    "squash": squash_placement, "pad": pad_placement}
if tuple(PLACEMENTS) != RESIZE_MODES:
    raise AssertionError(f"placements {tuple(PLACEMENTS)} differ from the resize modes {RESIZE_MODES}")


# --------------------------------------------------------------------------------------------
# segmentation models


def segmenter(model: nn.Module | LoadedModel) -> LoadedModel:
    """``model`` with its family spec, if it is a model ``segment()`` can run; else a TypeError."""
    loaded = as_loaded(model, "model")
    if loaded.spec.segment is None:
        raise TypeError(f"segment() does not run a {loaded.spec.label} model; pass a segmentation model "
                        f"({', '.join(s.label for s in FAMILIES.values() if s.segment is not None)})")
    return loaded


# --------------------------------------------------------------------------------------------
# test-time augmentation


def tta_logits(net: LoadedModel, image: torch.Tensor, depth: torch.Tensor | None,
               scales: Sequence[float]) -> torch.Tensor:
    """Mean logits over horizontal flip x scales, each pass mapped back to the input size.

    As the paper's evaluation (ttach): bilinear align_corners=False for the scale changes.
    """
    run = net.spec.segment
    assert run is not None, "tta_logits takes a segmenter (pipeline.segmenter)"
    height, width = image.shape[-2:]
    multiple = net.spec.inputs.size_multiple
    total = None
    passes = 0
    for scale in scales:
        hw = (tta_side(height, scale, multiple), tta_side(width, scale, multiple))
        img_s = resize_bilinear(image, hw, align_corners=False)
        dep_s = None if depth is None else resize_bilinear(depth, hw, align_corners=False)
        for flip in (False, True):
            i = img_s.flip(-1) if flip else img_s
            d = dep_s.flip(-1) if flip and dep_s is not None else dep_s
            out = run(net.module, i, d)
            out = out.flip(-1) if flip else out
            out = resize_bilinear(out, (height, width), align_corners=False).float()
            total = out if total is None else total + out
            passes += 1
    assert total is not None, "tta_scales is empty"
    return total / passes


# --------------------------------------------------------------------------------------------
# the pipeline


def segment(images: Any, depth: Any = None, model: nn.Module | LoadedModel | None = None, *,
            options: SegmentOptions | None = None, depth_model: nn.Module | LoadedModel | None = None,
            progress: Progress | None = None, before_run: BeforeRun | None = None, name: str = "images",
            region: Any = None, **overrides) -> list[torch.Tensor]:
    """Foreground alpha in 0..1 ([H, W] float32 on the CPU, one per image, at its source size).

    images: PIL image(s), numpy array(s) or a torch [B,H,W,3] / [H,W,3] float tensor (ComfyUI IMAGE).
    depth:  depth maps matching the images (any scale; larger = nearer), or None to compute the
            prior with ``depth_model`` (Depth-Anything-V2).
    model:  a PDFNet from ``load_pdfnet`` (or a BiRefNet from ``load_birefnet``, which needs no
            depth).  ``segment(model, images, depth)`` works too.  None: the default PDFNet
            (``PDFNet_Best.pth`` in $PDFNET_MODELS_DIR/pdfnet, see pdfnet_core.defaults).
    depth_model: used when ``depth`` is None; None: the default Depth-Anything-V2 Small from the
            same models folder.
    options / overrides: see SegmentOptions (e.g. ``size=1024, resize="pad", tta=True``).
    progress(done, total) is called after every batch of a model, counting one unit per image per
    model run (so 2 per image when the depth prior is computed here); a second pass (``second_pass``)
    adds its units to ``total`` once the first pass has decided it; raising from it stops the work.
    before_run(module, bytes_needed) is called before each batch of a model with the activation
    memory its family spec estimates for that batch; the model runs where it is after that call.
    name: how errors name the images ("images[3] contains NaN").
    region: where the subject is, one per image (or one for all): an [H,W] mask or an (x, y, width,
            height) box (see ops.subject.region_box).  The region's crop, with a margin of context, is
            segmented as the image, and its mask is pasted back inside the region, 0 outside.
    """
    if isinstance(images, (nn.Module, LoadedModel)):  # segment(model, images, depth) call form
        images, depth, model = depth, model, images
    opts = _options(options, overrides)
    if (isinstance(images, (list, tuple)) and len(images) == 0) or \
            (isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[0] == 0):
        # no images: no masks, with or without a depth model, and no default model is loaded
        if model is not None:
            segmenter(model)
        return []
    sources = image_sources(images, name)
    net = segmenter(model if model is not None else default_model("pdfnet"))
    canvas = net.canvas
    if (problem := canvas.problem(opts.size)) is not None:   # before the depth model loads
        raise InputError(f"{net.describe()}: {problem}")
    given = _given_depth(depth, sources, name) if net.spec.inputs.needs_depth and depth is not None else None
    depth_net = None
    if net.spec.inputs.needs_depth and depth is None:
        depth_net = as_loaded(depth_model if depth_model is not None else default_model("depth_anything", net.device),
                              "depth_model")
    units = 1 if depth_net is None else 2
    count = _Count(progress, len(sources) * units)
    boxes = _regions(region, sources) if region is not None else None
    memory = net.activation_bytes(_largest_hw(opts, canvas, sources), opts.batch_size)
    chunk = opts.batch_size * -(-CHUNK // opts.batch_size)
    results: list[torch.Tensor] = []
    for part in chunks(range(len(sources)), chunk):
        images_now = [sources[i].converted() for i in part]   # each image converted once
        maps: list[torch.Tensor | None] = [None if given is None else given[i] for i in part]
        crops = None if boxes is None else [_context(boxes[i], sources[i]) for i in part]
        if crops is not None:
            images_now = [_crop_source(im, c) for im, c in zip(images_now, crops)]
            maps = [None if m is None else m[c.slices()] for m, c in zip(maps, crops)]
        masks = _run(net, depth_net, images_now, maps, opts, memory, before_run, count)
        if opts.second_pass:
            masks = _second_passes(net, depth_net, images_now, maps, masks, opts, memory, before_run, count)
        if opts.boundary_tiles:
            masks = [_boundary_tiles(net, depth_net, im, m, mask, opts, memory, before_run, count)
                     for im, m, mask in zip(images_now, maps, masks)]
        if crops is not None and boxes is not None:
            masks = [_inside_region(m, c, boxes[i], sources[i]) for m, c, i in zip(masks, crops, part)]
        results += masks
    return results


def _largest_hw(opts: SegmentOptions, canvas: Canvas, sources: Sequence[ImageSource]) -> tuple[int, int]:
    """The largest network input of the run (boundary tiles: the canvas's largest), for memory estimates."""
    sizes = [opts.network_hw(canvas, s.height, s.width) for s in sources]
    if opts.boundary_tiles:
        sizes.append(opts.network_hw(canvas))
    return max(sizes, key=lambda hw: hw[0] * hw[1])


class _Count:
    """Progress as one cumulative count; a second pass adds its work to the total when it is decided."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def add(self, work: int) -> None:
        self.total += work

    def advance(self, done: int) -> None:
        self.done += done
        if self.progress is not None:
            self.progress(self.done, self.total)


def _run(net: LoadedModel, depth_net: LoadedModel | None, images: list[ImageSource],
         maps: list[torch.Tensor | None], opts: SegmentOptions, memory: int, before_run: BeforeRun | None,
         count: _Count) -> list[torch.Tensor]:
    """Masks of converted images: the depth prior where ``maps`` has none (with ``depth_net``), then the segmenter."""
    maps = list(maps)
    if depth_net is not None:
        for indices, depths in depth_batches(images, depth_net, before_run=before_run):
            for k, d in zip(indices, depths):
                maps[k] = normalize_depth(d, opts.quantize_depth)
            count.advance(len(indices))
    masks: list[torch.Tensor] = []
    for batch in chunks(range(len(images)), opts.batch_size):
        masks += _segment_batch(net, [images[k].rgb() for k in batch], [maps[k] for k in batch], opts, memory,
                                before_run)
        count.advance(len(batch))
    return masks


# --------------------------------------------------------------------------------------------
# the subject at full resolution: a second pass on its crop, and region guidance


def _scales(height: int, width: int, opts: SegmentOptions, canvas: Canvas) -> tuple[float, float]:
    place = PLACEMENTS[opts.resize](height, width, canvas.network_hw(height, width, opts.size))
    return place.h / height, place.w / width


def _second_pass_crop(mask: torch.Tensor, opts: SegmentOptions, canvas: Canvas) -> tuple[Box, int] | None:
    """The crop (and its blending band) worth a second pass for this first mask, or None."""
    height, width = mask.shape
    box = subject_box(mask)
    if box is None:
        return None
    pad = margin_pixels(box)
    crop = with_margin(box, height, width, pad)
    if crop.covers(height, width):
        return None
    gain = subject_gain(box, _scales(height, width, opts, canvas), _scales(crop.height, crop.width, opts, canvas))
    return (crop, max(1, pad // 2)) if gain >= MIN_GAIN else None


def _second_passes(net: LoadedModel, depth_net: LoadedModel | None, images: list[ImageSource],
                   maps: list[torch.Tensor | None], masks: list[torch.Tensor], opts: SegmentOptions, memory: int,
                   before_run: BeforeRun | None, count: _Count) -> list[torch.Tensor]:
    """Each first mask, merged with the crop's mask where segmenting the subject's crop again pays.

    The crops of a chunk run together (batched like the first pass); a computed depth prior is
    computed again on the crop, as PDFNet was trained (given depth maps are cropped).
    """
    canvas = net.canvas
    plans = [(k, plan) for k, plan in ((k, _second_pass_crop(m, opts, canvas)) for k, m in enumerate(masks)) if plan]
    if not plans:
        return masks
    count.add(len(plans) * (1 if depth_net is None else 2))
    crops = [_crop_source(images[k], crop) for k, (crop, _) in plans]
    crop_maps = [None if depth_net is not None or maps[k] is None else maps[k][crop.slices()]  # type: ignore[index]
                 for k, (crop, _) in plans]
    again = _run(net, depth_net, crops, crop_maps, opts, memory, before_run, count)
    merged = list(masks)
    for (k, (crop, band)), crop_mask in zip(plans, again):
        merged[k] = merge_crop(masks[k], crop_mask, crop, band)
    return merged


def _boundary_tiles(net: LoadedModel, depth_net: LoadedModel | None, image: ImageSource, depth: torch.Tensor | None,
                    mask: torch.Tensor, opts: SegmentOptions, memory: int, before_run: BeforeRun | None,
                    count: _Count) -> torch.Tensor:
    """``mask`` with its unsure band replaced by the network's masks of full-resolution tiles along it.

    Only for a subject over ``TILE_RATIO`` network sides: the band is as wide as a few source
    pixels per network pixel of the pass that made ``mask``.  Tiles run ``batch_size`` at a time
    and are blended into one running sum, so memory is the image's masks plus one batch.
    """
    box = subject_box(mask)
    side = _tile_side(opts, net.canvas)
    if box is None or max(box.height, box.width) < TILE_RATIO * side:
        return mask
    radius = 2 * math.ceil(max(box.height, box.width) * (1 + 2 * MARGIN) / side)
    band = boundary_band(mask, radius)
    overlap = side // 8
    tiles = tile_boxes(band, side, overlap)
    count.add(len(tiles) * (1 if depth_net is None else 2))
    total = torch.zeros_like(mask)
    weight = torch.zeros_like(mask)
    for group in chunks(tiles, opts.batch_size):
        sources = [_crop_source(image, t) for t in group]
        maps = [None if depth_net is not None or depth is None else depth[t.slices()] for t in group]
        for t, tile_mask in zip(group, _run(net, depth_net, sources, maps, opts, memory, before_run, count)):
            w = blend_weights(t, mask.shape[0], mask.shape[1], overlap)
            total[t.slices()] += w * tile_mask
            weight[t.slices()] += w
    inside = band & (weight > 0)
    out = mask.clone()
    out[inside] = total[inside] / weight[inside]
    return out


def _tile_side(opts: SegmentOptions, canvas: Canvas) -> int:
    """The side of a square boundary tile: the requested size, or (auto) the shorter side of the
    file's largest input, so that a tile is never shrunk on its way in."""
    return opts.size or min(canvas.largest_hw())


def _crop_source(image: ImageSource, crop: Box) -> ImageSource:
    rows, cols = crop.slices()
    # [H,W,3] view of the converted pixels: the crop is copied once, by converted()
    return ImageSource(image.rgb()[:, rows, cols].permute(1, 2, 0), image.name, crop.height, crop.width).converted()


def _regions(region: Any, sources: Sequence[ImageSource]) -> list[Box]:
    """One region box per image: ``region`` is one region for all images, or a list of one per image."""
    many = isinstance(region, (list, tuple)) and len(region) > 0 and not isinstance(region[0], numbers.Real)
    if isinstance(region, (torch.Tensor, np.ndarray)) and region.ndim == 3 and region.shape[0] != 1:
        many = True   # a batch of masks: one per image
    regions = list(region) if many else [region] * len(sources)
    if len(regions) != len(sources):
        raise InputError(f"got {len(sources)} images but {len(regions)} regions; pass one region, or one per image")
    return [region_box(r, s.height, s.width, f"region[{i}]" if many else "region")
            for i, (r, s) in enumerate(zip(regions, sources))]


def _context(box: Box, source: ImageSource) -> Box:
    """The region's crop: the box with a margin of context around it, inside the image."""
    return with_margin(box, source.height, source.width, margin_pixels(box))


def _inside_region(mask: torch.Tensor, crop: Box, box: Box, source: ImageSource) -> torch.Tensor:
    """The crop's mask at the image's size, kept inside the region's box only."""
    inner = Box(box.top - crop.top, box.left - crop.left, box.height, box.width)
    return paste_crop(mask[inner.slices()], box, source.height, source.width)


def _segment_batch(net: LoadedModel, rgb: list[torch.Tensor], depths: list[torch.Tensor | None],
                   opts: SegmentOptions, memory: int, before_run: BeforeRun | None) -> list[torch.Tensor]:
    """Alpha [H,W] of each [3,H,W] image of one batch (depth maps [H,W], or None for a model without depth).

    Each image gets its network size from the model's canvas; images of one size run together
    (a dynamic-size file can give the images of one batch different sizes)."""
    canvas = net.canvas
    places = [PLACEMENTS[opts.resize](im.shape[-2], im.shape[-1], canvas.network_hw(im.shape[-2], im.shape[-1],
                                                                                    opts.size)) for im in rgb]
    groups: dict[tuple[int, int], list[int]] = {}
    for k, place in enumerate(places):
        groups.setdefault(place.canvas_hw, []).append(k)
    out: list[torch.Tensor] = [torch.empty(0)] * len(rgb)
    for ks in groups.values():
        masks = _segment_group(net, [places[k] for k in ks], [rgb[k] for k in ks], [depths[k] for k in ks], opts,
                               memory, before_run)
        for k, mask in zip(ks, masks):
            out[k] = mask
    return out


def _segment_group(net: LoadedModel, places: list[Placement], rgb: list[torch.Tensor],
                   depths: list[torch.Tensor | None], opts: SegmentOptions, memory: int,
                   before_run: BeforeRun | None) -> list[torch.Tensor]:
    """``_segment_batch`` for images placed on one network size."""
    if before_run is not None:
        before_run(net.module, memory)
    device, dtype = parameter_placement(net.module)   # where before_run left it
    # Everything on the model's device: each image goes there once, is resized, normalised (after
    # the resize: the same affine map on the network canvas rather than the photo, so no full-size
    # float copies) and padded (after normalising, so the border is the mean colour) there.
    x = torch.cat([p.to_network(to_device(im[None], device), "constant", imagenet_normalize)
                   for p, im in zip(places, rgb)])
    d = None
    if net.spec.inputs.needs_depth:
        d = torch.cat([p.to_network(to_device(m[None, None].float(), device), "replicate")  # type: ignore[index]
                       for p, m in zip(places, depths)])
    run = net.spec.segment
    assert run is not None
    with torch.no_grad():
        x = x.to(dtype)
        logits = tta_logits(net, x, d, opts.tta_scales) if opts.tta else run(net.module, x, d)
        alpha = logits.float().sigmoid()
    # one transfer back per image, at its source size
    out = [place.from_network(alpha[k:k + 1], im.shape[-2], im.shape[-1])[0, 0].clamp_(0, 1).cpu()
           for k, (place, im) in enumerate(zip(places, rgb))]
    if device.type != "cpu" and not all(torch.isfinite(a).all() for a in out):   # checked on the host copies
        raise FloatingPointError(f"{net.spec.label} (or its depth model) produced NaN or inf in {dtype}; half "
                                 "precision can overflow: load the models in float32 or bfloat16")
    return out


def _options(options: SegmentOptions | None, overrides: dict) -> SegmentOptions:
    base = options or SegmentOptions()
    known = {f.name for f in fields(SegmentOptions)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"segment() got unexpected options {sorted(unknown)}; known: {sorted(known)}")
    return (replace(base, **overrides) if overrides else base).validate()


def _given_depth(depth: Any, sources: Sequence[ImageSource], name: str) -> list[torch.Tensor]:
    maps = to_mask_list(depth, "depth")
    if len(maps) != len(sources):
        raise ValueError(f"got {len(sources)} images but {len(maps)} depth maps; pass one depth map per image")
    for i, (m, im) in enumerate(zip(maps, sources)):
        if tuple(m.shape) != (im.height, im.width):
            raise ValueError(f"depth[{i}] is {m.shape[0]}x{m.shape[1]} but {name}[{i}] is "
                             f"{im.height}x{im.width}; depth must have the size of its image")
    return maps
