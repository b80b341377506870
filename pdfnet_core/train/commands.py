"""The ``train`` and ``evaluate`` sub-commands of ``python -m pdfnet_core``.

``add_parsers(subparsers)`` registers both; each parser's ``run`` default takes the parsed
arguments and returns the exit status: 0 done, 1 finished with failures (missing predictions,
unreadable files, a diverging loss), 2 usage error (bad settings or folders, missing optional
packages).  The optional extras (timm, pysodmetrics) are imported only when a command needs them.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from ..download import ModelDownloadError
from ..exit_status import ExitStatus
from ..families import family
from ..metrics import csv_table, markdown_table, require_pysodmetrics
from ..models.pdfnet.net import REVISIONS
from ..precision import DTYPE_CHOICES, dtype_for, resolve_device
from ..segment_options import SegmentOptions
from ..weights import CheckpointError
from . import plots
from .config import load_config
from .data import DatasetError
from .evaluate import PipelineModels, evaluate, parse_pipeline
from .loop import require_timm, train

_AUGMENT_FLAGS = ("hflip", "crop", "crop_min_scale")    # fields of TrainConfig.augment


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return ExitStatus.USAGE


# --------------------------------------------------------------------------------------------
# train


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    # Every option defaults to "not given" so that only the flags on the command line override
    # the --config file; the dataclass holds the real defaults.
    p = subparsers.add_parser(
        "train", argument_default=argparse.SUPPRESS,
        help="fine-tune PDFNet on DIS5K-style folders (ROOT/im/*.jpg, ROOT/gt/*.png, optional ROOT/depth/*.png)",
        description="Fine-tune PDFNet with the paper's losses. Settings come from --config (JSON, the fields "
                    "of pdfnet_core.train.config.TrainConfig) and the flags below (flags win).")
    p.add_argument("train_dirs", nargs="*", type=Path, metavar="TRAIN_DIR", help="training folders (DIS5K layout)")
    p.add_argument("--config", type=Path, help="JSON file with TrainConfig fields")
    p.add_argument("--val", dest="val_dirs", action="append", type=Path, metavar="DIR",
                   help="validation folder (repeatable)")
    p.add_argument("--out", dest="out_dir", type=Path, help="output folder: logs, checkpoints, model.pth")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--init", type=Path, help="PDFNet checkpoint to fine-tune (e.g. PDFNet_Best.pth)")
    start.add_argument("--swin-imagenet", help="ImageNet Swin-B (swin_base_patch4_window12_384) file, or "
                                               "timm:<name> to let timm download it")
    p.add_argument("--resume", nargs="?", const="last", help="continue from a checkpoint (default: OUT/checkpoints/last.pt)")
    p.add_argument("--revision", choices=["auto", *REVISIONS], help="official formulas to train with (auto: the init file's)")
    p.add_argument("--size", type=int, help="network side, multiple of 32 (paper: 1024)")
    p.add_argument("--batch", dest="batch_size", type=int, help="images per forward pass (paper: 1)")
    p.add_argument("--epochs", type=int, help="epochs (paper: 100)")
    p.add_argument("--max-steps", type=int, help="optimizer updates in all (overrides --epochs for the schedule)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (paper: 1e-5)")
    p.add_argument("--min-lr", type=float, help="cosine floor")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (paper: 1e-4)")
    p.add_argument("--warmup-steps", type=int, help="linear warm-up updates")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer update")
    p.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value")
    p.add_argument("--precision", choices=DTYPE_CHOICES, help="autocast (auto: bf16/fp16 on CUDA)")
    p.add_argument("--ema", dest="ema_decay", type=float, metavar="DECAY", help="keep an EMA of the weights (e.g. 0.999)")
    p.add_argument("--seed", type=int)
    p.add_argument("--val-every", type=int, help="updates between validations")
    p.add_argument("--save-every", type=int, help="updates between checkpoints")
    p.add_argument("--per-item-losses", action="store_true", help="per-item integrity/SiLog statistics (official: batch-wide)")
    p.add_argument("--no-depth-head", dest="save_depth_head", action="store_false",
                   help="save the model without its depth_decoder entries")
    p.add_argument("--hflip", type=float, help="horizontal flip probability")
    p.add_argument("--crop", type=float, help="random crop probability")
    p.add_argument("--crop-min-scale", type=float, help="smallest crop side as a fraction of the image")
    p.add_argument("--depth-weights", type=Path, help="Depth-Anything-V2 checkpoint for images without depth maps")
    p.add_argument("--depth-cache", type=Path, help="folder for computed depth maps (default OUT/depth_cache)")
    p.add_argument("--models-dir", type=Path, help="models folder for the default depth model")
    p.add_argument("--download", action="store_true", help="download the default depth model if missing")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--workers", dest="num_workers", type=int, help="data loader processes")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--stop-after", type=int, help="stop this process after N updates (resume later)")
    p.set_defaults(run=run_train)
    return p


def train_overrides(args: argparse.Namespace) -> dict:
    values = {k: v for k, v in vars(args).items() if k not in ("run", "config", "stop_after", "command")}
    if not values.get("train_dirs"):
        values.pop("train_dirs", None)       # an empty positional list does not override the file
    augment = {k: values.pop(k) for k in _AUGMENT_FLAGS if k in values}
    if augment:
        values["augment"] = augment
    return values


def run_train(args: argparse.Namespace) -> int:
    overrides = train_overrides(args)
    resume_last = overrides.get("resume") == "last"
    if resume_last:
        del overrides["resume"]
    try:
        config = load_config(getattr(args, "config", None), overrides)
    except (ValueError, OSError) as exc:
        return _error(str(exc))
    if resume_last:
        config = replace(config, resume=config.out_dir / "checkpoints" / "last.pt")
    try:
        require_timm()   # the optional extra, said as a usage error; any other ImportError is a bug
    except ImportError as exc:
        return _error(str(exc))
    try:
        train(config, stop_after=getattr(args, "stop_after", None))
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError) as exc:
        return _error(str(exc))
    except FloatingPointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitStatus.SOME_FAILED
    return ExitStatus.OK


# --------------------------------------------------------------------------------------------
# evaluate


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate", help="DIS metrics (maxF, wF, MAE, S, E, HCE) of predictions against masks",
        description="Evaluate prediction folders against mask folders with the DIS benchmark metrics "
                    "(PySODMetrics). With --model, run pipelines over the images first.")
    p.add_argument("pred_dir", type=Path, metavar="PRED_DIR",
                   help="predictions (with --model: where each pipeline's predictions are written)")
    p.add_argument("gt_dir", type=Path, metavar="GT_DIR",
                   help="masks: a folder of masks, a DIS5K folder with gt/ (and im/), or the parent of --subsets")
    p.add_argument("--subsets", nargs="+", metavar="NAME", help="sub-folders of GT_DIR (and PRED_DIR), e.g. DIS-VD DIS-TE1")
    p.add_argument("--model", dest="pipelines", action="append", metavar="SPEC",
                   help="run a pipeline first: pdfnet, birefnet, with +tta and/or +segrefiner (repeatable)")
    p.add_argument("--name", help="row label for PRED_DIR when no --model is given")
    p.add_argument("--out", type=Path, help="where metrics.md/.csv and the curve PNGs go (default PRED_DIR)")
    p.add_argument("--pdfnet-weights", type=Path, help="PDFNet checkpoint (default: PDFNet_Best.pth in the models folder)")
    p.add_argument("--birefnet-weights", type=Path, help="BiRefNet checkpoint for the birefnet pipeline")
    p.add_argument("--segrefiner-weights", type=Path, help="SegRefiner HR checkpoint for +segrefiner")
    p.add_argument("--depth-weights", type=Path, help="Depth-Anything-V2 checkpoint when a subset has no depth/")
    p.add_argument("--models-dir", type=Path, help="models folder (default $PDFNET_MODELS_DIR)")
    p.add_argument("--download", action="store_true", help="download missing default weights")
    p.add_argument("--size", type=int, default=SegmentOptions.size, help="network resolution for --model (multiple of 32)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="fp32")
    p.add_argument("--overwrite", action="store_true", help="recompute predictions that already exist")
    p.set_defaults(run=run_evaluate)
    return p


def run_evaluate(args: argparse.Namespace, echo=print) -> int:
    try:
        require_pysodmetrics()
    except ImportError as exc:
        return _error(str(exc))
    try:
        pipelines = [parse_pipeline(s) for s in args.pipelines or []]
        SegmentOptions(size=args.size).validate()
        device = resolve_device(args.device)
        models = PipelineModels(args.pdfnet_weights, args.birefnet_weights, args.segrefiner_weights, args.depth_weights,
                                args.models_dir, args.download, str(device),
                                dtype_for(args.dtype, family("pdfnet").auto_dtypes, device))
        report = evaluate(args.pred_dir, args.gt_dir, args.subsets, pipelines or None, models, args.size,
                          args.overwrite, args.name, echo)
    except (ValueError, FileNotFoundError, CheckpointError, ModelDownloadError) as exc:
        return _error(str(exc))
    for line in report.problems:
        echo(f"warning: {line}")
    if not report.rows:
        echo("error: nothing could be evaluated")
        return ExitStatus.SOME_FAILED
    out = args.out or args.pred_dir
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(report.rows)
    (out / "metrics.md").write_text(table)
    (out / "metrics.csv").write_text(csv_table(report.rows))
    plots.pr_curve(report.rows, out / "pr_curve.png")
    plots.f_curve(report.rows, out / "f_curve.png")
    echo(table)
    echo(f"wrote {out / 'metrics.md'}, metrics.csv, pr_curve.png and f_curve.png")
    return ExitStatus.SOME_FAILED if report.problems else ExitStatus.OK


def add_parsers(subparsers) -> None:
    """Register ``train`` and ``evaluate`` on an ``ArgumentParser.add_subparsers()`` object."""
    add_train_parser(subparsers)
    add_evaluate_parser(subparsers)
