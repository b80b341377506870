"""SegRefiner's denoising UNet (``DenoiseUNet``), the improved-diffusion UNet of the official code.

Module names reproduce the official checkpoint exactly, so ``SegRefinerNet().state_dict()`` has the
453 ``denoise_model.*`` names of ``segrefiner_lr_latest.pth`` / ``segrefiner_hr_latest.pth``.  Only
the inference graph is here: the two training-loss Sobel kernels of the file (``loss_texture.*``) are
ignored by the loader, not modelled.

Shape rules: input height and width divisible by 32 (five stride-2 downsamplings); every official
call uses 256x256.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SegRefinerUNetConfig:
    """``configs/segrefiner/segrefiner_lr.py``; ``model_channels=32`` is the narrow test variant."""

    in_channels: int = 4              # normalised RGB + current binary mask
    out_channels: int = 1             # one logit per pixel
    model_channels: int = 128
    num_res_blocks: int = 2
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    attention_resolutions: tuple[int, ...] = (16, 32)   # as down-sampling rates
    num_heads: int = 4
    num_timesteps: int = 6            # rows of the learned time embedding
    groups: int = 32

    @property
    def emb_channels(self) -> int:
        return 4 * self.model_channels

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the activations' dtype (as the official code).

    The affine parameters are taken in float32 too: with bf16/fp16 weights the CPU kernel refuses
    a float32 input with low-precision parameters (the official code keeps norms in float32).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight.float(), self.bias.float()
        if x.is_cpu and x.dtype in (torch.bfloat16, torch.float16):
            # the CPU kernel takes low-precision input with float32 parameters and computes in float32
            # itself: the same values as the float32 round trip without its two full-size copies
            return F.group_norm(x, self.num_groups, weight, bias, self.eps)
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


class NormSiLU(nn.SiLU):
    """The SiLU right after a GroupNorm: in place when no autograd graph is recorded.

    Its input is the norm's fresh output, so overwriting it is safe, and at 256² x 128 channels a
    new activation costs more (page faults of a 32 MiB buffer) than the SiLU itself.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=not torch.is_grad_enabled())


class ResBlock(nn.Module):
    """GN-SiLU-conv, add the projected time embedding, GN-SiLU-(dropout)-conv, plus skip."""

    def __init__(self, cin: int, cout: int, emb_channels: int, groups: int) -> None:
        super().__init__()
        # Indices match the checkpoint: in_layers.{0,2}, emb_layers.1, out_layers.{0,3}.
        self.in_layers = nn.Sequential(GroupNorm32(groups, cin), NormSiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, cout))
        self.out_layers = nn.Sequential(GroupNorm32(groups, cout), NormSiLU(), nn.Identity(),  # dropout 0
                                        nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # in-place adds on fresh conv outputs: the same sums, without two full-size allocations
        h = self.in_layers(x)
        h += self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        out = self.out_layers(h)
        out += self.skip_connection(x)
        return out


class AttentionBlock(nn.Module):
    """Self-attention over all positions with the *legacy* head-major qkv layout.

    The 3c qkv channels are grouped per head first, then q|k|v inside each head; q and k are each
    scaled by d^-1/4 before the product (the official order of operations, kept for parity).
    """

    def __init__(self, channels: int, num_heads: int, groups: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm32(groups, channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        qkv = qkv.reshape(b * self.num_heads, -1, qkv.shape[2])
        d = qkv.shape[1] // 3
        q, k, v = torch.split(qkv, d, dim=1)
        scale = 1 / math.sqrt(math.sqrt(d))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        h = torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, flat.shape[-1])
        # the residual is added in x's own layout, so a channels-last input stays channels-last
        return x + self.proj_out(h).reshape(b, c, *spatial)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepSequential(nn.Sequential):
    """A block list entry: ResBlocks receive the time embedding, the other layers do not."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


def _cpu_layout(x: torch.Tensor) -> torch.Tensor:
    """Low-precision CPU activations go channels-last; everything else is left as it is.

    oneDNN's bf16/fp16 CPU convolutions work channels-last, so an NCHW activation is reordered in and
    out of every one of them (a bf16 step took about 1.1x longer).  float32 stays NCHW: there the
    channels-last GroupNorm and convolutions sum in another order (logits differ by ~1e-3), and
    float32 is the precision checked against the official run.
    """
    if x.is_cpu and x.dtype in (torch.bfloat16, torch.float16):
        return x.contiguous(memory_format=torch.channels_last)
    return x


class DenoiseUNet(nn.Module):
    """``logits = DenoiseUNet(cat([image, mask], 1), t)``, t an int64 timestep 0..5 per batch element."""

    def __init__(self, config: SegRefinerUNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or SegRefinerUNetConfig()
        self.config = cfg
        mc, emb_ch, g = cfg.model_channels, cfg.emb_channels, cfg.groups
        # Given an (uninitialised) weight so nn.Embedding skips its normal_() init: on the meta device
        # that init alone costs seconds of one-time dispatch set-up, and the loader overwrites it anyway.
        self.time_embed = nn.Embedding(cfg.num_timesteps, emb_ch, _weight=torch.empty(cfg.num_timesteps, emb_ch))

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, cfg.num_heads, g)

        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        skip_channels = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * mc, emb_ch, g)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepSequential(ResBlock(ch, ch, emb_ch, g), attn(ch), ResBlock(ch, ch, emb_ch, g))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), mult * mc, emb_ch, g)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(attn(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(g, ch), NormSiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = self.config.multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"SegRefiner UNet input must have height and width divisible by {m}, "
                             f"got {tuple(x.shape[-2:])}")
        emb = self.time_embed(t)
        hs = []
        h = _cpu_layout(x)
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


class SegRefinerNet(nn.Module):
    """The checkpoint's module tree: the UNet lives under ``denoise_model`` as in the official detector."""

    def __init__(self, config: SegRefinerUNetConfig | None = None) -> None:
        super().__init__()
        self.denoise_model = DenoiseUNet(config)

    @property
    def config(self) -> SegRefinerUNetConfig:
        return self.denoise_model.config

    def forward(self, image: torch.Tensor, mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.denoise_model(torch.cat([image, mask.to(image.dtype)], dim=1), t)
