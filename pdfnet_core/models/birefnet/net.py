"""BiRefNet (Zheng et al., CAAI AIR 2024) in the configuration of every released checkpoint.

Module names equal the official ``state_dict()`` keys (``bb.*``, ``squeeze_module.0.*``, ``decoder.*``),
so ``model.safetensors`` from ZhengPeng7/BiRefNet* loads without renaming.  The released flags are
hard-coded (the key set changes with any of them): ``mul_scl_ipt='cat'`` (the backbone also runs on
the half-size image), ``cxt_num=3``, one ``BasicDecBlk`` squeeze block, ``BasicDecBlk`` decoder
blocks with ``ASPPDeformable``, split patch inputs (``dec_ipt_split``) and gradient attention
(``out_ref``).  Only the backbone varies (Swin-L or Swin-T, ``VARIANTS``).

Not built, because inference never reads them: the training-only heads ``decoder.conv_ms_spvn_*``
and ``decoder.gdt_convs_pred_*``, and BatchNorm's ``num_batches_tracked`` counters.  The loader
accounts for those entries by name (birefnet_loader.py).

Every bilinear resize uses ``align_corners=True`` as the official code does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .deform_conv import deform_conv2d
from ..common.layers import resize, resize_like
from ..common.swin import SWIN_L_BIREFNET, SWIN_T_BIREFNET, SwinConfig, SwinTransformer

SIZE_MULTIPLE = 32          # the x4 level is a 32 x 32 grid of image patches
_DEC_INTER = 64             # dec_channels_inter='fixed'
_ASPP_PLANES = 256
_ASPP_KERNELS = (1, 3, 7)   # aspp_deforms.0..2
_GDT_CHANNELS = 16
_IPT_INTER = 64
_BN_EPS = 1e-5


@dataclass(frozen=True)
class BiRefNetConfig:
    name: str
    swin: SwinConfig

    @property
    def lateral_channels(self) -> tuple[int, int, int, int]:
        """x4..x1 channels after the half-size features are concatenated ('cat' doubles them)."""
        return tuple(2 * c for c in reversed(self.swin.stage_channels))

    @property
    def squeeze_in_channels(self) -> int:
        return sum(self.lateral_channels)  # x4 with x1, x2, x3 concatenated in front (cxt_num=3)


VARIANTS: dict[str, BiRefNetConfig] = {
    "swin_v1_l": BiRefNetConfig("swin_v1_l", SWIN_L_BIREFNET),
    "swin_v1_t": BiRefNetConfig("swin_v1_t", SWIN_T_BIREFNET),
}


# --------------------------------------------------------------------------------------------
# patch stacking: the two orders of the official code (see the reference README)


def _patches_current(x: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """einops 'b c (hg h) (wg w) -> b (c hg wg) h w', the official order since 2024-11-05."""
    b, c, h, w = x.shape
    x = x.view(b, c, gh, h // gh, gw, w // gw).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(b, c * gh * gw, h // gh, w // gw)


def _patches_legacy(x: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """The pre-2024-11-05 ``get_patches_batch``: columns, then rows, the 3 channels of a patch together."""
    b, c, h, w = x.shape
    x = x.view(b, c, gh, h // gh, gw, w // gw).permute(0, 4, 2, 1, 3, 5)
    return x.reshape(b, gw * gh * c, h // gh, w // gw)


PATCH_ORDERS: dict[str, Callable[[torch.Tensor, int, int], torch.Tensor]] = {
    "current": _patches_current,
    "legacy": _patches_legacy,
}


def check_patch_order(order: str) -> str:
    if order not in PATCH_ORDERS:
        raise ValueError(f"patch_order must be one of {', '.join(sorted(PATCH_ORDERS))}, got {order!r}")
    return order


# --------------------------------------------------------------------------------------------
# blocks


class EvalBatchNorm2d(nn.Module):
    """BatchNorm2d with running statistics only (no ``num_batches_tracked``: a training counter
    that some conversions drop; the loader ignores it by name)."""

    def __init__(self, channels: int, eps: float = _BN_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class DeformableConv2d(nn.Module):
    """Modulated DCNv2: offsets and a 2*sigmoid mask predicted from the input, no bias."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int):
        super().__init__()
        self.padding = kernel // 2
        self.offset_conv = nn.Conv2d(in_ch, 2 * kernel * kernel, kernel, padding=self.padding)
        self.modulator_conv = nn.Conv2d(in_ch, kernel * kernel, kernel, padding=self.padding)
        self.regular_conv = nn.Conv2d(in_ch, out_ch, kernel, padding=self.padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset_conv(x)
        mask = 2.0 * torch.sigmoid(self.modulator_conv(x))
        return deform_conv2d(x, offset, self.regular_conv.weight, mask, self.padding)


class ASPPBranch(nn.Module):
    """``_ASPPModuleDeformable``: DCN -> BN -> ReLU."""

    def __init__(self, in_ch: int, kernel: int):
        super().__init__()
        self.atrous_conv = DeformableConv2d(in_ch, _ASPP_PLANES, kernel)
        self.bn = EvalBatchNorm2d(_ASPP_PLANES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.atrous_conv(x)))


class ASPPDeformable(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.aspp1 = ASPPBranch(channels, 1)
        self.aspp_deforms = nn.ModuleList(ASPPBranch(channels, k) for k in _ASPP_KERNELS)
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, _ASPP_PLANES, 1, bias=False),
            EvalBatchNorm2d(_ASPP_PLANES), nn.ReLU())
        self.conv1 = nn.Conv2d(_ASPP_PLANES * (2 + len(_ASPP_KERNELS)), channels, 1, bias=False)
        self.bn1 = EvalBatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # conv1 (1x1, no bias) of the five concatenated branches is the sum of its weight slices applied to
        # each branch: no concatenated copy.  The official code resizes the 1x1 pool branch back with
        # align_corners=True, a broadcast, so its slice is applied once per image, not once per pixel.
        weights = self.conv1.weight.split(_ASPP_PLANES, dim=1)
        y = F.conv2d(self.aspp1(x), weights[0])
        for branch, weight in zip(self.aspp_deforms, weights[1:]):
            y = y + F.conv2d(branch(x), weight)
        y = y + F.conv2d(self.global_avg_pool(x), weights[-1])
        return F.relu(self.bn1(y))  # Dropout(0.5) is the identity in eval


class BasicDecBlk(nn.Module):
    """conv3x3 -> BN -> ReLU -> ASPPDeformable -> conv3x3 -> BN (no final ReLU)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, _DEC_INTER, 3, padding=1)
        self.bn_in = EvalBatchNorm2d(_DEC_INTER)
        self.dec_att = ASPPDeformable(_DEC_INTER)
        self.conv_out = nn.Conv2d(_DEC_INTER, out_ch, 3, padding=1)
        self.bn_out = EvalBatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_in(self.conv_in(x)))
        return self.bn_out(self.conv_out(self.dec_att(x)))


class SimpleConvs(nn.Module):
    """Patch-input block: two 3x3 convs, no activation between them (official)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, _IPT_INTER, 3, padding=1)
        self.conv_out = nn.Conv2d(_IPT_INTER, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv1(x))


class BasicLatBlk(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _gdt_convs(in_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, _GDT_CHANNELS, 3, padding=1), EvalBatchNorm2d(_GDT_CHANNELS), nn.ReLU())


# --------------------------------------------------------------------------------------------
# decoder


class Decoder(nn.Module):
    """Top-down over x4..x1; at each level the image's patch stack joins the features.

    Level k (4, 3, 2) runs ``decoder_block{k}`` and the gradient attention ``gdt_convs_{k}`` /
    ``gdt_convs_attn_{k}``, then upsamples and adds ``lateral_block{k}`` of the next skip feature.
    """

    def __init__(self, config: BiRefNetConfig):
        super().__init__()
        c = config.lateral_channels                          # x4, x3, x2, x1
        ipt_out = (c[0] // 8, c[0] // 8, c[1] // 8, c[2] // 8, c[3] // 8)   # ipt_blk5..1
        ipt_in = tuple(3 * 4 ** e for e in (5, 4, 3, 2, 0))  # grids 32, 16, 8, 4, 1
        for k, cin, cout in zip((5, 4, 3, 2, 1), ipt_in, ipt_out):
            self.add_module(f"ipt_blk{k}", SimpleConvs(cin, cout))
        dec_out = (c[1], c[2], c[3], c[3] // 2)              # decoder_block4..1
        dec_in = (c[0] + ipt_out[0], c[1] + ipt_out[1], c[2] + ipt_out[2], c[3] + ipt_out[3])
        for k, cin, cout in zip((4, 3, 2, 1), dec_in, dec_out):
            self.add_module(f"decoder_block{k}", BasicDecBlk(cin, cout))
        self.conv_out1 = nn.Sequential(nn.Conv2d(dec_out[3] + ipt_out[4], 1, 1))
        for k, skip, out in zip((4, 3, 2), c[1:], dec_out[:3]):
            self.add_module(f"lateral_block{k}", BasicLatBlk(skip, out))
        for k, out in zip((4, 3, 2), dec_out[:3]):
            self.add_module(f"gdt_convs_{k}", _gdt_convs(out))
            self.add_module(f"gdt_convs_attn_{k}", nn.Sequential(nn.Conv2d(_GDT_CHANNELS, 1, 1)))
        self.patch_order = "current"

    def patch_input(self, k: int, image: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``ipt_blk{k}`` of the image cut into patches of ``like``'s size, stacked along channels."""
        gh, gw = image.shape[-2] // like.shape[-2], image.shape[-1] // like.shape[-1]
        stack = image if gh == gw == 1 else PATCH_ORDERS[self.patch_order](image, gh, gw)
        # channels-last like the backbone's features, which the convolutions run faster on (and the
        # concatenation with them then copies no transposed memory)
        stack = resize_like(stack, like).contiguous(memory_format=torch.channels_last)
        return getattr(self, f"ipt_blk{k}")(stack)

    def forward(self, image: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor,
                x4: torch.Tensor) -> torch.Tensor:
        p = x4
        for k, skip in ((4, x3), (3, x2), (2, x1)):
            p = torch.cat([p, self.patch_input(k + 1, image, p)], dim=1)
            p = getattr(self, f"decoder_block{k}")(p)
            attn = getattr(self, f"gdt_convs_attn_{k}")(getattr(self, f"gdt_convs_{k}")(p))
            p = p * attn.sigmoid()
            p = resize_like(p, skip) + getattr(self, f"lateral_block{k}")(skip)
        p = torch.cat([p, self.patch_input(2, image, p)], dim=1)
        p = self.decoder_block1(p)
        # conv_out1 is 1x1 and the bilinear upsampling mixes no channels, so they commute: its weights
        # for decoder_block1's channels are applied at 1/4 resolution and one channel is upsampled
        # instead of all of them (no full-size copy of those channels nor of their concatenation).
        conv = self.conv_out1[0]
        w_dec, w_ipt = conv.weight.split([p.shape[1], conv.weight.shape[1] - p.shape[1]], dim=1)
        logits = resize_like(F.conv2d(p, w_dec), image)
        return logits + F.conv2d(self.patch_input(1, image, image), w_ipt, conv.bias)


# --------------------------------------------------------------------------------------------
# model


class BiRefNet(nn.Module):
    """``model(image)``: ImageNet-normalised RGB [B,3,H,W] (H, W multiples of 32) -> logits [B,1,H,W].

    ``patch_order`` ("current" or "legacy") must be the order the weights were trained with; the
    loader sets it from the registry.  ``train_hw`` is the (height, width) the weights were trained
    at, for callers that choose the network resolution, and ``dynamic_sides`` the (smallest, largest)
    side of weights trained at many sizes (None: one size); neither affects ``forward``.
    """

    def __init__(self, config: BiRefNetConfig | None = None, patch_order: str = "current"):
        super().__init__()
        self.config = config = config or VARIANTS["swin_v1_l"]
        self.bb = SwinTransformer(config.swin)
        self.squeeze_module = nn.Sequential(BasicDecBlk(config.squeeze_in_channels, config.lateral_channels[0]))
        self.decoder = Decoder(config)
        self.patch_order = patch_order
        self.train_hw: tuple[int, int] = (1024, 1024)
        self.dynamic_sides: tuple[int, int] | None = None

    @property
    def size_multiple(self) -> int:
        return SIZE_MULTIPLE

    @property
    def patch_order(self) -> str:
        return self.decoder.patch_order

    @patch_order.setter
    def patch_order(self, order: str) -> None:
        self.decoder.patch_order = check_patch_order(order)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x1..x4 with the half-size features concatenated; x4 also carries x1..x3 in front (cxt)."""
        full = self.bb(x)
        half = self.bb(resize(x, (x.shape[-2] // 2, x.shape[-1] // 2)))
        feats = [torch.cat([f, resize_like(h, f)], dim=1) for f, h in zip(full, half)]
        del full, half
        x4 = feats[3]
        feats[3] = torch.cat([resize_like(f, x4) for f in feats[:3]] + [x4], dim=1)
        return feats

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_image(image, self.size_multiple)
        image = image.to(next(self.parameters()).dtype)
        x1, x2, x3, x4 = self.encode(image)
        x4 = self.squeeze_module(x4)
        return self.decoder(image, x1, x2, x3, x4)


def check_image(image: torch.Tensor, multiple: int) -> None:
    """Clear errors for the mistakes that otherwise surface deep inside torch.

    Values (NaN, inf) are checked on CPU tensors only: on a GPU the check would wait for the device
    and read its answer back (a host sync in every forward); ``segment()`` checks each image on the
    host when it converts it.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be a [B,3,H,W] tensor (ImageNet-normalised RGB), got "
                         f"{list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    h, w = image.shape[-2:]
    if h == 0 or w == 0 or h % multiple or w % multiple:
        raise ValueError(f"BiRefNet needs height and width that are multiples of {multiple} (its finest patch "
                         f"grid is 32 x 32); got {h}x{w}. pdfnet_core.segment() resizes any image.")
    if image.is_cpu and not torch.isfinite(image).all():
        raise ValueError("image contains NaN or inf values")
