"""The auxiliary depth decoder that PDFNet's training loss supervises (SiLog on five outputs).

Both official code revisions train one, with the same 42 entry names (``depth_decoder.*``) in two
layouts; the head follows the revision the model runs, so a saved model's head tells
``load_pdfnet`` which formulas trained it (pdfnet_core/models/pdfnet/revision.py):
* ``"v1"`` (802b477, the layout the released ``PDFNet_Best.pth`` carries, so fine-tuning that file
  starts from its trained head): per level the image, depth and patch features are SUMMED, and the
  shallow path sees the RGB image;
* ``"v2"`` (the current code): the three are CONCATENATED, and the shallow path sees RGB + depth.

A U-shaped path runs from the global + L4 features up to L1, then the shallow path brings the result
to half the input resolution (S = input side; the patch features, at twice the resolution, are
resized to the image features first):

    f4 = Decoder[0](cat[glob, L4])                                    S/64
    fk = Decoder[4-k](cat[resize(f_{k+1} -> Lk), Lk])                 k = 3, 2, 1 (S/32 .. S/8)
    x  = upsample1(resize(f1 + resize(shallow -> f1), 2x))            S/4
    x  = upsample2(resize(x + resize(shallow -> x), 2x))              S/2
    outputs: [Bside[0](x), Bside[1](f1), Bside[2](f2), Bside[3](f3), Bside[4](f4)]

Inference never runs it; it only trains the shared encoder through a depth-reconstruction task.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.common.layers import conv_rms_silu, resize, resize_like
from ..models.pdfnet.net import REVISIONS

PREFIX = "depth_decoder."


class DepthHead(nn.Module):
    """``head(image, depth3, img_f, depth_f, patch_f)`` -> five depth logit maps, final (S/2) first."""

    def __init__(self, emb: int = 128, revision: str = "v1"):
        super().__init__()
        if revision not in REVISIONS:
            raise ValueError(f"revision must be one of {', '.join(REVISIONS)}, got {revision!r}")
        self.revision = revision
        level = emb if revision == "v1" else 3 * emb       # channels of one fused level
        self.Decoder = nn.ModuleList(
            nn.Sequential(conv_rms_silu(2 * level if k == 0 else emb + level, 2 * emb), conv_rms_silu(2 * emb, emb))
            for k in range(4))
        self.shallow = nn.Sequential(nn.Conv2d(3 if revision == "v1" else 6, emb, kernel_size=3, padding=1))
        self.upsample1 = conv_rms_silu(emb, emb)
        self.upsample2 = conv_rms_silu(emb, emb)
        self.Bside = nn.ModuleList(nn.Conv2d(emb, 1, 3, padding=1) for _ in range(5))

    def fuse(self, img_f: list[torch.Tensor], depth_f: list[torch.Tensor],
             patch_f: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.revision == "v1":
            return [i + d + resize_like(p, i) for i, d, p in zip(img_f, depth_f, patch_f)]
        return [torch.cat([i, d, resize_like(p, i)], dim=1) for i, d, p in zip(img_f, depth_f, patch_f)]

    def forward(self, image: torch.Tensor, depth3: torch.Tensor, img_f: list[torch.Tensor],
                depth_f: list[torch.Tensor], patch_f: list[torch.Tensor]) -> list[torch.Tensor]:
        l1, l2, l3, l4, glob = self.fuse(img_f, depth_f, patch_f)
        f4 = self.Decoder[0](torch.cat([glob, l4], dim=1))
        f3 = self.Decoder[1](torch.cat([resize_like(f4, l3), l3], dim=1))
        f2 = self.Decoder[2](torch.cat([resize_like(f3, l2), l2], dim=1))
        f1 = self.Decoder[3](torch.cat([resize_like(f2, l1), l1], dim=1))
        shallow = self.shallow(image if self.revision == "v1" else torch.cat([image, depth3], dim=1))
        x = f1 + resize_like(shallow, f1)
        x = self.upsample1(resize(x, (2 * x.shape[-2], 2 * x.shape[-1])))
        x = x + resize_like(shallow, x)
        x = self.upsample2(resize(x, (2 * x.shape[-2], 2 * x.shape[-1])))
        return [self.Bside[0](x), self.Bside[1](f1), self.Bside[2](f2), self.Bside[3](f3), self.Bside[4](f4)]


def head_entries(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``depth_decoder.*`` entries of a checkpoint, without the prefix."""
    return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}


def fit_report(head: DepthHead, entries: dict[str, torch.Tensor]) -> list[str]:
    """Why ``entries`` cannot initialise ``head`` (empty when they fit name for name, shape for shape)."""
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    problems = [f"missing {k}" for k in sorted(set(expected) - set(entries))]
    problems += [f"unexpected {k}" for k in sorted(set(entries) - set(expected))]
    problems += [f"{k}: file {list(v.shape)} vs head {list(expected[k])}" for k, v in sorted(entries.items())
                 if k in expected and tuple(v.shape) != expected[k]]
    return problems
