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

import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DEVICE_CHUNK_BYTES

# The official shifted-window mask uses -100 rather than -inf; after softmax both give exact zeros
# in float32, but -100 keeps fully padded rows finite in low precision.
_MASK_VALUE = -100.0

# dtype -> a window attention's mask in that dtype (the dtype of its q/k/v: autocast may choose it)
BiasFn = Callable[[torch.dtype], torch.Tensor]


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

    def bias(self, plan: "WindowPlan", dtype: torch.dtype) -> torch.Tensor:
        """The attention mask of ``plan``: relative-position bias (+ shift mask), in ``dtype``."""
        table = self.relative_position_bias_table
        return (plan.single_bias(table) if plan.single else plan.window_bias(table)).to(dtype)

    def forward(self, qkv: torch.Tensor, n: int, plan: "WindowPlan", bias: BiasFn | None = None) -> torch.Tensor:
        """qkv [N*(T+1), 3C]: each map's projected tokens and, last, the projected zero token of the padding.

        ``bias(dtype)``: ``self.bias(plan, dtype)`` from where the caller keeps it.
        Returns the heads concatenated [N*T, C] in token order, before ``proj``.
        """
        t1, c3 = qkv.shape[0] // n, qkv.shape[1]
        heads, d = self.num_heads, c3 // (3 * self.num_heads)
        mask = self.bias(plan, qkv.dtype) if bias is None else bias(qkv.dtype)
        if plan.single:
            # [N, T+1, 3, heads, d] viewed as [N, heads, T(+1), d]: the fused CPU kernel reads strides
            parts = qkv.view(n, t1, 3, heads, d).permute(2, 0, 3, 1, 4)
            q, k, v = parts[0, :, :, :-1], parts[1], parts[2]
            if plan.pad_index is None:
                k, v = k[:, :, :-1], v[:, :, :-1]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
            return out.transpose(1, 2).reshape(n * (t1 - 1), c3 // 3)
        rows = qkv.reshape(-1, d).index_select(0, plan.rows_in)
        q, k, v = rows.view(3, plan.batch, -1, plan.length, d).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        # [B, L, H, d] rows (the CPU kernel's own output layout, so usually no copy) back to token order
        return out.transpose(1, 2).reshape(-1, d).index_select(0, plan.rows_out).view(n * (t1 - 1), c3 // 3)


@dataclass(frozen=True)
class WindowLayout:
    """Where each window token comes from, for one map size and shift.

    ``gather[i]`` is the flat source token of window-token i (row-major windows, row-major tokens)
    after zero-padding to a multiple of the window and rolling by -shift; the value ``h*w`` points
    at an extra zero token appended to the map, which stands for every padded position.
    ``scatter[t]`` is the window-token index holding real token t after the inverse roll.
    """

    gather: torch.Tensor
    scatter: torch.Tensor
    windows: int

    @staticmethod
    def build(h: int, w: int, window: int, shift: int, device) -> "WindowLayout":
        """Index arithmetic on ``device`` only (no data-dependent op, so no host sync on a GPU)."""
        hp, wp = -(-h // window) * window, -(-w // window) * window
        ys = (torch.arange(hp, device=device) + shift) % hp
        xs = (torch.arange(wp, device=device) + shift) % wp
        real = (ys[:, None] < h) & (xs[None, :] < w)
        src = torch.where(real, ys[:, None] * w + xs[None, :], torch.full_like(real, h * w, dtype=torch.long))
        gather = partition_windows(src[None, :, :, None], window).reshape(-1)
        # real token (y, x) sits at (y - shift, x - shift) of the rolled, padded map
        ry = (torch.arange(h, device=device) - shift) % hp
        rx = (torch.arange(w, device=device) - shift) % wp
        win = (ry // window)[:, None] * (wp // window) + (rx // window)[None, :]
        at = (ry % window)[:, None] * window + (rx % window)[None, :]
        scatter = (win * (window * window) + at).reshape(-1)
        return WindowLayout(gather, scatter, (hp // window) * (wp // window))


@dataclass(frozen=True)
class WindowPlan:
    """How one stage's blocks of one shift run their window attention on N maps of h x w tokens.

    One window per map (a map no larger than a window, as the patch tiles' deeper stages): the
    attention runs on the real tokens only, in token order, so nothing is gathered or scattered.
    The padded positions all hold the same key and value (the projected zero token), so they
    collapse into that one key whose bias, per query, is the log-sum-exp of their biases:
    exactly the official softmax over all of them, without the padded queries.
    Several windows: one gather of the q/k/v rows into the fused kernel's layout (windows folded
    into the batch, or into the heads where the shift mask differs per window) and one gather
    back to token order.
    """

    single: bool
    length: int = 0                         # tokens per window
    batch: int = 0                          # attention batch (N*nW, or N with windows in the heads)
    rows_in: torch.Tensor | None = None     # [3*N*nW*heads*L] rows of qkv.view(-1, d)
    rows_out: torch.Tensor | None = None    # [N*T*heads] rows of the attention output
    pair_index: torch.Tensor | None = None  # relative index: single [T, T] between real tokens; several [L, L]
    pad_index: torch.Tensor | None = None   # single: [T, P] relative index to the padded positions
    mask: torch.Tensor | None = None        # shift mask: single [T, T+P]; several [nW, L, L]

    @staticmethod
    def build(n: int, h: int, w: int, window: int, shift: int, heads: int, rel_index: torch.Tensor,
              device) -> "WindowPlan":
        layout = WindowLayout.build(h, w, window, shift, device)
        length = window * window
        hp, wp = -(-h // window) * window, -(-w // window) * window
        mask = shifted_window_mask(hp, wp, window, window // 2, device) if shift else None
        tokens = h * w
        if layout.windows == 1:
            pos = layout.scatter                                  # window position of each real token
            # window positions of the padding, in order: a stable sort puts them (key 0) first
            n_pads = length - tokens
            pads = torch.sort((layout.gather != tokens).to(torch.uint8), stable=True).indices[:n_pads]
            order = torch.cat([pos, pads])
            return WindowPlan(single=True, length=length,
                              pair_index=rel_index[pos][:, pos],
                              pad_index=rel_index[pos][:, pads] if n_pads else None,
                              mask=mask[0][pos][:, order] if mask is not None else None)
        nw = layout.windows
        src = layout.gather.view(nw, length)                       # token of (window, position)
        k = torch.arange(3, device=device)
        img = torch.arange(n, device=device)
        hd = torch.arange(heads, device=device)
        # qkv.view(-1, d) row of (image, token, q/k/v, head)
        row = lambda i, t, part, head: ((i * (tokens + 1) + t) * 3 + part) * heads + head  # noqa: E731
        if shift:   # [3, N, heads, nW, L]: windows in the heads, so the mask can differ per window
            rows_in = row(img[None, :, None, None, None], src[None, None, None], k[:, None, None, None, None],
                          hd[None, None, :, None, None])
            batch, cols = n, heads * nw
            head_of = lambda head, win: head * nw + win  # noqa: E731
        else:       # [3, N*nW, heads, L]: windows in the batch, one bias for all of them
            rows_in = row(img[None, :, None, None, None], src[None, None, :, None], k[:, None, None, None, None],
                          hd[None, None, None, :, None])
            batch, cols = n * nw, heads
            head_of = lambda head, win: head  # noqa: E731
        win, at = layout.scatter // length, layout.scatter % length   # window and position of each token
        b = img[:, None, None] * (batch // n) + (win[None, :, None] if not shift else 0)
        rows_out = (b * length + at[None, :, None]) * cols + head_of(hd[None, None, :], win[None, :, None])
        return WindowPlan(single=False, length=length, batch=batch, rows_in=rows_in.reshape(-1),
                          rows_out=rows_out.reshape(-1), pair_index=rel_index, mask=mask)

    def single_bias(self, table: torch.Tensor) -> torch.Tensor:
        """[1, heads, T, T(+1)]: relative-position bias (+ shift mask) of the real tokens, padding collapsed."""
        heads = table.shape[1]
        t = self.pair_index.shape[0]
        bias = table[self.pair_index.reshape(-1)].view(t, t, heads)
        if self.pad_index is not None:
            pad = table[self.pad_index.reshape(-1)].view(t, -1, heads)
            bias = torch.cat([bias, pad], dim=1)
        bias = bias.permute(2, 0, 1)
        if self.mask is not None:
            bias = bias + self.mask
        if self.pad_index is not None:
            bias = torch.cat([bias[..., :t], bias[..., t:].float().logsumexp(-1, keepdim=True).to(bias.dtype)], dim=-1)
        return bias[None]  # a 4-d mask: with [heads, ...] torch takes the slow unfused path

    def window_bias(self, table: torch.Tensor) -> torch.Tensor:
        """[1, heads(*nW), L, L]: relative-position bias (+ the shift mask of each window)."""
        length = self.length
        bias = table[self.pair_index.reshape(-1)].view(length, length, -1).permute(2, 0, 1)
        if self.mask is None:
            return bias[None]
        return (bias[:, None] + self.mask[None]).reshape(1, -1, length, length)


# Hidden activations of one MLP chunk on the CPU: well under glibc's 32 MiB limit for reusing freed
# memory.  Other devices take chunks of up to DEVICE_CHUNK_BYTES (usually the whole map: one launch each).
_MLP_CHUNK_BYTES = 8 * 2**20


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, plan: WindowPlan, bias: BiasFn | None = None) -> torch.Tensor:
        """x: [N, T, C] tokens of an h x w map (row-major); ``bias``: the attention's (WindowAttention)."""
        # Padded tokens are zero after norm1 and are not masked in the official model: append one
        # zero token for all of them.  Projecting it gives exactly the qkv bias, as in the original.
        # The linears run on [rows, C] matrices: the products a 3-d input folds to, without its reshapes.
        n, t, c = x.shape
        y = self.attn(self.attn.qkv(F.pad(self.norm1(x), (0, 0, 0, 1)).view(-1, c)), n, plan, bias)
        x = x + self.attn.proj(y).view(n, t, c)
        if torch.is_grad_enabled():
            return x + self.mlp(self.norm2(x))
        # The MLP is per token: at inference run it over row chunks of the fresh x, in place, so
        # its 4x-wide hidden activations stay small (and in memory malloc reuses, not fresh pages).
        rows = x.view(-1, x.shape[-1])
        budget = _MLP_CHUNK_BYTES if x.is_cpu else DEVICE_CHUNK_BYTES
        step = max(256, budget // (self.mlp.fc1.out_features * x.element_size()))
        for chunk in rows.split(step) if rows.shape[0] > step else (rows,):
            chunk.add_(self.mlp(self.norm2(chunk)))
        return x


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


# Shapes whose window plans a stage keeps (a forward uses one to three: PDFNet's half-size image
# and depth and its patch tiles, BiRefNet's full and half size).
_PLAN_CACHE_SIZE = 8
# Attention biases a stage keeps at inference, per shape and block, up to this size each: those of
# single-window and unshifted plans (a few hundred KiB).  A shifted plan of a large map has one
# bias per window (up to 120 MiB a block for BiRefNet at 1024²), rebuilt in each forward instead.
_BIAS_CACHE_BYTES = 1 << 20


@dataclass
class _ShapeCache:
    """What a stage keeps for one input shape: its window plans and the small attention biases."""

    plans: dict[int, WindowPlan]
    # block index -> (the bias table it was made from, that table's version, dtype, bias)
    biases: dict[int, tuple[torch.Tensor, int, torch.dtype, torch.Tensor]] = field(default_factory=dict)

    def bias(self, index: int, attn: WindowAttention, plan: WindowPlan, dtype: torch.dtype) -> torch.Tensor:
        if torch.is_grad_enabled():   # training: the bias must be part of the autograd graph
            return attn.bias(plan, dtype)
        table = attn.relative_position_bias_table
        state = _table_state(table)
        kept = self.biases.get(index)
        if kept is not None and kept[0] is table and kept[1] == state and kept[2] == dtype:
            return kept[3]
        bias = attn.bias(plan, dtype)
        if bias.numel() * bias.element_size() <= _BIAS_CACHE_BYTES and not torch.compiler.is_compiling():
            self.biases[index] = (table, state, dtype, bias)
        return bias


def _table_state(table: torch.Tensor) -> int:
    """The in-place version of a bias table, whose values the kept bias was made from.

    A model built under ``torch.inference_mode`` (as ComfyUI runs its nodes, loaders included) has
    inference tensors, which keep no version counter (-1 here): their values change only through
    ``_apply`` (a move, a dtype change), which drops the kept biases anyway."""
    return -1 if table.is_inference() else table._version


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
        # (N, H, W, device, tensor type, inference mode) -> plans and biases: plans depend on the
        # shape only, so they are built once per shape instead of in every forward.  Not state:
        # never saved.
        self._cache: dict[tuple, _ShapeCache] = {}

    def shape_cache(self, x: torch.Tensor) -> _ShapeCache:
        """The window plans of each shift (and the kept biases) for maps of x's shape [N, H, W, C] on x's device."""
        n, h, w, _ = x.shape
        # the tensor type keeps the plans of fake or traced tensors (FakeTensorMode, torch.compile's
        # tracing) apart from real ones; tensors made in inference mode cannot serve autograd later
        key = (n, h, w, x.device, type(x), torch.is_inference_mode_enabled())
        cache = self._cache.get(key)
        if cache is None:
            attn = self.blocks[0].attn
            cache = _ShapeCache({shift: WindowPlan.build(n, h, w, self.window, shift, attn.num_heads,
                                                         attn.relative_position_index, x.device)
                                 for shift in sorted({b.shift for b in self.blocks})})
            if torch.compiler.is_compiling():
                return cache
            if len(self._cache) >= _PLAN_CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = cache
        return cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, H, W, C] -> [N, H, W, C] (before the downsample)."""
        n, h, w, c = x.shape
        cache = self.shape_cache(x)
        tokens = x.reshape(n, h * w, c)
        for i, block in enumerate(self.blocks):
            plan = cache.plans[block.shift]
            tokens = block(tokens, plan, functools.partial(cache.bias, i, block.attn, plan))
        return tokens.view(n, h, w, c)

    def _apply(self, fn, recurse=True):
        # .to(), .half(), .cuda() ... may change the weights in place of their tensors: rebuild
        self._cache = {}
        return super()._apply(fn, recurse)

    def __getstate__(self):
        # pickles and deep copies leave the derived tensors behind (they are rebuilt on use)
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state


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
