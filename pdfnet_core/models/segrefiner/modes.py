"""SegRefiner's two test-time strategies on top of the diffusion loop (named lr/hr here, after
their checkpoints; the official code calls them the "instance" and "semantic" modes).

* LR: each object's padded box is resized to 256², refined with all six steps t=5..0, and pasted
  back with ``grid_sample``.
* HR: a global pass at 256² (t=5..1), then the least confident regions are refined at full
  resolution in 256² patches (one step, t=0), overlaps averaged.

Inputs here are already tensors: ``image`` is the normalised image [1,3,H,W] (float32) and masks are
float {0,1}.  ``SegRefiner.refine`` (refiner.py) handles dtype conversion and bad input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ...memory import free_bytes
from ...specs import HOW_MEASURED, MeasuredActivation
from .diffusion import CallMeter, NoiseSource, UNetFn, chunk_count, chunked_loop

ALL_STEPS = (5, 4, 3, 2, 1, 0)

# Activation elements of one UNet sample (the official width, 128): MiB per 256² sample in fp32,
# measured in a batch of 8.  The family spec's estimate (spec.py) and the HR patch batch below.
SAMPLE_ACTIVATION = MeasuredActivation({None: {256: 342}}, HOW_MEASURED)
# Room left beside the samples that fit in free memory (allocator rounding, kernels' workspaces):
# as ComfyUI's memory manager, which frees 1.1x the memory_required it is asked for.
FREE_MARGIN = 1.1

FreeBytes = Callable[[torch.device], "int | None"]   # device -> bytes free for new tensors, None: unknown


@dataclass(frozen=True)
class LRConfig:
    """test_cfg of ``configs/segrefiner/segrefiner_coco.py``."""

    model_size: int = 256
    pad_width: int = 20
    area_thr: int = 512       # smaller instances are returned unrefined
    batch_max: int = 32


@dataclass(frozen=True)
class HRConfig:
    """test_cfg of ``configs/segrefiner/segrefiner_dis.py`` / ``_big.py``."""

    model_size: int = 256
    fine_prob_thr: float = 0.9
    iou_thr: float = 0.3
    batch_max: int = 32
    # Precision of the full-resolution patch pass (one UNet call per patch, the bulk of a large
    # refinement); None: the model's own.  The global pass, which picks the patches through
    # stochastic thresholded steps, always runs in the model's precision.  Not an official setting.
    patch_dtype: torch.dtype | None = None


# --------------------------------------------------------------------------------------------
# LR mode


def mask_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """Tight box (x1, y1, x2, y2) of a non-empty [H,W] mask, x2/y2 exclusive."""
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def lr_inputs(image: torch.Tensor, masks: torch.Tensor, cfg: LRConfig
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crops of the padded boxes resized (bilinear, no antialias) to model_size, and the boxes [K,4]."""
    h, w = masks.shape[-2:]
    size = (cfg.model_size, cfg.model_size)
    imgs, objs, boxes = [], [], []
    for mask in masks:
        x1, y1, x2, y2 = mask_box(mask)
        x1, y1 = max(0, x1 - cfg.pad_width), max(0, y1 - cfg.pad_width)
        x2, y2 = min(w, x2 + cfg.pad_width), min(h, y2 + cfg.pad_width)
        imgs.append(F.interpolate(image[:, :, y1:y2, x1:x2], size=size, mode="bilinear"))
        objs.append(F.interpolate(mask[None, None, y1:y2, x1:x2].float(), size=size, mode="bilinear"))
        boxes.append((x1, y1, x2, y2))
    box_t = torch.tensor(boxes, dtype=torch.int64, device=image.device)
    return torch.cat(imgs), (torch.cat(objs) >= 0.5).float(), box_t


def paste_masks(soft: torch.Tensor, boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``_do_paste_mask``: each [1,s,s] map back into an [h,w] frame over its box (zero outside)."""
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
    n = soft.shape[0]
    img_y = torch.arange(0, h, device=soft.device).to(torch.float32) + 0.5
    img_x = torch.arange(0, w, device=soft.device).to(torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    gx = img_x[:, None, :].expand(n, h, w)
    gy = img_y[:, :, None].expand(n, h, w)
    grid = torch.stack([gx, gy], dim=3)
    return F.grid_sample(soft.float(), grid, align_corners=False)[:, 0]


def refine_lr(unet: UNetFn, image: torch.Tensor, masks: torch.Tensor, noise: NoiseSource,
                     cfg: LRConfig = LRConfig(), trace: list | None = None,
                     meter: CallMeter | None = None) -> torch.Tensor:
    """Refine N object masks [N,H,W] (float 0/1) of one image; returns float {0,1} [N,H,W] in input order.

    Instances with fewer than ``area_thr`` pixels are returned unchanged, as in the official code.
    ``meter`` counts the UNet calls (progress and cancel).
    """
    meter = meter or CallMeter()
    h, w = masks.shape[-2:]
    out = masks.clone().float()
    keep = [i for i in range(masks.shape[0]) if int(masks[i].sum()) >= cfg.area_thr]
    if not keep:
        return out
    imgs, objs, boxes = lr_inputs(image, masks[keep], cfg)
    if trace is not None:
        trace.append({"boxes": boxes, "obj_mask": objs})
    meter.plan(len(ALL_STEPS) * chunk_count(len(keep), cfg.batch_max))
    soft, _ = chunked_loop(meter.counted(unet), imgs, objs, ALL_STEPS, noise, cfg.batch_max, trace=trace)
    if trace is not None:
        trace.append({"soft": soft})
    out[keep] = (paste_masks(soft, boxes, h, w) >= 0.5).float()
    return out


# --------------------------------------------------------------------------------------------
# HR mode


def global_inputs(image: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and mask resized with legacy ``nearest`` (the F.interpolate default, as officially)."""
    g_img = F.interpolate(image, size=(size, size))
    g_mask = F.interpolate(mask[None, None].float(), size=(size, size))
    return g_img, (g_mask >= 0.5).float()


def candidate_boxes(fine: torch.Tensor, h: int, w: int, cfg: HRConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-resolution 256² boxes (float x1,y1,x2,y2) centred on every low-confidence pixel, and scores."""
    size = cfg.model_size
    thr = fine.max().item() * cfg.fine_prob_thr
    low = fine < thr
    scores = 1 - fine[low]
    yc, xc = torch.where(low[0, 0])
    yc, xc = (yc * (h / size)).int(), (xc * (w / size)).int()
    y1, y2 = yc - size / 2, yc + size / 2
    x1, x2 = xc - size / 2, xc + size / 2
    for lo, hi, limit in ((y1, y2, h), (x1, x2, w)):
        bad = lo < 0
        lo[bad], hi[bad] = 0, size
        bad = hi > limit
        lo[bad], hi[bad] = limit - size, limit
    return torch.stack((x1, y1, x2, y2), dim=-1), scores


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thr: float) -> torch.Tensor:
    """Indices kept by greedy NMS (highest score first; suppressed when IoU > iou_thr; areas without +1).

    The loop runs once per *kept* box, with the overlap test vectorised over the remaining ones,
    so tens of thousands of candidates cost milliseconds.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    alive = torch.arange(boxes.shape[0], device=boxes.device)
    kept = []
    while alive.numel():
        i = alive[0]
        kept.append(i)
        rest = alive[1:]
        b = boxes[rest]
        iw = (torch.minimum(b[:, 2], boxes[i, 2]) - torch.maximum(b[:, 0], boxes[i, 0])).clamp(min=0)
        ih = (torch.minimum(b[:, 3], boxes[i, 3]) - torch.maximum(b[:, 1], boxes[i, 1])).clamp(min=0)
        inter = iw * ih
        iou = inter / (areas[rest] + areas[i] - inter)
        alive = rest[iou <= iou_thr]
    return order[torch.stack(kept)] if kept else order[:0]


def patch_boxes(fine: torch.Tensor, h: int, w: int, cfg: HRConfig) -> torch.Tensor:
    """The NMS-selected boxes [P,4] int (x1,y1,x2,y2), in NMS order."""
    boxes, scores = candidate_boxes(fine, h, w, cfg)
    return boxes[greedy_nms(boxes, scores, cfg.iou_thr)].int()


def mixed_boxes(mask: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Boxes whose crop of the [H,W] mask is neither all 0 nor all 1 (nothing to refine otherwise)."""
    keep = [i for i, (x1, y1, x2, y2) in enumerate(boxes.tolist())
            if mask[y1:y2, x1:x2].any() and not mask[y1:y2, x1:x2].all()]
    return boxes[keep]


def sample_bytes(cfg: HRConfig, dtype: torch.dtype) -> int:
    """Activation bytes of one model_size² UNet sample in ``dtype`` (the measured estimate)."""
    return math.ceil(SAMPLE_ACTIVATION(cfg.model_size, cfg.model_size, None) * dtype.itemsize)


def patch_batch(cfg: HRConfig, device: torch.device, dtype: torch.dtype = torch.float32,
                free: FreeBytes = free_bytes, reserve: int = 0) -> int:
    """Patches per UNet call.  Each patch is independent (per-sample norms), so only speed depends
    on it: on a CPU a batch's activations pass glibc's 32 MiB limit for reusing freed memory and
    every allocation faults in fresh pages, which made 4 bf16 patches a call 1.3x slower per patch
    than one.  Elsewhere as many as fit in the device's free memory (``free(device)``, less
    ``reserve`` bytes still to be taken by weights), at the measured activation per sample in
    ``dtype`` with a ``FREE_MARGIN``: at least 1, at most the official ``batch_max`` (also where the
    free memory is not known)."""
    if device.type == "cpu":
        return 1
    available = free(device)
    if available is None:
        return cfg.batch_max
    fits = int((available - reserve) // (sample_bytes(cfg, dtype) * FREE_MARGIN))
    return max(1, min(cfg.batch_max, fits))


def local_logits(unet: UNetFn, image: torch.Tensor, mask: torch.Tensor, boxes: torch.Tensor,
                 batch_max: int) -> torch.Tensor:
    """One UNet call at t=0 on each full-resolution crop (no resizing), in chunks: logits [P,1,s,s]."""
    out = []
    for lo in range(0, boxes.shape[0], max(1, batch_max)):
        chunk = boxes[lo:lo + max(1, batch_max)].tolist()
        imgs = torch.cat([image[:, :, y1:y2, x1:x2] for x1, y1, x2, y2 in chunk])
        masks = torch.stack([mask[None, y1:y2, x1:x2] for x1, y1, x2, y2 in chunk])
        t = torch.zeros(len(chunk), dtype=torch.int64, device=image.device)
        out.append(unet(imgs, masks, t))
    return torch.cat(out)


def merge_patches(probs: torch.Tensor, mask: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``paste_local_patch``: mean patch probability >= 0.5 where covered, the global mask elsewhere."""
    total = torch.zeros_like(mask)
    count = torch.zeros_like(mask)
    for p, (x1, y1, x2, y2) in zip(probs[:, 0], boxes.tolist()):
        total[y1:y2, x1:x2] += p
        count[y1:y2, x1:x2] += 1
    covered = (count > 0).float()
    count[count == 0] = 1
    refined = (total / count >= 0.5).float()
    return covered * refined + (1 - covered) * mask


def refine_hr(unet: UNetFn, image: torch.Tensor, mask: torch.Tensor, noise: NoiseSource,
                    cfg: HRConfig = HRConfig(), trace: dict | None = None,
                    patch_unet: UNetFn | None = None, meter: CallMeter | None = None,
                    patch_dtype: torch.dtype = torch.float32, free: FreeBytes = free_bytes) -> torch.Tensor:
    """Refine one [H,W] float {0,1} mask of an image with H, W >= model_size; returns float {0,1} [H,W].

    ``patch_unet`` (default ``unet``) runs the full-resolution patches, e.g. a bf16 twin of ``unet``,
    in ``patch_dtype``; ``patch_batch`` sizes their batches from ``free`` memory once the global pass
    is done.  ``meter`` counts the UNet calls: the global steps first, the patch calls once they are known.
    """
    meter = meter or CallMeter()
    h, w = mask.shape
    g_img, g_mask = global_inputs(image, mask, cfg.model_size)
    steps = [] if trace is not None else None
    meter.plan(len(ALL_STEPS) - 1)
    soft, fine = chunked_loop(meter.counted(unet), g_img, g_mask, ALL_STEPS[:-1], noise, cfg.batch_max, trace=steps)
    glob = (F.interpolate(soft, size=(h, w)) >= 0.5).float()[0, 0]
    nms = patch_boxes(fine, h, w, cfg)
    boxes = mixed_boxes(glob, nms)
    if trace is not None:
        trace.update(g_mask_in=g_mask, steps=steps, g_fine=fine, g_up=glob, nms_boxes=nms, patch_boxes=boxes)
    if boxes.shape[0] == 0:
        return glob
    batch = patch_batch(cfg, image.device, patch_dtype, free)
    meter.plan(chunk_count(boxes.shape[0], batch))
    logits = local_logits(meter.counted(patch_unet or unet), image, glob, boxes, batch)
    if trace is not None:
        trace["patch_logits"] = logits
    return merge_patches(logits.sigmoid(), glob, boxes)
