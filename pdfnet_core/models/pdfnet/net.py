"""PDFNet: RGB, pseudo-depth and an 8x8 grid of full-resolution patches fused into one mask.

Module names and shapes equal the official inference model's ``state_dict()`` (561 entries), so
``PDFNet_Best.pth`` loads unchanged.  The computation follows the official ``inference()``;
where it is wasteful we compute the same numbers differently:
* cross-modal attention uses ``scaled_dot_product_attention`` instead of materialising the
  up-to 16384 x 16384 score matrix;
* the full-resolution tail (the shallow path's 4x bilinear up-sampling before a stride-4 conv, and
  the last 3x3 convolutions) is streamed over horizontal bands (pdfnet_tail.py), so neither the
  6-channel 4x image nor any full-resolution 128-channel map exists at once;
* the patch branch encodes its tiles in chunks.
Depth is min-max normalised per item (the official code uses one min/max for the whole batch,
which makes a result depend on its batch mates), and a constant depth map becomes all zeros
instead of NaN.

Two revisions of the official code compute different functions of the same weights; both differ
only in the FSE's boundary/integrity step and patch-tile weights (``PDFNetConfig.revision``):
* ``"v2"``: the current code (f4e218b): a thresholded boundary on even-kernel levels, tiles 1x or 2x;
* ``"v1"``: the first release (802b477), which saved the published checkpoint: a soft boundary at
  every level and continuous tile weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...ops.images import minmax_per_item
from ..common.layers import DEVICE_CHUNK_BYTES, RMSNorm, SwiGLU, conv_rms_silu, resize, resize_like
from .tail import device_band_rows, streamed_tail
from ..common.swin import SWIN_B_PDFNET, SwinConfig, SwinTransformer

# The FSE selects patch tiles whose boundary is non-empty; "boundary" is a hard threshold of this
# value on even-kernel levels (official constant).
_BOUNDARY_THRESHOLD = 0.1
REVISIONS = ("v1", "v2")
# The network side must be a multiple of this (the deepest Swin stage is 1/32 of the input).
SIZE_MULTIPLE = 32
# 802b477: boundary = 2 * raw; the integrity prior subtracts 5 boundaries, a tile weighs 1 + 5 * mean.
_V1_BOUNDARY_GAIN = 2.0
_V1_INTEGRITY_GAIN = 5.0
_V1_TILE_GAIN = 5.0


@dataclass(frozen=True)
class PDFNetConfig:
    emb: int = 128
    swin: SwinConfig = field(default_factory=lambda: SWIN_B_PDFNET)
    patch_grid: int = 8          # the image is cut into patch_grid x patch_grid tiles
    pool_ratios: tuple[int, ...] = (1, 1, 2, 2)   # FSE_mix[0..3]
    train_size: int = 1024       # the resolution the released weights were trained at
    # Memory/speed knobs of the CPU only (results do not depend on them); on other devices the
    # chunks are as large as DEVICE_CHUNK_BYTES allows, usually whole tensors (fewer launches).
    band_rows: int = 32          # full-resolution rows computed at a time in the tail
    tile_chunk: int = 16         # patch tiles (per image) encoded at a time
    # Which official code revision's FSE formulas to run (see the module docstring); the weights
    # are the same for both.  load_pdfnet chooses it from the checkpoint.
    revision: str = "v2"

    def __post_init__(self):
        if self.revision not in REVISIONS:
            raise ValueError(f"PDFNet revision must be one of {', '.join(REVISIONS)}, got {self.revision!r}")


@dataclass
class PDFNetOutput:
    logits: torch.Tensor                    # [B,1,S,S], before sigmoid
    sides: list[torch.Tensor] | None = None  # side_1 .. side_5 (deep supervision), when asked for


# --------------------------------------------------------------------------------------------
# tiling


def split_tiles(x: torch.Tensor, grid: int) -> torch.Tensor:
    """[B,C,H,W] -> [grid*grid*B, C, H/grid, W/grid], tile (row j, col i) at index (j*grid + i)*B + b."""
    b, c, h, w = x.shape
    th, tw = h // grid, w // grid
    x = x.view(b, c, grid, th, grid, tw)
    return x.permute(2, 4, 0, 1, 3, 5).reshape(grid * grid * b, c, th, tw)


def merge_tiles(x: torch.Tensor, batch: int, grid: int) -> torch.Tensor:
    """Inverse of split_tiles; the result is channels-last (the layout of the convolutions it feeds)."""
    _, c, th, tw = x.shape
    x = x.permute(0, 2, 3, 1).reshape(grid, grid, batch, th, tw, c)
    return x.permute(2, 0, 3, 1, 4, 5).reshape(batch, grid * th, grid * tw, c).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------
# decoder parts


_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


class SobelKernels(nn.Module):
    """The two fixed Sobel kernels of the official integrity-prior loss.

    Inference never uses them; they exist so that ``state_dict()`` has the official 561 entries
    and a converted checkpoint round-trips.
    """

    def __init__(self):
        super().__init__()
        self.sobel_x = _FixedKernel(_SOBEL_X)
        self.sobel_y = _FixedKernel(tuple(zip(*_SOBEL_X)))


class _FixedKernel(nn.Module):
    def __init__(self, rows: tuple[tuple[float, ...], ...]):
        super().__init__()
        self._rows = rows
        self.register_buffer("weight", torch.tensor(rows).view(1, 1, 3, 3))

    def init_constants(self) -> None:
        self.weight = torch.tensor(self._rows, device="cpu").view(1, 1, 3, 3)


class CrossAttention(nn.Module):
    """Single-head attention with the parameter layout of ``nn.MultiheadAttention(bias=False)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """q [B, Nq, C], kv [B, Nk, C] -> [B*Nq, C].

        The projections run on [B*N, C] rows: the products a 3-d ``F.linear`` would fold to, without
        its reshapes (fewer ops per call on a GPU).
        """
        (b, nq, c), nk = q.shape, kv.shape[1]
        wq, wk, wv = self.in_proj_weight.chunk(3)
        q, kv = q.reshape(b * nq, c), kv.reshape(b * nk, c)
        out = F.scaled_dot_product_attention(F.linear(q, wq).view(b, 1, nq, -1), F.linear(kv, wk).view(b, 1, nk, -1),
                                             F.linear(kv, wv).view(b, 1, nk, -1))
        return self.out_proj(out.reshape(b * nq, -1))


class CoA(nn.Module):
    """Cross-attention block: q + Norm1(Att(q, kv)), then + Norm2(SwiGLU(.))."""

    def __init__(self, dim: int):
        super().__init__()
        self.Att = CrossAttention(dim)
        self.Norm1 = RMSNorm(dim, channels_first=False)
        self.FFN = SwiGLU(dim, dim)
        self.Norm2 = RMSNorm(dim, channels_first=False)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """q [B, Nq, C], kv [B, Nk, C] -> [B, Nq, C] (computed on [B*Nq, C] rows)."""
        b, n, c = q.shape
        x = q.reshape(b * n, c) + self.Norm1(self.Att(q, kv))
        return (x + self.Norm2(self.FFN(x))).view(b, n, c)


def boundary_raw(pred_sigmoid: torch.Tensor) -> torch.Tensor:
    """|t - avgpool(t)| with t = sigmoid(pred_sigmoid) (the official double sigmoid), zero-padded pool."""
    h, w = pred_sigmoid.shape[-2:]
    kh, kw = h // 8, w // 8
    kernel = (kh + 1, kw + 1) if kh % 2 == 0 else (kh, kw)
    t = pred_sigmoid.sigmoid()
    return (t - F.avg_pool2d(t, kernel_size=kernel, stride=1, padding=(kh // 2, kw // 2))).abs()


def boundary_and_integrity(pred: torch.Tensor, revision: str = "v2") -> tuple[torch.Tensor, torch.Tensor]:
    """BIS: (boundary map, integrity prior) of a side logit map.

    v2: a hard boundary (threshold) on even-kernel levels, a soft one otherwise; v1: soft everywhere,
    so its output has no threshold for float noise to flip.
    """
    s = pred.sigmoid()
    raw = boundary_raw(s)
    if revision == "v1":
        boundary = _V1_BOUNDARY_GAIN * raw
        return boundary, F.relu(s - _V1_INTEGRITY_GAIN * boundary)
    boundary = (raw > _BOUNDARY_THRESHOLD).to(s.dtype) if (pred.shape[-2] // 8) % 2 == 0 else raw
    return boundary, F.relu(s - boundary)


def tile_weights(boundary: torch.Tensor, grid: int, revision: str = "v2") -> torch.Tensor:
    """[B,1,grid,grid] weight of each patch tile from the mean boundary over it.

    v2 doubles any tile with boundary; v1 weighs tiles continuously by how much boundary they hold.
    """
    hb, wb = boundary.shape[-2:]
    th, tw = hb // grid, wb // grid
    b = boundary.shape[0]
    score = boundary[..., :grid * th, :grid * tw].reshape(b, 1, grid, th, grid, tw).mean(dim=(3, 5))
    if revision == "v1":
        return 1 + _V1_TILE_GAIN * score
    return 1 + (score > 0).to(boundary.dtype)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def _map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B,HW,C] -> [B,C,H,W] as a channels-last view (no copy; _tokens of it is one, too)."""
    return tokens.reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)


def _sum_into(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + y; at inference written into x, a map nothing reads afterwards."""
    return x + y if torch.is_grad_enabled() else x.add_(y)


class FSE(nn.Module):
    """Fuses image, depth and patch features at one level, guided by the previous prediction."""

    def __init__(self, in_dim: int, emb: int, pool_ratio: int, grid: int, revision: str = "v2"):
        super().__init__()
        self.pool_ratio = pool_ratio
        self.grid = grid
        self.revision = revision
        self.I_channelswich = conv_rms_silu(in_dim, emb)
        self.P_channelswich = conv_rms_silu(in_dim, emb)
        self.D_channelswich = conv_rms_silu(in_dim, emb)
        self.IP = CoA(emb)
        self.PI = CoA(emb)
        self.ID = CoA(emb)
        self.DI = CoA(emb)

    def tile_map(self, boundary: torch.Tensor, hp: int, wp: int) -> torch.Tensor:
        """[B,1,hp,wp]: each patch tile's weight (tile_weights) spread over its pixels."""
        g = self.grid
        factor = tile_weights(boundary, g, self.revision)  # [B,1,g,g]
        return factor.repeat_interleave(hp // g, dim=2).repeat_interleave(wp // g, dim=3)

    def forward(self, prev, cur, last_pred):
        """``prev``: the (image, depth, patch) outputs of the level below; ``cur``: this level's features.

        Each channel switch sees ``cat([resize(prev), cur]) * spatial weights``; the weights are the
        same for every channel, so the convolution runs part by part on weighted copies of the two
        halves (forward_resized_cat) and the concatenations never exist at inference.
        """
        boundary, integrity = boundary_and_integrity(last_pred, self.revision)
        s = last_pred.sigmoid()
        img_size, depth_size, patch_size = (c.shape[-2:] for c in cur)
        hi, wi = img_size
        hd, wd = depth_size
        hp, wp = patch_size
        img_cs = self.I_channelswich.forward_resized_cat([prev[0], cur[0]], img_size, [resize(s, img_size)])
        depth_weights = [resize(s, depth_size),
                         resize(last_pred, depth_size).sigmoid() + resize(integrity, depth_size)]
        depth_cs = self.D_channelswich.forward_resized_cat([prev[1], cur[1]], depth_size, depth_weights)
        patch_weights = [resize(s, patch_size), self.tile_map(boundary, hp, wp).to(cur[2].dtype)]
        patch_cs = self.P_channelswich.forward_resized_cat([prev[2], cur[2]], patch_size, patch_weights)
        p = self.pool_ratio
        pool_img = _tokens(F.adaptive_avg_pool2d(img_cs, (hi // p, wi // p)))
        pool_depth = _tokens(F.adaptive_avg_pool2d(depth_cs, (hd // p, wd // p)))
        pool_patch = _tokens(F.adaptive_avg_pool2d(patch_cs, (hp // p, wp // p)))

        patch_f = self.PI(pool_patch, torch.cat([pool_img, pool_depth], dim=1))
        img_f = self.IP(_tokens(img_cs), patch_f)
        depth_f = self.DI(pool_depth, torch.cat([pool_img, pool_patch], dim=1))
        img_f = self.ID(img_f, depth_f)

        img_out = _sum_into(img_cs, _map(img_f, hi, wi))
        depth_out = _sum_into(depth_cs, resize(_map(depth_f, hd // p, wd // p), (hd, wd)))
        patch_out = _sum_into(patch_cs, resize(_map(patch_f, hp // p, wp // p), (hp, wp)))
        return img_out, depth_out, patch_out


class PDFDecoder(nn.Module):
    def __init__(self, config: PDFNetConfig):
        super().__init__()
        emb = config.emb
        self.band_rows = config.band_rows
        self.FSE_mix = nn.ModuleList(FSE(2 * emb, emb, p, config.patch_grid, config.revision)
                                     for p in config.pool_ratios)
        self.shallow = nn.Sequential(nn.Conv2d(6, emb, kernel_size=4, stride=4), conv_rms_silu(emb, emb))
        self.upsample1 = nn.Sequential(conv_rms_silu(emb, emb))
        self.upsample2 = nn.Sequential(conv_rms_silu(emb, emb))
        self.channel_mix = nn.ModuleList(conv_rms_silu(3 * emb, emb) for _ in range(4))
        self.Bside = nn.ModuleList(nn.Conv2d(emb, 1, 3, padding=1) for _ in range(6))

    def forward(self, img, depth3, img_f, depth_f, patch_f, with_sides: bool = False):
        # Features per source: [L1, L2, L3, L4, glob]; FSE_mix[k] works at level l = 3 - k.
        side = self.Bside[5](resize_like(img_f[4], patch_f[4]) + resize_like(depth_f[4], patch_f[4]) + patch_f[4])
        sides = [side]
        prev = (img_f[4], depth_f[4], patch_f[4])
        for k, fse in enumerate(self.FSE_mix):
            level = 3 - k
            i, d, p = fse(prev, (img_f[level], depth_f[level], patch_f[level]), side)
            img_f[level] = depth_f[level] = patch_f[level] = None  # consumed: free before the next level
            mix = self.channel_mix[level].forward_resized_cat([i, d, p], p.shape[-2:])
            side = self.Bside[level + 1](mix)
            sides.append(side)
            prev = (i, d, p)
        del prev, i, d, p
        for features in (img_f, depth_f, patch_f):
            features.clear()  # the caller's per-call lists: free them before the full-resolution tail
        band_rows = self.band_rows if img.is_cpu else device_band_rows(img.shape[0], mix.shape[1], img.shape[-1])
        final = streamed_tail(self.shallow, self.upsample1[0], self.upsample2[0], self.Bside[0],
                              torch.cat([img, depth3], dim=1).float(), mix, band_rows)
        return final, (sides[::-1] if with_sides else None)


# --------------------------------------------------------------------------------------------
# the model


class PDFNet(nn.Module):
    """``model(image, depth)`` -> final logits [B,1,S,S] (sigmoid gives the foreground alpha)."""

    def __init__(self, config: PDFNetConfig | None = None):
        super().__init__()
        self.config = config = config or PDFNetConfig()
        emb = config.emb
        chans = config.swin.stage_channels
        self.encoder = SwinTransformer(config.swin)
        self.channel_mix1 = conv_rms_silu(chans[0], emb)
        self.channel_mix2 = conv_rms_silu(chans[1], emb)
        self.channel_mix3 = conv_rms_silu(chans[2], emb)
        self.channel_mix4 = conv_rms_silu(chans[3], emb)
        self.channel_mix = conv_rms_silu(4 * emb, emb)
        self.Glob = nn.Sequential(conv_rms_silu(emb, emb))
        self.decoder = PDFDecoder(config)
        self.IntegrityPriorLoss = SobelKernels()

    @property
    def size_multiple(self) -> int:
        return SIZE_MULTIPLE

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone + channel mixing: [L1, L2, L3, L4, glob], all ``emb`` channels."""
        stages = self.encoder(x)
        mixers = (self.channel_mix1, self.channel_mix2, self.channel_mix3, self.channel_mix4)
        levels = [mix(s) for mix, s in zip(mixers, stages)]
        l4 = levels[3]
        glob = self.Glob(self.channel_mix(torch.cat([resize_like(l, l4) for l in levels[:3]] + [l4], dim=1)))
        return levels + [glob]

    def encode_patches(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Encode the patch_grid^2 full-resolution tiles and reassemble each level into one map."""
        grid = self.config.patch_grid
        tiles = split_tiles(image, grid)
        step = max(1, self.tile_chunk(tiles)) * image.shape[0]
        parts = [self.encode(tiles[i:i + step]) for i in range(0, tiles.shape[0], step)]
        return [merge_tiles(torch.cat(level, dim=0), image.shape[0], grid) for level in zip(*parts)]

    def encoder_bytes(self, n: int, h: int, w: int, element_size: int) -> int:
        """Bytes of the widest temporary the encoder makes for n maps of h x w: the hidden activations
        of its first stage's MLP."""
        swin = self.config.swin
        tokens = -(-h // swin.patch_size) * -(-w // swin.patch_size)
        return n * tokens * int(swin.embed_dim * swin.mlp_ratio) * element_size

    def tile_chunk(self, tiles: torch.Tensor) -> int:
        """Tile positions encoded at a time: the CPU's tuned ``config.tile_chunk``; elsewhere as many as
        keep the encoder's widest temporary within DEVICE_CHUNK_BYTES, usually all of them."""
        if tiles.is_cpu:
            return self.config.tile_chunk
        batch = tiles.shape[0] // self.config.patch_grid ** 2
        widest = self.encoder_bytes(batch, tiles.shape[-2], tiles.shape[-1], tiles.element_size())
        return max(1, DEVICE_CHUNK_BYTES // widest)

    def global_batch(self, image: torch.Tensor, depth3: torch.Tensor) -> torch.Tensor:
        """Half-resolution image and depth stacked along the batch (they share the encoder)."""
        half = (image.shape[-2] // 2, image.shape[-1] // 2)
        return torch.cat([resize(image, half), resize(depth3, half)], dim=0)

    def forward(self, image: torch.Tensor, depth: torch.Tensor, with_sides: bool = False):
        check_inputs(image, depth, self.size_multiple)
        dtype = next(self.parameters()).dtype
        b = image.shape[0]
        depth3 = minmax_per_item(depth).to(dtype).expand(-1, 3, -1, -1) if depth.shape[1] == 1 \
            else minmax_per_item(depth).to(dtype)
        image = image.to(dtype)
        half = (image.shape[-2] // 2, image.shape[-1] // 2)
        # Image and depth share the encoder.  In training, and off the CPU when the pair fits
        # DEVICE_CHUNK_BYTES (half the launches), they go through it as one batch; at inference on
        # the CPU one source at a time: half the encoder's peak memory, the same arithmetic.
        pair_fits = self.encoder_bytes(2 * b, half[0], half[1], image.element_size()) <= DEVICE_CHUNK_BYTES
        if torch.is_grad_enabled() or (not image.is_cpu and pair_fits):
            glob = self.encode(self.global_batch(image, depth3))
            img_f, depth_f = [g[:b] for g in glob], [g[b:] for g in glob]
            del glob
        else:
            img_f, depth_f = self.encode(resize(image, half)), self.encode(resize(depth3, half))
        patch_f = self.encode_patches(image)
        final, sides = self.decoder(image, depth3, img_f, depth_f, patch_f, with_sides)
        if with_sides:
            return PDFNetOutput(final, sides)
        return final


def check_inputs(image: torch.Tensor, depth: torch.Tensor, multiple: int) -> None:
    """Clear errors for the mistakes that otherwise surface deep inside torch.

    Values (NaN, inf) are checked on CPU tensors only: on a GPU the check would wait for the device
    to finish and read its answer back (a host sync in every forward).  Inputs reach a GPU through
    ``segment()``, which checks each image on the host when it converts it.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be a [B,3,S,S] tensor (ImageNet-normalised RGB), got "
                         f"{list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    if not isinstance(depth, torch.Tensor) or depth.ndim != 4 or depth.shape[1] not in (1, 3):
        raise ValueError(f"depth must be a [B,1,S,S] tensor, got "
                         f"{list(depth.shape) if isinstance(depth, torch.Tensor) else type(depth).__name__}")
    h, w = image.shape[-2:]
    if h != w or h % multiple or h == 0:
        raise ValueError(f"PDFNet needs a square input whose side is a multiple of {multiple} "
                         f"(trained at 1024); got image {h}x{w}. pdfnet_core.segment() resizes any image.")
    if depth.shape[0] != image.shape[0]:
        raise ValueError(f"image and depth have different batch sizes ({image.shape[0]} vs {depth.shape[0]})")
    if depth.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"depth is {depth.shape[-2]}x{depth.shape[-1]} but image is {h}x{w}; resize depth to the image size")
    if image.is_cpu and not torch.isfinite(image).all():
        raise ValueError("image contains NaN or inf values")
    if depth.is_cpu and not torch.isfinite(depth).all():
        raise ValueError("depth contains NaN or inf values")
