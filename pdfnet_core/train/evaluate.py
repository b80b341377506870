"""``evaluate``: DIS metrics of prediction folders, optionally after running pipelines over the images.

Folders: a subset is ``GT_ROOT/NAME`` holding ``gt/`` (DIS5K layout, with ``im/`` and optional
``depth/`` beside it) or the masks themselves; without subset names GT_ROOT is the one subset.
Predictions are looked up by file name (any image suffix) in ``PRED_ROOT[/PIPELINE]/NAME``.

A pipeline is written ``KIND[+tta][+segrefiner]``, KIND = pdfnet or birefnet, e.g. ``pdfnet``,
``pdfnet+tta``, ``birefnet+segrefiner``: its predictions are made with ``pdfnet_core.segment`` (the
same code as inference) and saved as 8-bit PNG, then evaluated like any other folder, so several
pipelines are compared on the same data in one table.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from ..atomic_files import atomic_write
from ..defaults import model_file
from ..families import family
from ..loading import load_cached
from ..metrics import IMAGE_SUFFIXES, FolderResult, Row, evaluate_folder
from ..models.segrefiner.refiner import refine_with_segrefiner
from ..pipeline import segment
from ..specs import LoadedModel
from .data import read_gray, read_rgb

log = logging.getLogger("pdfnet_core")

KINDS = ("pdfnet", "birefnet")
OPTIONS = ("tta", "segrefiner")


@dataclass(frozen=True)
class Pipeline:
    kind: str
    tta: bool = False
    segrefiner: bool = False

    @property
    def name(self) -> str:
        return "+".join([self.kind] + [o for o in OPTIONS if getattr(self, o)])


def parse_pipeline(spec: str) -> Pipeline:
    kind, *options = spec.strip().lower().split("+")
    if kind not in KINDS:
        raise ValueError(f"unknown model {kind!r} in {spec!r}; use {' or '.join(KINDS)}, "
                         f"optionally with {', '.join('+' + o for o in OPTIONS)}")
    unknown = [o for o in options if o not in OPTIONS]
    if unknown or len(set(options)) != len(options):
        raise ValueError(f"{spec!r}: options are {', '.join('+' + o for o in OPTIONS)}, each at most once")
    return Pipeline(kind, "tta" in options, "segrefiner" in options)


@dataclass(frozen=True)
class Subset:
    name: str
    gt_dir: Path
    image_dir: Path | None      # DIS5K layout only: the im/ beside gt/
    depth_dir: Path | None


def find_subsets(gt_root: Path, names: list[str] | None) -> list[Subset]:
    roots = [(n, Path(gt_root) / n) for n in names] if names else [(Path(gt_root).name, Path(gt_root))]
    subsets = []
    for name, root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"no such folder: {root}")
        if (root / "gt").is_dir():
            depth = root / "depth"
            subsets.append(Subset(name, root / "gt", root / "im" if (root / "im").is_dir() else None,
                                  depth if depth.is_dir() else None))
        else:
            subsets.append(Subset(name, root, None, None))
    return subsets


# --------------------------------------------------------------------------------------------
# running pipelines


@dataclass
class PipelineModels:
    """The models the pipelines need, from the given files or the default model folder; each is
    loaded on first use, once per process, through the model cache (``load_cached``)."""

    pdfnet_weights: Path | None = None
    birefnet_weights: Path | None = None
    segrefiner_weights: Path | None = None
    depth_weights: Path | None = None
    models_dir: Path | None = None
    download: bool = False
    device: str = "cpu"
    dtype: torch.dtype = torch.float32

    def get(self, kind: str) -> LoadedModel:
        weights = {"pdfnet": self.pdfnet_weights, "depth_anything": self.depth_weights,
                   "birefnet": self.birefnet_weights, "segrefiner": self.segrefiner_weights}[kind]
        if weights is None and family(kind).default_file is None:
            flag = {"birefnet": "the birefnet pipeline needs --birefnet-weights FILE",
                    "segrefiner": "the +segrefiner option needs --segrefiner-weights FILE (the HR checkpoint)"}[kind]
            raise ValueError(flag)
        path = model_file(kind, weights, self.models_dir, self.download or None)
        # fp16 overflows in Depth-Anything-V2's attention
        dtype = torch.float32 if kind == "depth_anything" and self.dtype == torch.float16 else self.dtype
        return load_cached(kind, path, device=self.device, dtype=dtype)


def _write_mask(alpha: torch.Tensor, path: Path) -> None:
    image = Image.fromarray((alpha.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())
    atomic_write(path, lambda fh: image.save(fh, format="PNG"))


def predict_subset(pipeline: Pipeline, models: PipelineModels, subset: Subset, out_dir: Path, size: int,
                   overwrite: bool = False, echo: Callable[[str], None] = print) -> list[str]:
    """Write ``out_dir/NAME.png`` for every image of the subset; returns the failures (one line each)."""
    if subset.image_dir is None:
        raise ValueError(f"{subset.gt_dir}: running a model needs the images; use the DIS5K layout "
                         "(SUBSET/im/*.jpg beside SUBSET/gt/*.png)")
    images = {p.stem: p for p in sorted(subset.image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    failures = []
    todo = [s for s in images if overwrite or not (out_dir / f"{s}.png").is_file()]
    if not todo:
        return failures
    # The models are set-up, not per-image work: a wrong or missing file stops the command (exit 2)
    # before any image, the segmenter named first.
    net = models.get(pipeline.kind)
    refiner = models.get("segrefiner").module if pipeline.segrefiner else None
    depth_files = {p.stem: p for p in (subset.depth_dir.iterdir() if subset.depth_dir else ())
                   if p.suffix.lower() in IMAGE_SUFFIXES}
    needs_prior = net.spec.inputs.needs_depth and any(stem not in depth_files for stem in todo)
    depth_model = models.get("depth_anything") if needs_prior else None
    for n, stem in enumerate(todo, start=1):
        try:
            image = read_rgb(images[stem]).permute(1, 2, 0)
            depth = read_gray(depth_files[stem])[0] if net.spec.inputs.needs_depth and stem in depth_files else None
            alpha = segment(image[None], depth, net, depth_model=depth_model, size=size, tta=pipeline.tta)[0]
            if refiner is not None:
                alpha = refine_with_segrefiner(refiner, image, alpha, mode="hr")
            _write_mask(alpha, out_dir / f"{stem}.png")
        except (ValueError, OSError) as exc:
            failures.append(f"{images[stem]}: {exc}")
            echo(f"[{pipeline.name} {subset.name} {n}/{len(todo)}] {stem}: FAILED: {exc}")
    return failures


# --------------------------------------------------------------------------------------------
# the whole evaluation


@dataclass
class EvaluationReport:
    rows: list[Row]
    problems: list[str]


def evaluate(pred_root: Path, gt_root: Path, subsets: list[str] | None = None,
             pipelines: list[Pipeline] | None = None, models: PipelineModels | None = None, size: int = 1024,
             overwrite: bool = False, label: str | None = None,
             echo: Callable[[str], None] = print) -> EvaluationReport:
    """Rows per (pipeline, subset) and the problems met (missing predictions, unreadable files, failures)."""
    found = find_subsets(gt_root, subsets)
    rows: list[Row] = []
    problems: list[str] = []
    runs = [(p.name, p) for p in pipelines] if pipelines else [(label or Path(pred_root).name, None)]
    for name, pipeline in runs:
        for subset in found:
            pred_dir = Path(pred_root) / name if pipeline is not None else Path(pred_root)
            pred_dir = pred_dir / subset.name if subsets else pred_dir
            if pipeline is not None:
                echo(f"running {name} on {subset.name} -> {pred_dir}")
                problems += predict_subset(pipeline, models or PipelineModels(), subset, pred_dir, size, overwrite, echo)
            result: FolderResult = evaluate_folder(pred_dir, subset.gt_dir)
            if result.missing:
                problems.append(f"{name} {subset.name}: {len(result.missing)} mask(s) without a prediction in "
                                f"{pred_dir}: {', '.join(result.missing[:10])}{' ...' if len(result.missing) > 10 else ''}")
            problems += [f"{name} {subset.name}: {line}" for line in result.unreadable]
            if result.scores is not None:
                rows.append(Row(name, subset.name, result.scores))
    return EvaluationReport(rows, problems)
