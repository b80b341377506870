"""What a batch cut-out job is: every choice the command line makes, in one typed config.

Free of torch, like everything the command line reads while it parses its arguments.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..segment_options import SegmentOptions

if TYPE_CHECKING:   # a type only: ops.refine imports torch, which this module does not
    from ..ops.refine import RefineConfig

OUTPUT_FORMATS = {"png": ".png", "webp": ".webp"}
ENGINES = ("local", "ray")

# Images above this many pixels are refused from their header, before they are decoded.
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "PDFNET_MAX_PIXELS"


class UsageError(Exception):
    """Bad arguments or set-up, found before any work: exit status 2, one line."""


@dataclass(frozen=True)
class Shard:
    """Input ``index`` of ``count`` (0-based, as SLURM_ARRAY_TASK_ID and JOB_COMPLETION_INDEX)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shard":
        try:
            k, n = (int(part) for part in text.split("/"))
        except ValueError:
            raise UsageError(f"--shard must be K/N (e.g. 0/4), got {text!r}") from None
        if n < 1 or not 0 <= k < n:
            raise UsageError(f"--shard {text}: need 0 <= K < N")
        return cls(k, n)


@dataclass(frozen=True)
class CutoutConfig:
    inputs: tuple[str, ...]          # local files/folders or pyarrow filesystem URIs (s3://, gs://, file://)
    out: Path
    recursive: bool = False
    weights: Path | None = None
    # the segmentation model: a family name (its default file, or --weights), a known file name or a path
    model: str = "pdfnet"
    patch_order: str = "auto"        # BiRefNet's loader option (the node's patch_order)
    depth_weights: Path | None = None
    depth_dir: Path | None = None
    models_dir: Path | None = None
    download: bool = False
    # network size, placement, TTA, depth quantisation, and images per forward pass
    segment: SegmentOptions = field(default_factory=SegmentOptions)
    fmt: str = "png"
    rgba: bool = True
    mask: bool = False
    background: str | None = None
    background_image: Path | None = None
    fit: str = "cover"
    foreground: str = "multilevel"
    alpha: str = "mask"              # where the alpha comes from: a name of ops.matting.ALPHA_SOURCES
    mask_dir: Path | None = None     # refine these masks (white = subject, same names) instead of segmenting
    despill: str = "none"            # none | auto | green | blue | #RRGGBB
    fine_hair: float = 0.0           # --alpha matting: 0..1 widens the band outwards (strands the mask lost)
    edge_shift: int = 0              # --alpha matting: pixels, > 0 expands the alpha edge, < 0 chokes it
    refine: "RefineConfig | None" = None   # the mask refinement of PDFNet Refine Mask; None: none
    overwrite: bool = False
    retry_failed: bool = False
    device: str = "auto"
    dtype: str = "fp32"
    revision: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    # how the work is run (never changes an output; segment.batch_size neither)
    auto_batch: bool = False         # --batch-size auto: segment.batch_size from the free memory, once loaded
    prefetch: int = 2                # decoder threads; the writer pool has as many
    quiet: bool = False
    shard: Shard = Shard()
    engine: str = "local"
    workers: int = 1
    gpus_per_worker: float | None = None  # None: 1 where the Ray cluster has GPUs, else 0
    address: str | None = None

    def output_kinds(self) -> list[tuple[str, str]]:
        """(tag, suffix) of each file one input produces."""
        kinds = []
        if self.rgba:
            kinds.append(("", OUTPUT_FORMATS[self.fmt]))
        if self.mask:
            kinds.append(("_mask", ".png"))
        if self.background or self.background_image:
            kinds.append(("_composite", OUTPUT_FORMATS[self.fmt]))
        return kinds

    def settings_key(self) -> str:
        """A short hash of every setting that changes an output's pixels: an output made under
        other settings is not done.  (The device is left out: it changes rounding, not intent.)"""
        def ident(path: Path | None) -> str | None:
            if path is None:
                return None
            try:
                st = path.stat()
                return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                return str(path)

        fields = {"weights": ident(self.weights), "depth_weights": ident(self.depth_weights),
                  "depth_dir": None if self.depth_dir is None else str(self.depth_dir.resolve()),
                  "models_dir": None if self.models_dir is None else str(self.models_dir.resolve()),
                  "size": self.segment.size, "resize": self.segment.resize, "tta": self.segment.tta,
                  "quantize_depth": self.segment.quantize_depth, "second_pass": self.segment.second_pass,
                  "boundary_tiles": self.segment.boundary_tiles,
                  "background": self.background, "background_image": ident(self.background_image),
                  "fit": self.fit, "foreground": self.foreground, "dtype": self.dtype, "revision": self.revision}
        # added only when set, so outputs made before these settings existed stay done
        if self.model != "pdfnet" or self.patch_order != "auto":
            fields.update(model=ident(Path(self.model)) if Path(self.model).is_file() else self.model,
                          patch_order=self.patch_order)
        if self.refine is not None:
            fields["refine"] = asdict(self.refine)
        # Only where they differ from the defaults, so outputs made before these settings existed stay done.
        extra = {"alpha": self.alpha, "despill": self.despill, "fine_hair": self.fine_hair, "edge_shift": self.edge_shift,
                 "mask_dir": None if self.mask_dir is None else str(self.mask_dir.resolve())}
        fields.update({k: v for k, v in extra.items() if v != getattr(CutoutConfig, k)})
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
