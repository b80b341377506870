"""Detection-style Swin Transformer v1 (the variant PDFNet and BiRefNet were trained with).

Parameter names follow the official checkpoints (``patch_embed.*``, ``absolute_pos_embed``,
``layers.i.blocks.j.*``, ``layers.i.downsample.*``, ``norm0..3``), so a state dict under the
``encoder.`` (PDFNet) or ``bb.`` (BiRefNet) prefix loads without renaming.

This is deliberately *not* timm's Swin, whose numbers differ at every size PDFNet uses:
* each block zero-pads the normalised tokens to a multiple of the window *before* the cyclic
  shift, and the padded tokens are not masked (they attend as keys/values carrying only the qkv
  bias);
* the shift is applied even when the map is smaller than one window;
* every stage output gets its own LayerNorm (``norm{i}``) and is taken before the patch
  merging that ends the stage;
* the optional absolute position embedding (224-pixel pretraining grid) is resized bicubically
  to the token grid of every input.
Tensors stay channels-last ([N, H, W, C]) inside the backbone; stage outputs are [N, C, H, W].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# The official shifted-window mask uses -100 rather than -inf; after softmax both give exact zeros
# in float32, but -100 keeps fully padded rows finite in low precision.
_MASK_VALUE = -100.0


@dataclass(frozen=True)
class SwinConfig:
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    patch_size: int = 4
    in_chans: int = 3
    mlp_ratio: float = 4.0
    ape: bool = False
    pretrain_img_size: int = 224
    layer_norm_eps: float = 1e-5

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))


SWIN_B_PDFNET = SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12, ape=True)
SWIN_L_BIREFNET = SwinConfig(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12)
SWIN_T_BIREFNET = SwinConfig(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)


def relative_position_index(window: int) -> torch.Tensor:
    """index[a, b] = (ya - yb + w - 1) * (2w - 1) + (xa - xb + w - 1) over a window's tokens."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def shifted_window_mask(hp: int, wp: int, window: int, shift: int, device) -> torch.Tensor:
    """[nW, L, L] additive mask: tokens that were not neighbours before the roll cannot attend."""
    labels = torch.zeros(hp, wp, dtype=torch.int64, device=device)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    region = 0
    for rows in bounds:
        for cols in bounds:
            labels[rows, cols] = region
            region += 1
    win = partition_windows(labels[None, :, :, None], window)[0, :, :, 0]  # [nW, L]
    differ = win[:, :, None] != win[:, None, :]
    return torch.zeros(differ.shape, device=device).masked_fill_(differ, _MASK_VALUE)


def partition_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """[N, H, W, C] (H, W multiples of window) -> [N, nW, window*window, C], row-major windows."""
    n, h, w, c = x.shape
    x = x.view(n, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(n, (h // window) * (w // window), window * window, c)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=True)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def init_constants(self) -> None:
        self.relative_position_index = relative_position_index(self.window)

    def relative_bias(self) -> torch.Tensor:
        """[heads, L, L] bias gathered from the table."""
        length = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(length, length, self.num_heads).permute(2, 0, 1)

    def forward(self, qkv_windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """qkv_windows [N, nW, L, 3C] (already projected); mask [nW, L, L] or None.

        Returns the heads concatenated, before ``proj`` (the caller applies it to real tokens only).
        """
        n, nw, length, c3 = qkv_windows.shape
        heads, d = self.num_heads, c3 // (3 * self.num_heads)
        # Windows are folded into the head dimension ([N, nW*heads, L, d]) so that one additive
        # bias of shape [nW*heads, L, L] (relative position + shift mask) broadcasts over the images
        # and the fused CPU/GPU attention kernels can be used.
        qkv = qkv_windows.view(n, nw, length, 3, heads, d).permute(3, 0, 1, 4, 2, 5).reshape(3, n, nw * heads, length, d)
        q, k, v = qkv.unbind(0)
        bias = self.relative_bias().to(q.dtype)[None]  # [1, heads, L, L]
        if mask is not None:
            bias = bias + mask.to(q.dtype)[:, None]  # [nW, heads, L, L]
        bias = bias.expand(nw, heads, length, length).reshape(1, nw * heads, length, length)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return out.view(n, nw, heads, length, d).transpose(2, 3).reshape(n, nw, length, c3 // 3)


@dataclass(frozen=True)
class WindowLayout:
    """Where each window token comes from, for one map size and shift.

    ``gather[i]`` is the flat source token of window-token i (row-major windows, row-major tokens)
    after zero-padding to a multiple of the window and rolling by -shift; the value ``h*w`` points
    at an extra zero token appended to the map, which stands for every padded position.
    ``scatter[t]`` is the window-token index holding real token t after the inverse roll.
    One gather replaces the official pad, roll and partition copies (and one more their inverse).
    """

    gather: torch.Tensor
    scatter: torch.Tensor
    windows: int

    @staticmethod
    def build(h: int, w: int, window: int, shift: int, device) -> "WindowLayout":
        hp, wp = -(-h // window) * window, -(-w // window) * window
        ys = (torch.arange(hp, device=device) + shift) % hp
        xs = (torch.arange(wp, device=device) + shift) % wp
        real = (ys[:, None] < h) & (xs[None, :] < w)
        src = torch.where(real, ys[:, None] * w + xs[None, :], torch.full_like(real, h * w, dtype=torch.long))
        gather = partition_windows(src[None, :, :, None], window).reshape(-1)
        scatter = torch.empty(h * w, dtype=torch.long, device=device)
        is_real = gather < h * w
        scatter[gather[is_real]] = torch.arange(gather.numel(), device=device)[is_real]
        return WindowLayout(gather, scatter, (hp // window) * (wp // window))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, layout: WindowLayout, mask: torch.Tensor | None) -> torch.Tensor:
        """x: [N, L, C] tokens of an h x w map (row-major)."""
        n, length, c = x.shape
        # Padded tokens are zero after norm1 and are not masked in the official model: append one
        # zero token for all of them.  Projecting it gives exactly the qkv bias, as in the original.
        y = F.pad(self.norm1(x), (0, 0, 0, 1))
        qkv = self.attn.qkv(y).index_select(1, layout.gather)
        y = self.attn(qkv.view(n, layout.windows, -1, 3 * c), mask if self.shift else None)
        y = y.reshape(n, -1, c).index_select(1, layout.scatter)
        x = x + self.attn.proj(y)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Blocks, then (except in the last stage) the patch merging that halves the grid."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float, eps: float,
                 downsample: bool):
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if j % 2 == 0 else window // 2, mlp_ratio, eps)
            for j in range(depth))
        self.downsample = PatchMerging(dim, eps) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, H, W, C] -> [N, H, W, C] (before the downsample)."""
        n, h, w, c = x.shape
        ws = self.window
        layouts = {shift: WindowLayout.build(h, w, ws, shift, x.device) for shift in {b.shift for b in self.blocks}}
        mask = shifted_window_mask(-(-h // ws) * ws, -(-w // ws) * ws, ws, ws // 2, x.device)
        tokens = x.reshape(n, h * w, c)
        for block in self.blocks:
            tokens = block(tokens, layouts[block.shift], mask)
        return tokens.view(n, h, w, c)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int, eps: float):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C', H/p, W/p] (channels-first: the position embedding is added next)."""
        _, _, h, w = x.shape
        p = self.patch
        x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SwinTransformer(nn.Module):
    """Returns the four normalised stage maps [N, C_i, H/4/2^i, W/4/2^i]."""

    def __init__(self, config: SwinConfig):
        super().__init__()
        self.config = config
        eps = config.layer_norm_eps
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, config.embed_dim, eps)
        if config.ape:
            grid = config.pretrain_img_size // config.patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, grid, grid))
        else:
            self.absolute_pos_embed = None
        last = len(config.depths) - 1
        self.layers = nn.ModuleList(
            SwinStage(dim, depth, heads, config.window_size, config.mlp_ratio, eps, downsample=i < last)
            for i, (dim, depth, heads) in enumerate(zip(config.stage_channels, config.depths, config.num_heads)))
        for i, dim in enumerate(config.stage_channels):
            self.add_module(f"norm{i}", nn.LayerNorm(dim, eps=eps))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        if self.absolute_pos_embed is not None:
            ape = F.interpolate(self.absolute_pos_embed, size=x.shape[-2:], mode="bicubic", align_corners=False)
            x = x + ape.to(x.dtype)
        x = x.permute(0, 2, 3, 1)
        outputs = []
        for i, stage in enumerate(self.layers):
            x = stage(x)
            # the permuted NHWC buffer is already channels-last memory, which the convolutions after
            # the backbone prefer on CPU and GPU; no copy back to NCHW
            outputs.append(getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2))
            if stage.downsample is not None:
                x = stage.downsample(x)
        return outputs
