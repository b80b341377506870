"""A resolution-limited stand-in segmenter: it finds a subject of its own colour exactly, at
whatever resolution it is given (tests/unit/test_second_pass.py, benchmarks/bench_highres.py)."""
from __future__ import annotations

import types

import torch
from torch import nn


class ColourKey(nn.Module):
    """Red minus green of the ImageNet-normalised input, a sharp sigmoid's logits.

    A 1x1 convolution, so a model whose dtype was changed by ``before_run`` refuses inputs made for
    the old one, as a real network does.  It records the shape of every forward and of every depth
    map it is handed.
    """

    config = types.SimpleNamespace(name="swin_v1_t")   # what BiRefNet's spec reads for its memory estimate

    def __init__(self) -> None:
        super().__init__()
        self.key = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.key.weight.copy_(torch.tensor([6.0, -6.0, 0.0]).view(1, 3, 1, 1))
            self.key.bias.fill_(-12.0)
        self.calls: list[tuple[int, ...]] = []
        self.depths: list[tuple[int, ...]] = []

    @property
    def forwards(self) -> int:
        """Images run so far (a batch of n counts n)."""
        return sum(shape[0] for shape in self.calls)

    def forward(self, image, depth=None):
        self.calls.append(tuple(image.shape))
        if depth is not None:
            self.depths.append(tuple(depth.shape))
        return self.key(image)
