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

from .images import chunks, imagenet_normalize, to_mask_list, to_rgb_list

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SegmentOptions:
    size: int = 1024                 # network side; a multiple of 32 (trained at 1024)
    resize: str = "squash"           # "squash" (as trained) or "pad" (keep aspect, crop back)
    tta: bool = False                # 6 passes: horizontal flip x scales, logits averaged (paper's evaluation)
    tta_scales: tuple[float, ...] = (0.75, 1.0, 1.25)
    batch_size: int = 1              # images per forward pass
    quantize_depth: bool = True      # computed depth priors are stored 8-bit, as in training

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

    def to_network(self, x: torch.Tensor, pad_mode: str) -> torch.Tensor:
        """[B,C,H,W] -> [B,C,S,S]; the border is zero ('constant') or the edge values ('replicate')."""
        x = _resize_ac(x, (self.h, self.w))
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


def _resize_ac(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


# --------------------------------------------------------------------------------------------
# segmentation model types


@dataclass(frozen=True)
class SegmenterKind:
    """How segment() drives one family of segmentation models."""

    name: str
    needs_depth: bool
    logits: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _pdfnet_logits(model: nn.Module, image: torch.Tensor, depth: torch.Tensor | None) -> torch.Tensor:
    return model(image, depth)


def _image_only_logits(model: nn.Module, image: torch.Tensor, depth: torch.Tensor | None) -> torch.Tensor:
    return model(image)


# Keyed by class name so that this module needs no import of the model modules.
SEGMENTERS: dict[str, SegmenterKind] = {
    "PDFNet": SegmenterKind("PDFNet", needs_depth=True, logits=_pdfnet_logits),
    "BiRefNet": SegmenterKind("BiRefNet", needs_depth=False, logits=_image_only_logits),
}


def segmenter_kind(model: nn.Module) -> SegmenterKind:
    for cls in type(model).__mro__:
        if cls.__name__ in SEGMENTERS:
            return SEGMENTERS[cls.__name__]
    raise TypeError(f"segment() does not know how to run a {type(model).__name__}; "
                    f"expected one of {sorted(SEGMENTERS)} (load it with load_pdfnet or load_birefnet)")


# --------------------------------------------------------------------------------------------
# test-time augmentation


def tta_logits(model: nn.Module, image: torch.Tensor, depth: torch.Tensor | None, scales: Sequence[float],
               kind: SegmenterKind | None = None) -> torch.Tensor:
    """Mean logits over horizontal flip x scales, each pass mapped back to the input size.

    As the paper's evaluation (ttach): bilinear align_corners=False for the scale changes.
    """
    kind = kind or segmenter_kind(model)
    size = image.shape[-1]
    total = None
    passes = 0
    for scale in scales:
        side = max(32, int(round(size * scale / 32)) * 32)
        img_s = _resize_plain(image, side)
        dep_s = None if depth is None else _resize_plain(depth, side)
        for flip in (False, True):
            i = img_s.flip(-1) if flip else img_s
            d = dep_s.flip(-1) if flip and dep_s is not None else dep_s
            out = kind.logits(model, i, d)
            out = out.flip(-1) if flip else out
            out = _resize_plain(out, size).float()
            total = out if total is None else total + out
            passes += 1
    return total / passes


def _resize_plain(x: torch.Tensor, side: int) -> torch.Tensor:
    if x.shape[-1] == side:
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------
# the pipeline


def segment(images: Any, depth: Any = None, model: nn.Module | None = None, *,
            options: SegmentOptions | None = None, depth_model: nn.Module | None = None,
            progress: Progress | None = None, **overrides) -> list[torch.Tensor]:
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
    progress(done, total) is called after every batch; raising from it stops the work.
    """
    if isinstance(images, nn.Module):  # segment(model, images, depth) call form
        images, depth, model = depth, model, images
    opts = _options(options, overrides)
    if model is None:
        from .defaults import default_model

        model = default_model("pdfnet")
    kind = segmenter_kind(model)
    rgb = to_rgb_list(images, "images")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    if kind.needs_depth and depth is None and depth_model is None:
        from .defaults import default_model

        depth_model = default_model("depth_anything", device=device)
    depths = _depth_maps(rgb, depth, depth_model, opts) if kind.needs_depth else None
    order = list(range(len(rgb)))
    results: list[torch.Tensor | None] = [None] * len(rgb)
    done = 0
    for batch in chunks(order, opts.batch_size):
        places = [PLACEMENTS[opts.resize](*rgb[i].shape[-2:], opts.size) for i in batch]
        # Normalising before the resize is the same affine map; it lets the padded canvas be the
        # mean colour (zero after normalisation).
        x = torch.cat([p.to_network(imagenet_normalize(rgb[i][None]), "constant") for p, i in zip(places, batch)])
        d = None if depths is None else \
            torch.cat([p.to_network(depths[i][None, None], "replicate") for p, i in zip(places, batch)]).to(device)
        with torch.no_grad():
            x = x.to(device, dtype)
            logits = tta_logits(model, x, d, opts.tta_scales, kind) if opts.tta else kind.logits(model, x, d)
            alpha = logits.float().sigmoid()
        for k, (i, place) in enumerate(zip(batch, places)):
            h, w = rgb[i].shape[-2:]
            results[i] = place.from_network(alpha[k:k + 1], h, w)[0, 0].clamp_(0, 1).cpu()
        done += len(batch)
        if progress is not None:
            progress(done, len(rgb))
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


def _depth_maps(rgb: list[torch.Tensor], depth: Any, depth_model: nn.Module | None,
                opts: SegmentOptions) -> list[torch.Tensor]:
    if depth is None:
        from .depth import depth_prior

        return [d.float() for d in depth_prior(rgb_to_hwc(rgb), depth_model, quantize=opts.quantize_depth)]
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
