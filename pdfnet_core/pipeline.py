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

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .defaults import default_model
from .depth import depth_batches, normalize_depth
from .families import FAMILIES, as_loaded
from .ops.images import (ImageSource, chunks, image_sources, imagenet_normalize, resize_bilinear, to_device,
                         to_mask_list)
from .segment_options import RESIZE_MODES, SegmentOptions, tta_side
from .specs import BeforeRun, LoadedModel, Progress, parameter_placement

# Images converted and depth-estimated together (rounded up to whole batches).
CHUNK = 8


# --------------------------------------------------------------------------------------------
# where a source image sits inside the square network input


@dataclass(frozen=True)
class Placement:
    """The source (H, W) is resized to (h, w) and put at (top, left) of an S x S canvas."""

    size: int
    h: int
    w: int
    top: int
    left: int

    def to_network(self, x: torch.Tensor, pad_mode: str,
                   transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """[B,C,H,W] -> [B,C,S,S]; the border is zero ('constant') or the edge values ('replicate').

        ``transform`` is applied between the resize and the pad (at network size, not source size).
        """
        x = resize_bilinear(x, (self.h, self.w), align_corners=True)
        if transform is not None:
            x = transform(x)
        pads = (self.left, self.size - self.w - self.left, self.top, self.size - self.h - self.top)
        if not any(pads):
            return x
        return F.pad(x, pads, mode=pad_mode)

    def from_network(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """[B,C,S,S] -> [B,C,height,width]."""
        x = x[..., self.top:self.top + self.h, self.left:self.left + self.w]
        if (self.h, self.w) == (height, width):
            return x
        shrink = height < self.h or width < self.w
        return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)


def squash_placement(height: int, width: int, size: int) -> Placement:
    return Placement(size, size, size, 0, 0)


def pad_placement(height: int, width: int, size: int) -> Placement:
    scale = size / max(height, width)
    h, w = max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale)))
    return Placement(size, h, w, (size - h) // 2, (size - w) // 2)


PLACEMENTS: dict[str, Callable[[int, int, int], Placement]] = {"squash": squash_placement, "pad": pad_placement}
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
    size = image.shape[-1]
    total = None
    passes = 0
    for scale in scales:
        side = tta_side(size, scale, net.spec.inputs.size_multiple)
        img_s = resize_bilinear(image, (side, side), align_corners=False)
        dep_s = None if depth is None else resize_bilinear(depth, (side, side), align_corners=False)
        for flip in (False, True):
            i = img_s.flip(-1) if flip else img_s
            d = dep_s.flip(-1) if flip and dep_s is not None else dep_s
            out = run(net.module, i, d)
            out = out.flip(-1) if flip else out
            out = resize_bilinear(out, (size, size), align_corners=False).float()
            total = out if total is None else total + out
            passes += 1
    assert total is not None, "tta_scales is empty"
    return total / passes


# --------------------------------------------------------------------------------------------
# the pipeline


def segment(images: Any, depth: Any = None, model: nn.Module | LoadedModel | None = None, *,
            options: SegmentOptions | None = None, depth_model: nn.Module | LoadedModel | None = None,
            progress: Progress | None = None, before_run: BeforeRun | None = None, name: str = "images",
            **overrides) -> list[torch.Tensor]:
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
    model run (so 2 per image when the depth prior is computed here); raising from it stops the work.
    before_run(module, bytes_needed) is called before each batch of a model with the activation
    memory its family spec estimates for that batch; the model runs where it is after that call.
    name: how errors name the images ("images[3] contains NaN").
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
    given = _given_depth(depth, sources, name) if net.spec.inputs.needs_depth and depth is not None else None
    depth_net = None
    if net.spec.inputs.needs_depth and depth is None:
        depth_net = as_loaded(depth_model if depth_model is not None else default_model("depth_anything", net.device),
                              "depth_model")
    total = len(sources) * (1 if depth_net is None else 2)
    done = 0
    memory = net.activation_bytes(opts.network_side(net.spec.inputs.size_multiple), opts.batch_size)
    chunk = opts.batch_size * -(-CHUNK // opts.batch_size)
    results: list[torch.Tensor] = []
    for part in chunks(range(len(sources)), chunk):
        images_now = [sources[i].converted() for i in part]   # each image converted once
        maps: list[torch.Tensor | None] = [None if given is None else given[i] for i in part]
        if depth_net is not None:
            for indices, depths in depth_batches(images_now, depth_net, before_run=before_run):
                for k, d in zip(indices, depths):
                    maps[k] = normalize_depth(d, opts.quantize_depth)
                done += len(indices)
                if progress is not None:
                    progress(done, total)
        for batch in chunks(range(len(part)), opts.batch_size):
            results += _segment_batch(net, [images_now[k].rgb() for k in batch], [maps[k] for k in batch], opts,
                                      memory, before_run)
            done += len(batch)
            if progress is not None:
                progress(done, total)
    return results


def _segment_batch(net: LoadedModel, rgb: list[torch.Tensor], depths: list[torch.Tensor | None],
                   opts: SegmentOptions, memory: int, before_run: BeforeRun | None) -> list[torch.Tensor]:
    """Alpha [H,W] of each [3,H,W] image of one batch (depth maps [H,W], or None for a model without depth)."""
    places = [PLACEMENTS[opts.resize](im.shape[-2], im.shape[-1], opts.size) for im in rgb]
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
