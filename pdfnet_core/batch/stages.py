"""The stages of one input, one set of functions for both engines: decode, infer (depth and
segmentation of a batch of same-size images), render (foreground and composites) and store
(encode and atomic write).  ``cut_out`` runs them in a row for one input; the local engine runs
them on a pipeline of threads, the Ray engine in tasks and actors.  Stage times are reported
through a ``StageTimer`` (its ``on_start`` callback shows the stage being worked on).
"""
from __future__ import annotations

import contextlib
import gc
import glob
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from PIL import Image

from .. import pipeline
from ..catalogue import resolve_model_choice
from ..defaults import download_allowed, family_folder, model_file
from ..download import ensure_model_file
from ..families import family
from ..loading import load_cached
from ..memory import fitting_batch, free_bytes
from ..ops.composite import composite_over_color, composite_over_image, to_rgba
from ..ops.despill import DespillConfig, remove_spill
from ..ops.foreground import estimate_foreground
from ..ops.matting import MattingConfig, alpha_from_mask
from ..ops.trimap import TrimapConfig
from ..ops.images import to_uint8
from ..ops.refine import refine_mask
from ..precision import dtype_for, resolve_device
from ..specs import LoadedModel
from .config import OUTPUT_FORMATS, CutoutConfig
from .imageio import read_depth, read_image, write_array
from .jobs import IMAGE_SUFFIXES, Job, source_stat
from .manifest import DONE, FAILED, Record, make_record, output_entries


class StageTimer:
    """Seconds per stage of one input (or of one batch, shared by its inputs)."""

    def __init__(self, on_start: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.on_start = on_start
        self._open: tuple[str, float] | None = None

    @property
    def current(self) -> str | None:
        return None if self._open is None else self._open[0]

    def begin(self, stage: str) -> None:
        self.end()
        if self.on_start is not None:
            self.on_start(stage)
        self._open = (stage, time.perf_counter())

    def end(self) -> None:
        if self._open is not None:
            stage, t0 = self._open
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
            self._open = None

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self.begin(stage)
        try:
            yield
        finally:
            self.end()


@dataclass
class CutoutModels:
    """What segments the images of a batch job: PDFNet and (unless --depth-dir) its depth model."""

    pdfnet: LoadedModel | None
    depth: LoadedModel | None

    def network_side(self, item: "Decoded", cfg: CutoutConfig) -> int | None:
        """The longer side of the network input the item's image ran at; None where no segmenter ran."""
        if self.pdfnet is None or item.image is None:
            return None
        return max(self.pdfnet.canvas.network_hw(item.image.shape[0], item.image.shape[1], cfg.segment.size))

    def segment(self, images: list[torch.Tensor], depth: list[torch.Tensor] | None, cfg: CutoutConfig,
                progress: Callable[[int, int], None] | None = None) -> list[torch.Tensor]:
        # pipeline.segment looked up at call time: the fault tests put a stand-in there
        return pipeline.segment(images, depth, self.pdfnet, depth_model=self.depth,
                                options=replace(cfg.segment, batch_size=len(images)), progress=progress)


@dataclass
class Decoded:
    job: Job
    stat: tuple[int, int] | None
    image: torch.Tensor | None = None      # [H,W,3] float
    depth: torch.Tensor | None = None      # [H,W] from --depth-dir
    mask: torch.Tensor | None = None       # [H,W] in 0..1 from --mask-dir: segmentation is skipped
    error: str | None = None
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int] | None:
        return None if self.image is None else (self.image.shape[0], self.image.shape[1])


# --------------------------------------------------------------------------------------------
# failures


_OOM_TEXT = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")


def file_failure(exc: BaseException) -> str | None:
    """The one-line reason when ``exc`` is a failure of one file (the batch goes on), else None.

    Per-file: bad input (ValueError, including InputError), unreadable or unwritable files
    (OSError), decompression bombs, and running out of memory on the CPU (MemoryError, a
    RuntimeError "not enough memory") or the GPU (torch's OutOfMemoryError, matched by name so no
    CUDA is needed).  Anything else is a bug and ends the run with status 3.
    """
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or \
            (isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXT)):
        return f"out of memory ({type(exc).__name__}: {text}); try a smaller --size or --max-pixels, or --device cpu"
    if isinstance(exc, (ValueError, OSError, Image.DecompressionBombError)):
        return text
    return None


def release_memory() -> None:
    """After a failed file: drop its tensors now and hand cached GPU memory back."""
    gc.collect()
    with contextlib.suppress(Exception):
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    with contextlib.suppress(Exception):
        if torch.backends.mps.is_available():
            torch.mps.empty_cache()


# --------------------------------------------------------------------------------------------
# models


def load_models(cfg: CutoutConfig) -> CutoutModels:
    """The --model segmenter (default PDFNet) and, where it needs depth and there is no --depth-dir,
    Depth-Anything-V2, each loaded once through the model cache."""
    if cfg.mask_dir is not None:   # the masks are given: nothing to segment
        return CutoutModels(None, None)
    device = resolve_device(cfg.device)
    choice = resolve_model_choice(cfg.model, cfg.weights)
    spec = choice.spec
    if choice.known is not None:
        weights = ensure_model_file(choice.known, family_folder(spec.name, cfg.models_dir),
                                    allow_download=download_allowed(cfg.download or None))
    else:
        weights = model_file(spec.name, choice.path, cfg.models_dir, cfg.download or None)
    # the loader options this family takes, by the names its spec gives them (revision, patch_order)
    given = {"revision": cfg.revision, "patch_order": cfg.patch_order}
    options = {opt.name: given[opt.name] for opt in spec.options if opt.name in given}
    net = load_cached(spec, weights, device=device, dtype=dtype_for(cfg.dtype, spec.auto_dtypes, device), **options)
    needs_depth = spec.inputs.needs_depth and cfg.depth_dir is None
    return CutoutModels(net, load_depth_model(cfg) if needs_depth else None)


def auto_batch_size(cfg: CutoutConfig, models: CutoutModels) -> int:
    """``--batch-size auto``: the images of one forward pass that fit in the free memory of the model's
    device (1 on a CPU), once the models are loaded there."""
    if models.pdfnet is None:
        return 1
    per_image = models.pdfnet.activation_bytes(cfg.segment.network_hw(models.pdfnet.canvas), 1)
    return fitting_batch(per_image, free_bytes(models.pdfnet.device))


def load_depth_model(cfg: CutoutConfig) -> LoadedModel:
    """The Depth-Anything-V2 of a job without --depth-dir: --depth-weights or the default file."""
    device = resolve_device(cfg.device)
    weights = model_file("depth_anything", cfg.depth_weights, cfg.models_dir, cfg.download or None)
    dtype = dtype_for(cfg.dtype, family("depth_anything").auto_dtypes, device)
    # fp16 overflows in Depth-Anything-V2's attention
    return load_cached("depth_anything", weights, device=device, dtype=torch.float32 if dtype == torch.float16 else dtype)


# --------------------------------------------------------------------------------------------
# the stages


def _depth_file(job: Job, cfg: CutoutConfig, root: Path | None = None, what: str = "depth map") -> Path:
    # depth maps (and --mask-dir masks) are named after the source (a renamed output, see
    # distinct_outputs, keeps it)
    rel = Path(job.stem.parent.as_posix()) / job.source_stem
    folder = ((root or cfg.depth_dir) / rel).parent
    found = next((p for p in sorted(folder.glob(glob.escape(rel.name) + ".*")) if p.suffix.lower() in IMAGE_SUFFIXES),
                 None)
    if found is None:
        raise ValueError(f"no {what} named {rel.name}.* in {folder}")
    return found


def read_mask(path: Path, max_pixels: int) -> torch.Tensor:
    """A --mask-dir mask [H,W] in 0..1 (white = subject) from an 8- or 16-bit or float file."""
    mask = read_depth(path, max_pixels)
    top = float(mask.max()) if mask.numel() else 0.0
    return (mask / (65535.0 if top > 255 else 255.0 if top > 1 else 1.0)).clamp_(0, 1)


def decode(job: Job, cfg: CutoutConfig) -> Decoded:
    """Read one input (and its --depth-dir map); a per-file failure is kept in ``error``."""
    t0 = time.perf_counter()
    item = Decoded(job, None)
    try:
        item.stat = source_stat(job.source)
        item.image = read_image(job.source, cfg.max_pixels)
        if cfg.depth_dir is not None:
            path = _depth_file(job, cfg)
            item.depth = read_depth(path, cfg.max_pixels)
            if tuple(item.depth.shape) != tuple(item.image.shape[:2]):
                raise ValueError(f"the depth map {path} is {item.depth.shape[0]}x{item.depth.shape[1]} but the "
                                 f"image is {item.image.shape[0]}x{item.image.shape[1]}; a depth map must have "
                                 "its image's size")
        if cfg.mask_dir is not None:
            path = _depth_file(job, cfg, cfg.mask_dir, "mask")
            item.mask = read_mask(path, cfg.max_pixels)
            if tuple(item.mask.shape) != tuple(item.image.shape[:2]):
                raise ValueError(f"the mask {path} is {item.mask.shape[0]}x{item.mask.shape[1]} but the image is "
                                 f"{item.image.shape[0]}x{item.image.shape[1]}; a mask must have its image's size")
    except Exception as exc:
        reason = file_failure(exc)
        if reason is None:
            raise
        item.image = item.depth = item.mask = None
        item.error = reason
    item.stages["decode"] = time.perf_counter() - t0
    return item


def infer(items: Sequence[Decoded], models: CutoutModels, cfg: CutoutConfig, timer: StageTimer) -> list[torch.Tensor]:
    """Alpha [H,W] of each of ``items`` (one size), in one ``segment`` call of ``len(items)`` images."""
    if all(item.mask is not None for item in items):   # --mask-dir: the masks are the segmentation
        return [item.mask for item in items]
    n = len(items)
    computes_depth = items[0].depth is None and models.depth is not None
    depth = None if computes_depth else [item.depth for item in items]

    def progress(done: int, total: int) -> None:
        if computes_depth and done >= n and total == 2 * n and timer.current == "depth":
            timer.begin("segmentation")

    timer.begin("depth" if computes_depth else "segmentation")
    try:
        return models.segment([item.image for item in items], depth, cfg, progress)
    finally:
        timer.end()


def matting_config(cfg: CutoutConfig, network_side: int | None = None) -> MattingConfig:
    """The matting stage of a job: the band scaled from the network side the mask was made at, its
    colours and despill.  ``network_side``: the longer side the image ran at (None: no segmenter ran,
    as with --mask-dir: the requested size, or the trimap's usual 1024 under auto)."""
    side = network_side or cfg.segment.size or TrimapConfig.network_size
    return MattingConfig.from_options(network_size=side, fine_hair=cfg.fine_hair, edge_shift=cfg.edge_shift,
                                      despill=cfg.despill, foreground=cfg.foreground)


def render(item: Decoded, alpha: torch.Tensor, cfg: CutoutConfig, background: torch.Tensor | None,
           timer: StageTimer, network_side: int | None = None) -> list[tuple[Path, np.ndarray]]:
    """The 8-bit arrays of every output of one input, with their target paths (``network_side``: see
    ``matting_config``)."""
    job, image = item.job, item.image[None]
    fmt = OUTPUT_FORMATS[cfg.fmt]
    if cfg.refine is not None:
        with timer("refine"):
            alpha = refine_mask(alpha[None], cfg.refine, image)[0]
    matted = None
    if cfg.alpha != "mask":
        with timer(cfg.alpha):
            # On the job's device: matting is thousands of small steps, a GPU's work (a no-op on the CPU)
            device = resolve_device(cfg.device)
            alpha, matted = alpha_from_mask(image.to(device), alpha[None].to(device), cfg.alpha,
                                            matting_config(cfg, network_side))
            alpha, matted = alpha[0].cpu(), None if matted is None else matted.cpu()
    with timer("foreground"):
        fg = image if matted is None else matted
        if matted is None and cfg.foreground != "none" and (cfg.rgba or cfg.background is not None
                                                            or background is not None):
            fg = estimate_foreground(image, alpha[None], cfg.foreground).foreground
        if matted is None and cfg.despill != "none":   # matting removed the spill itself
            fg = remove_spill(image, fg, alpha[None], alpha[None] <= MattingConfig().trimap.low,
                              DespillConfig(key=cfg.despill))
        arrays = []
        if cfg.rgba:
            arrays.append((job.target(cfg, "", fmt), to_uint8(to_rgba(fg, alpha[None])[0])))
        if cfg.mask:
            arrays.append((job.target(cfg, "_mask", ".png"), to_uint8(alpha[..., None])))
        if cfg.background is not None:
            arrays.append((job.target(cfg, "_composite", fmt),
                           to_uint8(composite_over_color(fg, alpha[None], cfg.background)[0])))
        elif background is not None:
            arrays.append((job.target(cfg, "_composite", fmt),
                           to_uint8(composite_over_image(fg, alpha[None], background[None], fit=cfg.fit)[0])))
    return arrays


def store(item: Decoded, arrays: list[tuple[Path, np.ndarray]], cfg: CutoutConfig,
          stages: dict[str, float]) -> Record:
    """Encode and write every output atomically; the manifest record of a finished input.

    A per-file failure (a full disk) is a failed record; a bug propagates."""
    t0 = time.perf_counter()
    try:
        paths = [write_array(arr, path) for path, arr in arrays]
        entries = output_entries(paths, cfg.out)
    except Exception as exc:
        reason = file_failure(exc)
        if reason is None:
            raise
        return failed_record(item, cfg, reason, stages)
    stages = {**stages, "encode": time.perf_counter() - t0}
    return make_record(item.job, cfg, item.stat, DONE, outputs=entries, seconds=sum(stages.values()), stages=stages)


def failed_record(item: Decoded, cfg: CutoutConfig, reason: str, stages: dict[str, float]) -> Record:
    return make_record(item.job, cfg, item.stat, FAILED, seconds=sum(stages.values()), error=reason, stages=stages)


def process_batch(items: Sequence[Decoded], models: CutoutModels, cfg: CutoutConfig, background: torch.Tensor | None,
                  on_start: Callable[[str], None] | None = None,
                  finish: Callable[[Decoded, list[tuple[Path, np.ndarray]], dict[str, float]], object] | None = None,
                  ) -> list:
    """Infer and render decoded inputs of one size (batched), then ``finish`` each (default: ``store``).

    A batch that fails on a per-file error is redone one input at a time, so the failure names
    the input it belongs to.  Returns what ``finish`` returned, or failed records."""
    finish = finish or (lambda item, arrays, stages: store(item, arrays, cfg, stages))
    ready = [item for item in items if item.error is None]
    results = {id(item): failed_record(item, cfg, item.error, item.stages) for item in items if item.error}
    if ready:
        timer = StageTimer(on_start)
        reason = None
        try:
            alphas = infer(ready, models, cfg, timer)
        except Exception as exc:
            reason = file_failure(exc)
            if reason is None:
                raise
        if reason is not None:
            release_memory()  # after the except block, so the traceback's frames are gone too
            if len(ready) > 1:
                for item in ready:
                    results[id(item)] = process_batch([item], models, cfg, background, on_start, finish)[0]
            else:
                results[id(ready[0])] = failed_record(ready[0], cfg, reason, {**ready[0].stages, **timer.seconds})
        else:
            shared = {k: v / len(ready) for k, v in timer.seconds.items()}
            for item, alpha in zip(ready, alphas):
                own = StageTimer(on_start)
                stages = {**item.stages, **shared}
                why = None
                try:
                    side = models.network_side(item, cfg) if cfg.alpha != "mask" else None
                    arrays = render(item, alpha, cfg, background, own, side)
                except Exception as exc:
                    why = file_failure(exc)
                    if why is None:
                        raise
                if why is not None:
                    release_memory()
                    results[id(item)] = failed_record(item, cfg, why, {**stages, **own.seconds})
                    continue
                results[id(item)] = finish(item, arrays, {**stages, **own.seconds})
    return [results[id(item)] for item in items]


def cut_out(job: Job, models: CutoutModels, cfg: CutoutConfig, background: torch.Tensor | None = None,
            on_start: Callable[[str], None] | None = None) -> Record:
    """One input from file to outputs, every stage in a row (the reference the engines are held to)."""
    if on_start is not None:
        on_start("decode")
    return process_batch([decode(job, cfg)], models, cfg, background, on_start)[0]
