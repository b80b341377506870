"""``segment()``: images of any size in, foreground alpha (1 = object) at each source size out.

Pre-processing follows how PDFNet was trained (DIS5K loader): image and depth are resized with
bilinear ``align_corners=True`` to a square network size (default 1024, the training size), the
image is ImageNet-normalised, the depth is min-max normalised by the model.  The probability map
is resized back to the source size as float (no 8-bit round trip).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ops.images import chunks, imagenet_normalize, resize_bilinear, to_mask_list, to_rgb_list
from .registry import FAMILIES, as_loaded
from .specs import BeforeRun, LoadedModel, Progress, parameter_placement



@dataclass(frozen=True)
class SegmentOptions:
    size: int = 1024                 # network side; a multiple of 32 (trained at 1024)
    resize: str = "squash"           # "squash" (as trained) or "pad" (keep aspect, crop back)
    tta: bool = False                # 6 passes: horizontal flip x scales, logits averaged (paper's evaluation)
    tta_scales: tuple[float, ...] = (0.75, 1.0, 1.25)
    batch_size: int = 1              # images per forward pass
    quantize_depth: bool = True      # computed depth priors are stored 8-bit, as in training

    def network_side(self, multiple: int = 32) -> int:
        """The largest network side a forward pass runs at (with TTA: its largest scale)."""
        if not self.tta:
            return self.size
        return max(tta_side(self.size, scale, multiple) for scale in self.tta_scales)

    def validate(self) -> None:
        if self.size < 32 or self.size % 32:
            raise ValueError(f"size must be a positive multiple of 32 (PDFNet was trained at 1024), got {self.size}")
        if self.resize not in PLACEMENTS:
            raise ValueError(f"resize must be one of {sorted(PLACEMENTS)}, got {self.resize!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.tta and not self.tta_scales:
            raise ValueError("tta_scales is empty")


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


def tta_side(size: int, scale: float, multiple: int = 32) -> int:
    """The network side of one TTA scale: ``size * scale`` to the nearest multiple (at least one)."""
    return max(multiple, int(round(size * scale / multiple)) * multiple)


def tta_logits(model: nn.Module | LoadedModel, image: torch.Tensor, depth: torch.Tensor | None,
               scales: Sequence[float]) -> torch.Tensor:
    """Mean logits over horizontal flip x scales, each pass mapped back to the input size.

    As the paper's evaluation (ttach): bilinear align_corners=False for the scale changes.
    """
    loaded = segmenter(model)
    size = image.shape[-1]
    total = None
    passes = 0
    for scale in scales:
        side = tta_side(size, scale, loaded.spec.inputs.size_multiple)
        img_s = resize_bilinear(image, (side, side), align_corners=False)
        dep_s = None if depth is None else resize_bilinear(depth, (side, side), align_corners=False)
        for flip in (False, True):
            i = img_s.flip(-1) if flip else img_s
            d = dep_s.flip(-1) if flip and dep_s is not None else dep_s
            out = loaded.spec.segment(loaded.module, i, d)
            out = out.flip(-1) if flip else out
            out = resize_bilinear(out, (size, size), align_corners=False).float()
            total = out if total is None else total + out
            passes += 1
    return total / passes


# --------------------------------------------------------------------------------------------
# the pipeline


def segment(images: Any, depth: Any = None, model: nn.Module | LoadedModel | None = None, *,
            options: SegmentOptions | None = None, depth_model: nn.Module | LoadedModel | None = None,
            progress: Progress | None = None, before_run: BeforeRun | None = None,
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
    progress(done, total) is called after every batch, counting one unit per image per model run
    (so 2 per image when the depth prior is computed here); raising from it stops the work.
    before_run(module, bytes_needed) is called before each batch of a model with the activation
    memory its family spec estimates for that batch.
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
    if model is None:
        from .defaults import default_model

        model = default_model("pdfnet")
    net = segmenter(model)
    rgb = to_rgb_list(images, "images")
    device, dtype = parameter_placement(net.module)
    computes_depth = net.spec.inputs.needs_depth and depth is None
    if computes_depth and depth_model is None:
        from .defaults import default_model

        depth_model = default_model("depth_anything", device=device)
    total = len(rgb) * (2 if computes_depth else 1)
    done = 0

    def step(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    depths = None
    if net.spec.inputs.needs_depth:
        depths = _depth_maps(rgb, depth, depth_model, opts, step, before_run)
    memory = net.activation_bytes(opts.network_side(net.spec.inputs.size_multiple), opts.batch_size)
    results: list[torch.Tensor | None] = [None] * len(rgb)
    for batch in chunks(list(range(len(rgb))), opts.batch_size):
        places = [PLACEMENTS[opts.resize](*rgb[i].shape[-2:], opts.size) for i in batch]
        # Normalised after the resize (the same affine map, on the network canvas rather than the
        # photo: no full-size float copies) and before the pad, so the border is the mean colour.
        x = torch.cat([p.to_network(rgb[i][None], "constant", imagenet_normalize) for p, i in zip(places, batch)])
        d = None if depths is None else \
            torch.cat([p.to_network(depths[i][None, None], "replicate") for p, i in zip(places, batch)]).to(device)
        if before_run is not None:
            before_run(net.module, memory)
        with torch.no_grad():
            x = x.to(device, dtype)
            logits = tta_logits(net, x, d, opts.tta_scales) if opts.tta else net.spec.segment(net.module, x, d)
            alpha = logits.float().sigmoid()
        for k, (i, place) in enumerate(zip(batch, places)):
            h, w = rgb[i].shape[-2:]
            results[i] = place.from_network(alpha[k:k + 1], h, w)[0, 0].clamp_(0, 1).cpu()
        step(len(batch))
    return results  # type: ignore[return-value]


def _options(options: SegmentOptions | None, overrides: dict) -> SegmentOptions:
    base = options or SegmentOptions()
    unknown = set(overrides) - set(SegmentOptions.__dataclass_fields__)
    if unknown:
        raise TypeError(f"segment() got unexpected options {sorted(unknown)}; "
                        f"known: {sorted(SegmentOptions.__dataclass_fields__)}")
    if overrides:
        from dataclasses import replace
        base = replace(base, **overrides)
    base.validate()
    return base


def _depth_maps(rgb: list[torch.Tensor], depth: Any, depth_model: nn.Module | LoadedModel | None,
                opts: SegmentOptions, step: Callable[[int], None], before_run: BeforeRun | None) -> list[torch.Tensor]:
    if depth is None:
        from .depth import depth_prior

        last = 0

        def advance(done: int, total: int) -> None:
            nonlocal last
            step(done - last)
            last = done

        maps = depth_prior(rgb_to_hwc(rgb), depth_model, quantize=opts.quantize_depth, progress=advance,
                           before_run=before_run)
        return [d.float() for d in maps]
    maps = to_mask_list(depth, "depth")
    if len(maps) != len(rgb):
        raise ValueError(f"got {len(rgb)} images but {len(maps)} depth maps; pass one depth map per image")
    for i, (m, im) in enumerate(zip(maps, rgb)):
        if tuple(m.shape) != tuple(im.shape[-2:]):
            raise ValueError(f"depth[{i}] is {m.shape[0]}x{m.shape[1]} but images[{i}] is "
                             f"{im.shape[-2]}x{im.shape[-1]}; depth must have the size of its image")
    return maps


def rgb_to_hwc(rgb: list[torch.Tensor]) -> list[torch.Tensor]:
    """[3,H,W] tensors back to the [H,W,3] layout the public functions accept."""
    return [t.permute(1, 2, 0) for t in rgb]
