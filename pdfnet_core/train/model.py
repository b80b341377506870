"""PDFNet with its auxiliary depth head, in training mode, and the saved model's official layout.

The training forward reuses the inference model's own modules (``encode``, ``encode_patches``,
``decoder(with_sides=True)``); they are plain differentiable tensor code, including the streamed
full-resolution tail and the 8x8 patch split/merge.  Unlike the official training step (whose
``split``/``merge`` run under ``no_grad``), the patch branch therefore receives gradients.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models.common.swin import SwinTransformer, WindowAttention
from ..models.pdfnet.loader import load_pdfnet
from ..models.pdfnet.net import CrossAttention, PDFNet, PDFNetConfig, check_inputs, minmax_per_item
from ..weights import read_state_dict
from .depth_head import PREFIX, DepthHead, fit_report, head_entries
from .swin_timm import load_imagenet_swin

log = logging.getLogger("pdfnet_core")


@dataclass
class TrainOutput:
    logits: list[torch.Tensor]        # final, side 1..5
    depth_logits: list[torch.Tensor]  # depth head: final (H/2), side 1..4


class TrainingPDFNet(nn.Module):
    def __init__(self, net: PDFNet, depth_head: DepthHead):
        super().__init__()
        self.net = net
        self.depth_head = depth_head

    def forward(self, image: torch.Tensor, depth: torch.Tensor) -> TrainOutput:
        net = self.net
        check_inputs(image, depth, net.size_multiple)
        b = image.shape[0]
        depth3 = minmax_per_item(depth).to(image.dtype)
        depth3 = depth3.expand(-1, 3, -1, -1) if depth3.shape[1] == 1 else depth3
        glob = net.encode(net.global_batch(image, depth3))
        img_f = [g[:b] for g in glob]
        depth_f = [g[b:] for g in glob]
        patch_f = net.encode_patches(image)
        depth_logits = self.depth_head(image, depth3, img_f, depth_f, patch_f)
        # the decoder empties the lists it is given (to free memory at inference): hand it copies
        final, sides = net.decoder(image, depth3, list(img_f), list(depth_f), list(patch_f), with_sides=True)
        return TrainOutput([final] + sides, depth_logits)

    def official_state_dict(self, include_depth_head: bool = True) -> dict[str, torch.Tensor]:
        """The inference model's entries (the official 561 for Swin-B), plus ``depth_decoder.*``."""
        state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        if include_depth_head:
            state.update({PREFIX + k: v.detach().clone() for k, v in self.depth_head.state_dict().items()})
        return {k: v.contiguous() for k, v in state.items()}


# --------------------------------------------------------------------------------------------
# initialisation


def init_weights(module: nn.Module) -> None:
    """The official initialisation for weights no checkpoint provides.

    Swin: truncated normal (std 0.02) linears, unit LayerNorms, std 0.02 position tables; the PDFNet
    convolutions (decoder, channel mixers, depth head): truncated normal std 0.02, zero bias;
    attention projections: Xavier uniform (``nn.MultiheadAttention``'s default).
    """
    encoders = [m for m in module.modules() if isinstance(m, SwinTransformer)]
    in_encoder = {id(m) for e in encoders for m in e.modules()}
    for m in module.modules():
        if id(m) in in_encoder:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, WindowAttention):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)
            elif isinstance(m, SwinTransformer) and m.absolute_pos_embed is not None:
                nn.init.trunc_normal_(m.absolute_pos_embed, std=0.02)
        elif isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, CrossAttention):
            nn.init.xavier_uniform_(m.in_proj_weight)


# --------------------------------------------------------------------------------------------
# building the model a run starts from


@dataclass(frozen=True)
class StartingPoint:
    model: TrainingPDFNet
    description: str
    head_from_checkpoint: bool


def build_training_model(config: PDFNetConfig, init: Path | None = None, swin_imagenet: str | None = None,
                         revision: str = "auto") -> StartingPoint:
    """PDFNet + depth head in train mode with gradients, from a released checkpoint, an ImageNet
    Swin-B, or random initialisation.

    ``revision`` picks the official formulas (and the depth-head layout): "auto" takes what the
    ``init`` checkpoint shows (load_pdfnet's rule: v1 for the released files) and otherwise
    ``config.revision``.
    """
    if init is not None:
        state = read_state_dict(init)
        net = load_pdfnet(state, config=config, revision=revision)
        entries = head_entries(state)
    else:
        net = PDFNet(config if revision == "auto" else dataclasses.replace(config, revision=revision))
        init_weights(net)
        entries = {}
    head = DepthHead(config.emb, net.config.revision)
    init_weights(head)
    head_loaded = False
    if init is not None:
        problems = fit_report(head, entries) if entries else ["the file has no depth_decoder entries"]
        if problems:
            log.warning("the depth head starts from random initialisation: %s", "; ".join(problems[:5]))
        else:
            head.load_state_dict(entries)
            head_loaded = True
        description = f"fine-tuning {init}" + (" (depth head from the file)" if head_loaded else "")
    elif swin_imagenet is not None:
        load_imagenet_swin(net.encoder, swin_imagenet)
        description = f"training from the ImageNet Swin encoder {swin_imagenet}"
    else:
        log.warning("no init checkpoint and no ImageNet Swin: training from random initialisation")
        description = "training from random initialisation"
    # load_pdfnet hands out an inference model (eval, no gradients); training wants both back
    model = TrainingPDFNet(net.float(), head)
    model.train().requires_grad_(True)
    return StartingPoint(model, f"{description}, revision {net.config.revision}", head_loaded)
