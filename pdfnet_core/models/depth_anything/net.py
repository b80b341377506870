"""Depth-Anything-V2 (relative depth): a DINOv2 ViT-S/B/L backbone and the DPT head.

Module and parameter names follow the official checkpoints exactly (``pretrained.*`` for the ViT,
``depth_head.*`` for the head), so ``depth_anything_v2_{vits,vitb,vitl}.pth`` load without renaming.
The backbone is plain torch rather than timm: timm is not guaranteed to import where this runs, and
its dynamic position-embedding resize is not the official one (see ``interpolate_pos_embed``).

``model(x)`` takes a preprocessed batch [B,3,h,w] (ImageNet-normalised RGB, h and w multiples of 14)
and returns relative inverse depth [B,h,w] (larger = nearer, >= 0, not normalised).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

PATCH_SIZE = 14
# The stored position embedding covers a 37x37 grid: the 518x518 training resolution.
POS_GRID = 37
# DINOv2 adds this to the target grid before computing the bicubic scale factor (the official
# "interpolate_offset"); the exact value changes the result, so it is part of the model.
POS_INTERP_OFFSET = 0.1
LAYER_NORM_EPS = 1e-6
HEAD_HIDDEN = 32


@dataclass(frozen=True)
class DepthAnythingConfig:
    """Architecture of one Depth-Anything-V2 size, plus the licence of its released weights."""

    variant: str
    embed_dim: int
    depth: int
    num_heads: int
    features: int
    out_channels: tuple[int, int, int, int]
    taps: tuple[int, int, int, int]   # 0-based indices of the blocks fed to the DPT head
    licence: str

    @property
    def commercial_use(self) -> bool:
        return "NC" not in self.licence


CONFIGS: Mapping[str, DepthAnythingConfig] = MappingProxyType({
    c.variant: c for c in (
        DepthAnythingConfig("vits", 384, 12, 6, 64, (48, 96, 192, 384), (2, 5, 8, 11), "Apache-2.0"),
        DepthAnythingConfig("vitb", 768, 12, 12, 128, (96, 192, 384, 768), (2, 5, 8, 11), "CC-BY-NC-4.0"),
        DepthAnythingConfig("vitl", 1024, 24, 16, 256, (256, 512, 1024, 1024), (4, 11, 17, 23), "CC-BY-NC-4.0"),
    )
})


def get_config(variant: str) -> DepthAnythingConfig:
    try:
        return CONFIGS[variant]
    except KeyError:
        raise ValueError(f"variant must be one of {', '.join(CONFIGS)}, got {variant!r}") from None


# --------------------------------------------------------------------------------------------
# pure tensor functions


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Position embedding [1, 1+gh*gw, D] for a gh x gw patch grid, computed as DINOv2 does.

    The stored 37x37 table is returned unchanged only for exactly 37x37.  Otherwise it is resized
    bicubically with ``scale_factor=(g+0.1)/37`` (not ``size=``): PyTorch then maps coordinates with
    that scale, so even an axis that stays at 37 is slightly resampled.  Size-based resizing or
    antialiasing moves the depth output by 0.3-3.4, far beyond float noise.
    """
    n_stored = pos_embed.shape[1] - 1
    if grid_h * grid_w == n_stored and grid_h == grid_w:
        return pos_embed
    side = int(round(n_stored ** 0.5))
    dim = pos_embed.shape[-1]
    table = pos_embed.float()
    grid = table[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    scale = ((grid_h + POS_INTERP_OFFSET) / side, (grid_w + POS_INTERP_OFFSET) / side)
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False, antialias=False)
    if tuple(grid.shape[-2:]) != (grid_h, grid_w):  # cannot happen for grids below ~10^5 patches
        raise RuntimeError(f"position embedding resized to {tuple(grid.shape[-2:])}, expected {(grid_h, grid_w)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat((table[:, :1], grid), dim=1).to(pos_embed.dtype)


def check_input(x: torch.Tensor, name: str = "x") -> tuple[int, int]:
    """The patch grid of a preprocessed batch, or a ValueError saying what is wrong with it."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a preprocessed batch [B,3,H,W], got {shape}")
    h, w = x.shape[-2:]
    if h < PATCH_SIZE or w < PATCH_SIZE:
        raise ValueError(f"{name}: {h}x{w} is smaller than one {PATCH_SIZE}x{PATCH_SIZE} patch")
    if h % PATCH_SIZE or w % PATCH_SIZE:
        raise ValueError(f"{name}: height and width must be multiples of {PATCH_SIZE}, got {h}x{w}; "
                         "use pdfnet_core.depth.estimate_depth to resize images the official way")
    return h // PATCH_SIZE, w // PATCH_SIZE


# --------------------------------------------------------------------------------------------
# DINOv2 backbone (names as in the official checkpoint, below the ``pretrained.`` prefix)


class PatchEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)   # row-major grid -> tokens


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        # SDPA equals the official softmax(q*scale @ k^T) @ v within float noise and never
        # materialises the N x N matrix on backends with fused kernels.
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2(nn.Module):
    """The ViT without its (unused) mask token; ``mask_token`` in a checkpoint is ignored on load."""

    def __init__(self, config: DepthAnythingConfig):
        super().__init__()
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, POS_GRID * POS_GRID + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, config.num_heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def intermediate_tokens(self, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
        """Patch tokens [B, gh*gw, D] after each tapped block, each through the final norm."""
        grid_h, grid_w = x.shape[-2] // PATCH_SIZE, x.shape[-1] // PATCH_SIZE
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + interpolate_pos_embed(self.pos_embed, grid_h, grid_w)
        wanted = set(taps)
        out = []
        for i, block in enumerate(self.blocks[:max(taps) + 1]):   # later blocks cannot affect the taps
            tokens = block(tokens)
            if i in wanted:
                out.append(self.norm(tokens)[:, 1:])   # the class token is not used by the head
        return out


# --------------------------------------------------------------------------------------------
# DPT head (names as in the official checkpoint, below the ``depth_head.`` prefix)


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # pre-activation; the ReLUs must not be in place because x is the residual
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)   # unused in refinenet4, which has no skip input
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                size: Sequence[int] | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        # upsampling comes before the 1x1 conv, with align_corners=True (False costs ~5 in output)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    def __init__(self, out_channels: Sequence[int], features: int):
        super().__init__()
        self.layer1_rn = nn.Conv2d(out_channels[0], features, 3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(out_channels[1], features, 3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(out_channels[2], features, 3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(out_channels[3], features, 3, padding=1, bias=False)
        self.refinenet1 = FusionBlock(features)
        self.refinenet2 = FusionBlock(features)
        self.refinenet3 = FusionBlock(features)
        self.refinenet4 = FusionBlock(features)
        self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, HEAD_HIDDEN, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(HEAD_HIDDEN, 1, 1),
            nn.ReLU(),
            nn.Identity(),
        )


class DPTHead(nn.Module):
    def __init__(self, config: DepthAnythingConfig):
        super().__init__()
        oc = config.out_channels
        self.projects = nn.ModuleList(nn.Conv2d(config.embed_dim, c, 1) for c in oc)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),   # x4
            nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),   # x2
            nn.Identity(),                                               # x1
            nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),  # /2, rounding up
        ])
        self.scratch = Scratch(oc, config.features)

    def forward(self, tokens: Sequence[torch.Tensor], grid_h: int, grid_w: int) -> torch.Tensor:
        s = self.scratch
        levels = []
        for t, project, resize, rn in zip(tokens, self.projects, self.resize_layers,
                                          (s.layer1_rn, s.layer2_rn, s.layer3_rn, s.layer4_rn)):
            # channels-last, like the weights (the loader's choice): the token view is channels-last
            # for a batch but reads as NCHW for one image, and oneDNN's low-precision kernels of the
            # two layouts round differently, so a batch changed an image's depth (up to 2/255 in bf16)
            fmap = t.transpose(1, 2).reshape(t.shape[0], t.shape[-1], grid_h, grid_w)
            fmap = fmap.contiguous(memory_format=torch.channels_last)
            levels.append(rn(resize(project(fmap))))
        l1, l2, l3, l4 = levels
        p = s.refinenet4(l4, size=l3.shape[-2:])
        p = s.refinenet3(p, l3, size=l2.shape[-2:])
        p = s.refinenet2(p, l2, size=l1.shape[-2:])
        p = s.refinenet1(p, l1)
        out = s.output_conv1(p)
        out = F.interpolate(out, size=(grid_h * PATCH_SIZE, grid_w * PATCH_SIZE),
                            mode="bilinear", align_corners=True)
        return s.output_conv2(out)


class DepthAnythingV2(nn.Module):
    """Depth-Anything-V2 relative depth; ``config`` says which size."""

    def __init__(self, config: DepthAnythingConfig):
        super().__init__()
        self.config = config
        self.pretrained = DinoV2(config)
        self.depth_head = DPTHead(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid_h, grid_w = check_input(x)
        tokens = self.pretrained.intermediate_tokens(x, self.config.taps)
        depth = self.depth_head(tokens, grid_h, grid_w)
        return F.relu(depth).squeeze(1)


def build_depth_anything(variant: str) -> DepthAnythingV2:
    """An uninitialised-weights model of the named size (load weights with the loader)."""
    return DepthAnythingV2(get_config(variant))
