"""SegRefiner (NeurIPS 2023): model-agnostic mask refinement by discrete diffusion, torch only.

``SegRefiner`` is the checkpoint's module tree (parameter names = the official ``denoise_model.*``)
plus the two official test-time strategies:

* ``mode="lr"``: per-object refinement (official "instance" mode, LR checkpoint): each object's
  padded box is resized to 256² and refined with six steps.  Coarse masks [N,H,W], one per object.
* ``mode="hr"``: high-resolution refinement (official "semantic" mode, HR checkpoint): a global pass
  at 256², then the least confident regions are refined at full resolution in 256² patches.
  Coarse mask [H,W].

Coarse masks are binarised as the official pipeline does: values >= 0.5 are foreground (uint8 masks
with values above 1 are read as 0..255 grey and thresholded at 128, i.e. grey/255 >= 0.5).  Masks with
nothing to refine come back unchanged: all-background or all-foreground masks (both modes), LR objects
under 512 px (as officially), and HR masks of <= 128 px (the official code returns zeros there;
returning the input is our choice, so a tiny selection is not erased).  HR images smaller than 256 on
a side (where the official patch rule fails) are edge-padded to 256 and cropped back.

The process is stochastic: ``seed`` makes it reproducible on one device and library version.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .unet import SegRefinerNet, SegRefinerUNetConfig
from .diffusion import CallMeter, CallProgress, NoiseInput, NoiseSource, UNetFn
from .modes import FreeBytes, LRConfig, HRConfig, free_bytes, patch_batch, refine_lr, refine_hr

# mmcv Normalize of the official configs (RGB order, 0..255 scale)
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
HR_EMPTY_PX = 128     # official: a coarse mask with <= 128 foreground pixels is not refined


def normalize_image(image, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (0..255) or float (0..1) RGB [H,W,3] -> normalised float32 [1,3,H,W].

    Computed as ``(x - mean) / std`` in float32, as the fixtures of the official run.
    """
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"image must be RGB [H,W,3], got shape {list(x.shape)}")
    x = x.to(device)
    x = x.float() if x.dtype == torch.uint8 else x.float() * 255.0
    mean = torch.tensor(MEAN, dtype=torch.float32, device=x.device)
    std = torch.tensor(STD, dtype=torch.float32, device=x.device)
    return ((x - mean) / std).permute(2, 0, 1)[None].contiguous()


def binarize(mask) -> torch.Tensor:
    """Any mask -> bool, foreground where >= 0.5 (uint8 above 1: grey/255 >= 0.5, as officially)."""
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if m.dtype == torch.bool:
        return m
    if m.dtype == torch.uint8 and m.numel() and int(m.max()) > 1:
        return m.float() / 255.0 >= 0.5
    return m.float() >= 0.5


def _unchanged(mask: torch.Tensor, min_px: int = 1) -> bool:
    n = int(mask.sum())
    return n < min_px or n == mask.numel()


@dataclass(frozen=True)
class Mode:
    """One refinement strategy: the coarse-mask rank it takes and how it runs."""

    ndim: int
    run: Callable[["SegRefiner", torch.Tensor, torch.Tensor, NoiseSource, object, CallMeter], torch.Tensor]
    description: str


def _run_lr(model: "SegRefiner", image: torch.Tensor, masks: torch.Tensor, noise: NoiseSource, trace,
            meter: CallMeter) -> torch.Tensor:
    out = masks.float().clone()
    todo = [i for i in range(masks.shape[0]) if not _unchanged(masks[i])]
    if todo:
        out[todo] = refine_lr(model.unet, image, masks[todo].float(), noise, model.lr_config, trace=trace,
                              meter=meter)
    return out


def _run_hr(model: "SegRefiner", image: torch.Tensor, mask: torch.Tensor, noise: NoiseSource, trace,
            meter: CallMeter) -> torch.Tensor:
    if _unchanged(mask, HR_EMPTY_PX + 1):
        return mask.float()
    h, w = mask.shape
    size = model.hr_config.model_size
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:  # the official patch rule needs >= 256 px per side; pad, refine, crop
        image = F.pad(image, (0, pw, 0, ph), mode="replicate")
        mask = F.pad(mask, (0, pw, 0, ph))
    patch_dtype = model.hr_config.patch_dtype or model.placement()[1]
    out = refine_hr(model.unet, image, mask.float(), noise, model.hr_config, trace=trace,
                    patch_unet=model.unet_in(patch_dtype), meter=meter, patch_dtype=patch_dtype, free=free_bytes)
    return out[:h, :w]


def _same_device(a: torch.device, b: torch.device) -> bool:
    """One device ("cuda" is the current CUDA device, taken to be any index)."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


MODES: Mapping[str, Mode] = {
    "lr": Mode(3, _run_lr, "per-object boxes at 256² (LR checkpoint), coarse masks [N,H,W]"),
    "hr": Mode(2, _run_hr, "global 256² pass + full-resolution patches (HR checkpoint), coarse mask [H,W]"),
}


class SegRefiner(SegRefinerNet):
    """The official SegRefiner network with its inference procedures (no training code)."""

    def __init__(self, config: SegRefinerUNetConfig | None = None,
                 lr_config: LRConfig = LRConfig(),
                 hr_config: HRConfig = HRConfig()) -> None:
        super().__init__(config)
        self.lr_config = lr_config
        self.hr_config = hr_config

    def placement(self) -> tuple[torch.device, torch.dtype]:
        """Where the weights are and in what precision (read off them, so it never goes stale)."""
        weight = self.denoise_model.time_embed.weight
        return weight.device, weight.dtype

    def weight_bytes(self, dtype: torch.dtype | None = None) -> int:
        """Bytes of the weights (parameters and buffers), in ``dtype`` where given."""
        return sum(t.numel() * (dtype.itemsize if dtype is not None and t.is_floating_point() else t.element_size())
                   for t in (*self.parameters(), *self.buffers()))

    def hr_work_batch(self, device: torch.device | str | None = None, free: FreeBytes = free_bytes) -> int:
        """The HR patch batch to ask ``device``'s memory for (the family's ``work_size``), priced in
        the model's dtype as ``LoadedModel.activation_bytes`` prices it: ``patch_batch`` of what is
        free there after what the refinement will still load, i.e. the weights where they are not on
        ``device`` yet (default: where they are) and a patch twin in another precision.  The run
        sizes its batches again from the memory then free (``refine_hr``)."""
        here, own = self.placement()
        device = here if device is None else torch.device(device)
        patch = self.hr_config.patch_dtype or own
        reserve = 0 if _same_device(device, here) else self.weight_bytes()
        if patch != own:
            reserve += self.weight_bytes(patch)
        return patch_batch(self.hr_config, device, own, free, reserve)

    def unet_in(self, dtype: torch.dtype | None) -> UNetFn:
        """``unet`` computed in ``dtype``: this model's own when it already is (or ``dtype`` is None),
        else a converted twin that lives as long as the returned function (one refinement)."""
        if dtype is None or dtype == self.placement()[1]:
            return self.unet
        with torch.device("meta"):
            twin = SegRefiner(self.config)
        # channels-last too: 1.6x faster bf16 3x3 convolutions in oneDNN on a CPU (the fp32 model
        # keeps the official layout, whose numbers the parity tests pin to 2e-4)
        twin.load_state_dict({k: v.to(dtype, memory_format=torch.channels_last) if v.dim() == 4 else v.to(dtype)
                              for k, v in self.state_dict().items()}, assign=True)
        return twin.eval().unet

    def unet(self, image: torch.Tensor, mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits [B,1,h,w] (float32) for a normalised image [B,3,h,w], a 0/1 mask [B,1,h,w], t int64 [B]."""
        device, dt = self.placement()
        return self(image.to(device, dt), mask.to(device, dt), t.to(device)).float()

    @torch.inference_mode()
    def refine(self, image, coarse, mode: str, seed: int | None = None, noise: NoiseInput = None,
               trace=None, progress: CallProgress | None = None):
        """Refine coarse mask(s) of one RGB image (uint8 [H,W,3], or float 0..1).

        ``coarse``: [N,H,W] (mode "lr", one mask per object; [H,W] is taken as one object) or [H,W]
        (mode "hr"), binarised at 0.5 (see the module doc).  ``noise``: optional injected uniform
        tensors, one per non-final step in call order (overrides ``seed``).  ``trace``: a list (lr) or
        dict (hr) that receives the intermediate states, for step-by-step comparison.  ``progress(done,
        planned)`` is called after every UNet call (raise from it to stop); ``planned`` grows in mode
        hr once the global pass has chosen the patches.  Returns uint8 {0,1}
        masks of the coarse input's shape, as numpy when ``coarse`` was numpy, else a CPU tensor.
        """
        spec = MODES.get(mode)
        if spec is None:
            raise ValueError(f"unknown SegRefiner mode {mode!r}; choose one of {', '.join(MODES)}")
        masks = binarize(coarse)
        squeeze = mode == "lr" and masks.ndim == 2
        if squeeze:
            masks = masks[None]
        if masks.ndim != spec.ndim:
            raise ValueError(f"mode {mode!r} takes coarse masks with {spec.ndim} dimensions, got {list(masks.shape)}")
        device = self.placement()[0]
        img = normalize_image(image, device)
        if tuple(masks.shape[-2:]) != tuple(img.shape[-2:]):
            raise ValueError(f"the coarse mask is {list(masks.shape[-2:])} but the image is "
                             f"{list(img.shape[-2:])} (height, width); they must match")
        source = NoiseSource(noise if noise is not None else seed, device)
        out = spec.run(self, img, masks.to(device), source, trace, CallMeter(progress))
        out = out.to(torch.uint8).cpu()
        if squeeze:
            out = out[0]
        return out.numpy() if isinstance(coarse, np.ndarray) else out


def refine_with_segrefiner(model: SegRefiner, image, mask, mode: str = "hr", seed: int | None = 0,
                           progress: CallProgress | None = None) -> torch.Tensor:
    """ComfyUI-friendly: image [H,W,3] float 0..1 or uint8, mask [H,W] float 0..1 (foreground 1).

    Returns the refined mask as float32 {0,1} [H,W] on the mask's device (a CPU tensor for numpy
    input).  The mask is binarised at 0.5 first; SegRefiner's output is binary, so soft edges are lost.
    ``progress``: as in ``SegRefiner.refine`` (UNet calls).
    """
    out = model.refine(image, mask, mode, seed=seed, progress=progress)
    out = torch.as_tensor(out).float()
    return out.to(mask.device) if isinstance(mask, torch.Tensor) else out
