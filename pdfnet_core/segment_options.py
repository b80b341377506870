"""What a segmentation run is asked to do (``SegmentOptions``), without importing torch.

The command line builds its job description from these before any model or tensor exists;
``pipeline.segment`` runs them.
"""
from __future__ import annotations

from dataclasses import dataclass

# How a source image is placed on the network canvas (pipeline.PLACEMENTS implements them).
RESIZE_MODES = ("squash", "pad")

# ``SegmentOptions.size`` that means "the loaded file's own size" (its Canvas decides).
AUTO_SIZE = 0


@dataclass(frozen=True)
class Canvas:
    """The network input sizes one loaded weight file runs at (``FamilySpec.canvas`` builds it from
    the family's contract and the file's facts).

    ``train_hw``: the (height, width) it was trained at; "auto" runs there, squashing the image as
    in training (BiRefNet_lite-2K: 1440x2560 whatever the image's orientation, since no portrait
    training is documented).  ``dynamic``: (smallest, largest) side of a file trained at many sizes
    (BiRefNet_dynamic); "auto" then runs near the image's own size.  ``max_side``: the largest side
    a request may ask for.
    """

    train_hw: tuple[int, int]
    max_side: int
    dynamic: tuple[int, int] | None = None
    multiple: int = 32

    def problem(self, size: int) -> str | None:
        """Why a requested square side cannot run on this file, or None."""
        if size != AUTO_SIZE and size > self.max_side:
            return (f"network size {size} is over the {self.max_side} this model file supports (trained at "
                    f"{self.trained_text}); use at most {self.max_side}, or auto (0) for its own size")
        return None

    @property
    def trained_text(self) -> str:
        if self.dynamic is not None:
            return f"{self.dynamic[0]}-{self.dynamic[1]} per side"
        return f"{self.train_hw[1]}x{self.train_hw[0]} (width x height)"

    def network_hw(self, height: int, width: int, size: int = AUTO_SIZE) -> tuple[int, int]:
        """(height, width) of the network input for a (height, width) image; ``size``: a square side,
        or AUTO_SIZE for the file's own (a dynamic file: the image's size, keeping its aspect, in
        multiples of ``multiple`` within ``dynamic``)."""
        if size != AUTO_SIZE:
            return size, size
        if self.dynamic is None:
            return self.train_hw
        lo, hi = self.dynamic
        scale = min(hi / max(height, width), max(1.0, lo / min(height, width)))
        m = self.multiple
        h, w = (min(hi, max(lo, round(side * scale / m) * m)) for side in (height, width))
        return h, w

    def largest_hw(self, size: int = AUTO_SIZE) -> tuple[int, int]:
        """The largest network input any image can get (memory estimates before the image is known)."""
        if size != AUTO_SIZE:
            return size, size
        return self.train_hw if self.dynamic is None else (self.dynamic[1], self.dynamic[1])


def tta_side(size: int, scale: float, multiple: int = 32) -> int:
    """The network side of one TTA scale: ``size * scale`` to the nearest multiple (at least one)."""
    return max(multiple, int(round(size * scale / multiple)) * multiple)


@dataclass(frozen=True)
class SegmentOptions:
    size: int = AUTO_SIZE            # 0: the file's own size (its Canvas); else a square side, a multiple of 32
    resize: str = "squash"           # "squash" (as trained) or "pad" (keep aspect, crop back)
    tta: bool = False                # 6 passes: horizontal flip x scales, logits averaged (paper's evaluation)
    tta_scales: tuple[float, ...] = (0.75, 1.0, 1.25)
    batch_size: int = 1              # images per forward pass
    quantize_depth: bool = True      # computed depth priors are stored 8-bit, as in training
    # Segment the subject's crop again where that gives it >= 1.5x the network pixels (ops.subject);
    # a subject that fills the frame, or a photo no larger than the network, costs nothing more.
    second_pass: bool = True
    # Where the subject is still over 2x the network side: run the network again on full-resolution
    # tiles along its boundary (one forward per tile, so off unless asked for).
    boundary_tiles: bool = False

    def network_side(self, multiple: int = 32) -> int:
        """The largest network side a forward pass runs at (with TTA: its largest scale); only for a
        square size (auto depends on the model: ``network_hw``)."""
        if self.size == AUTO_SIZE:
            raise ValueError("size 0 (auto) is the model file's own size: ask network_hw(canvas) instead")
        if not self.tta:
            return self.size
        return max(tta_side(self.size, scale, multiple) for scale in self.tta_scales)

    def network_hw(self, canvas: Canvas, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """The largest (height, width) a forward pass runs at for an image of that size on ``canvas``
        (None: for any image), with TTA at its largest scale; for memory estimates."""
        base = canvas.largest_hw(self.size) if height is None or width is None else \
            canvas.network_hw(height, width, self.size)
        if not self.tta:
            return base
        scale = max(self.tta_scales)
        return tta_side(base[0], scale, canvas.multiple), tta_side(base[1], scale, canvas.multiple)

    def validate(self) -> "SegmentOptions":
        """Itself, if every option is usable; else a ValueError that names the option."""
        if self.size != AUTO_SIZE and (self.size < 32 or self.size % 32):
            raise ValueError(f"size must be a positive multiple of 32 (PDFNet was trained at 1024) or 0 for the "
                             f"model file's own size, got {self.size}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {sorted(RESIZE_MODES)}, got {self.resize!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.tta and not self.tta_scales:
            raise ValueError("tta_scales is empty")
        return self
