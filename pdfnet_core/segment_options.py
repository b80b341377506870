"""What a segmentation run is asked to do (``SegmentOptions``), without importing torch.

The command line builds its job description from these before any model or tensor exists;
``pipeline.segment`` runs them.
"""
from __future__ import annotations

from dataclasses import dataclass

# How a source image is placed on the square network canvas (pipeline.PLACEMENTS implements them).
RESIZE_MODES = ("squash", "pad")


def tta_side(size: int, scale: float, multiple: int = 32) -> int:
    """The network side of one TTA scale: ``size * scale`` to the nearest multiple (at least one)."""
    return max(multiple, int(round(size * scale / multiple)) * multiple)


@dataclass(frozen=True)
class SegmentOptions:
    size: int = 1024                 # network side; a multiple of 32 (trained at 1024)
    resize: str = "squash"           # "squash" (as trained) or "pad" (keep aspect, crop back)
    tta: bool = False                # 6 passes: horizontal flip x scales, logits averaged (paper's evaluation)
    tta_scales: tuple[float, ...] = (0.75, 1.0, 1.25)
    batch_size: int = 1              # images per forward pass
    quantize_depth: bool = True      # computed depth priors are stored 8-bit, as in training

    def network_side(self, multiple: int = 32) -> int:
        """The largest network side a forward pass runs at (with TTA: its largest scale)."""
        if not self.tta:
            return self.size
        return max(tta_side(self.size, scale, multiple) for scale in self.tta_scales)

    def validate(self) -> "SegmentOptions":
        """Itself, if every option is usable; else a ValueError that names the option."""
        if self.size < 32 or self.size % 32:
            raise ValueError(f"size must be a positive multiple of 32 (PDFNet was trained at 1024), got {self.size}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {sorted(RESIZE_MODES)}, got {self.resize!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.tta and not self.tta_scales:
            raise ValueError("tta_scales is empty")
        return self
