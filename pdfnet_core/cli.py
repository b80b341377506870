"""Command line: ``python -m pdfnet_core {cutout,convert,download,train,evaluate} ...``.

``cutout`` is the batch job (pdfnet_core.batch): files, folders and filesystem URIs of photos in,
RGBA cut-outs (and optionally masks and composites) out, a progress bar or one line per file, a
resumable ``manifest.jsonl`` in ``--out``, on one machine or a Ray cluster.  This module only
turns arguments into a ``CutoutConfig`` and exit statuses; choices and defaults come from the
modules that own them.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from .batch.runner import run_cutout
from .batch.config import DEFAULT_MAX_PIXELS, ENGINES, MAX_PIXELS_ENV, OUTPUT_FORMATS, CutoutConfig, Shard, UsageError
from .catalogue import ModelChoice, ModelChoiceError, catalogue, format_catalogue, resolve_model_choice, segmenter_names
from .defaults import family_folder, models_dir
from .download import ModelDownloadError, ensure_model_file
from .exit_status import HELP as EXIT_STATUSES
from .exit_status import ExitStatus
from .families import family, lookup
from .fingerprints import PDFNET, identify
from .models.pdfnet.loader import load_pdfnet
from .models.pdfnet.net import REVISIONS
from .models.pdfnet.revision import METADATA_EVIDENCE_KEY, METADATA_KEY, revision_evidence, source_facts
from .ops.composite import FIT_MODES
from .ops.despill import DESPILL_CHOICES, key_color
from .ops.foreground import FOREGROUND_METHODS
from .ops.matting import ALPHA_SOURCES, EDGE_SHIFT_MAX
from .ops.refine import GUIDES, RefineConfig
from .precision import DTYPE_CHOICES, DTYPES, allow_tf32, default_dtype_name, resolve_device
from .segment_options import AUTO_SIZE, RESIZE_MODES, SegmentOptions
from .train.commands import add_parsers
from .weights import CheckpointError, read_state_dict, save_safetensors


# --------------------------------------------------------------------------------------------
# other commands


def run_convert(args: argparse.Namespace) -> int:
    state = read_state_dict(args.source)
    family = identify(state.keys())
    if family is None:
        print(f"error: {args.source} is not a checkpoint of a model this pack knows", file=sys.stderr)
        return ExitStatus.USAGE
    metadata = {"pdfnet_core.arch": family.name}
    note = ""
    if family == PDFNET:
        # The depth head that shows the code revision is dropped below: keep its verdict in the header.
        revision, why = revision_evidence(state, *source_facts(args.source))
        state = load_pdfnet(state, revision=revision or "auto").state_dict()  # validated, stale entries dropped
        if revision is not None:
            metadata.update({METADATA_KEY: revision, METADATA_EVIDENCE_KEY: why})
        note = f", revision {revision}" if revision else ", revision unknown (not recorded)"
    target = save_safetensors(state, args.target, args.dtype, metadata=metadata)
    print(f"wrote {target} ({family.description}, {args.dtype}{note}, {target.stat().st_size / 2**20:.1f} MiB)")
    return ExitStatus.OK


def run_models(args: argparse.Namespace) -> int:
    root = args.models_dir or models_dir()
    print(format_catalogue(catalogue(root), root, commercial_only=args.commercial_only))
    return ExitStatus.OK


def run_download(args: argparse.Namespace) -> int:
    entry = lookup(args.name)
    if entry is None:
        print(f"error: unknown model file {args.name!r}", file=sys.stderr)
        return ExitStatus.USAGE
    folder = Path(args.dir) if args.dir else family_folder(entry.arch, args.models_dir)
    path = ensure_model_file(entry, folder, allow_download=True)
    print(path)
    return ExitStatus.OK


# --------------------------------------------------------------------------------------------
# argument parsing


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pdfnet_core", description=__doc__.splitlines()[0],
                                epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("cutout", help="segment images and folders into RGBA cut-outs / masks / composites",
                       epilog=EXIT_STATUSES + "\n\nInputs that would share an output name (a.jpg and a.png) are "
                       "written as NAME_EXT (a_jpg.png, a_png.png),\nplus a short hash of the path where that "
                       "still collides.", formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("inputs", nargs="+", help="image files and/or folders, local or pyarrow filesystem URIs "
                                             "(s3://bucket/photos, gs://..., file:///...)")
    c.add_argument("--out", required=True, type=Path, help="output folder (nothing is written elsewhere)")
    c.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders (kept in --out)")
    c.add_argument("--model", default=CutoutConfig.model,
                   help=f"segmentation model: {' or '.join(segmenter_names())} (its default file, or --weights), a "
                        "known file name (python -m pdfnet_core models lists them, e.g. BiRefNet_HR.safetensors) or "
                        "a path to a checkpoint")
    c.add_argument("--weights", type=Path, help="checkpoint (.pth or .safetensors) of the --model family "
                                               "(default: PDFNet)")
    c.add_argument("--patch-order", choices=list(family("birefnet").option("patch_order").choices),
                   default=CutoutConfig.patch_order,
                   help="BiRefNet: how the image is cut into patches (auto: as the known file was trained; see the "
                        "loader node's patch_order)")
    c.add_argument("--depth-weights", type=Path, help="Depth-Anything-V2 checkpoint (default: Small, Apache-2.0)")
    c.add_argument("--depth-dir", type=Path, help="use depth maps from this folder (same names) instead of a depth model")
    c.add_argument("--models-dir", type=Path, help="models folder (default $PDFNET_MODELS_DIR or ~/.cache/pdfnet/models)")
    c.add_argument("--download", action="store_true", help="download missing weights from the Hugging Face hub "
                                                          "(also: PDFNET_DOWNLOAD=1)")
    c.add_argument("--size", type=_size, default=SegmentOptions.size,
                   help="network resolution: auto (the default, as in the node): the model file's own size "
                        "(PDFNet and most BiRefNet files 1024, BiRefNet_HR 2048x2048, BiRefNet_lite-2K 2560x1440, "
                        "BiRefNet_dynamic near the image's own size); or a square side, a multiple of 32 up to what "
                        "the file supports")
    c.add_argument("--resize", choices=RESIZE_MODES, default=SegmentOptions.resize,
                   help="squash (as trained) or pad (keep aspect)")
    c.add_argument("--tta", action="store_true", help="6-pass flip x scale test-time augmentation (paper's evaluation; 6x slower)")
    c.add_argument("--no-quantize-depth", dest="quantize_depth", action="store_false", help="keep the depth prior in float")
    c.add_argument("--no-second-pass", dest="second_pass", action="store_false",
                   help="do not segment the subject's crop again (by default it is, where that gives the subject "
                        "at least 1.5x the network pixels)")
    c.add_argument("--boundary-tiles", action="store_true",
                   help="for a subject over twice --size across: run the network again on full-resolution tiles "
                        "along its edge (one forward per tile)")
    r = c.add_argument_group("mask refinement (as PDFNet Refine Mask; every step off by default)")
    r.add_argument("--threshold", type=float, default=RefineConfig.threshold_low,
                   help="hard threshold: 1 where the mask >= this (with --threshold-high: a soft ramp)")
    r.add_argument("--threshold-high", type=float, default=RefineConfig.threshold_high,
                   help="top of the soft ramp that starts at --threshold")
    r.add_argument("--remove-islands", type=int, default=RefineConfig.island_min_area, metavar="PIXELS",
                   help="remove foreground specks smaller than this many pixels")
    r.add_argument("--fill-holes", action="store_true", default=RefineConfig.fill_holes,
                   help="fill background holes enclosed by the subject")
    r.add_argument("--hole-max-area", type=int, default=RefineConfig.hole_max_area, metavar="PIXELS",
                   help="with --fill-holes: only holes up to this many pixels")
    r.add_argument("--grow", type=int, default=RefineConfig.grow_pixels, metavar="PIXELS",
                   help="grow (positive) or shrink (negative, e.g. --grow=-3) the mask")
    r.add_argument("--guided-radius", "--guided-filter", dest="guided_radius", type=int,
                   default=RefineConfig.guided_radius, metavar="PIXELS",
                   help="guided filter radius: snaps soft edges to the image's edges")
    r.add_argument("--guided-eps", type=float, default=RefineConfig.guided_eps,
                   help="guided filter regularisation (smaller keeps finer edges)")
    r.add_argument("--guide", choices=list(GUIDES), default=RefineConfig.guide, help="guided filter guide")
    r.add_argument("--feather", type=float, default=RefineConfig.feather_sigma, metavar="SIGMA",
                   help="Gaussian feathering sigma in pixels")
    c.add_argument("--format", dest="fmt", choices=sorted(OUTPUT_FORMATS), default="png", help="cut-out file format")
    c.add_argument("--no-rgba", dest="rgba", action="store_false", help="do not write the RGBA cut-out")
    c.add_argument("--mask", action="store_true",
                   help="also write the final alpha as NAME_mask.png (white = subject)")
    c.add_argument("--mask-dir", type=Path,
                   help="refine existing masks from this folder (white = subject, same names as the images) "
                        "instead of segmenting: no segmentation model is loaded")
    c.add_argument("--alpha", choices=list(ALPHA_SOURCES), default=CutoutConfig.alpha,
                   help="mask: the mask as it is; guided: guided-filtered to the photo's edges; matting: "
                        "closed-form matting of a band around the mask edge (recovers hair the network lost; "
                        "seconds per photo)")
    c.add_argument("--fine-hair", type=float, default=CutoutConfig.fine_hair, metavar="0..1",
                   help="--alpha matting: widen the band outwards (up to 3x at 1) to catch strands the mask lost")
    c.add_argument("--edge-shift", type=int, default=CutoutConfig.edge_shift, metavar="PIXELS",
                   help="--alpha matting: expand (positive) or choke (negative) the alpha edge by this many pixels")
    c.add_argument("--despill", type=_despill, default=CutoutConfig.despill, metavar="{" + ",".join(DESPILL_CHOICES)
                   + ",#RRGGBB}", help="remove a keyed background's colour cast from the subject's colours (auto: "
                                       "the key read from the background; nothing where it is not a coloured screen)")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--background", help="also write NAME_composite over this colour ('#RRGGBB')")
    g.add_argument("--background-image", type=Path, help="also write NAME_composite over this image")
    c.add_argument("--fit", choices=list(FIT_MODES), default=CutoutConfig.fit, help="how the background image is fitted")
    c.add_argument("--foreground", choices=[*FOREGROUND_METHODS, "none"], default=CutoutConfig.foreground,
                   help="foreground colour estimation against colour spill at the edges")
    c.add_argument("--overwrite", action="store_true",
                   help="redo every input (without it, an input is skipped when OUT/manifest.jsonl shows its "
                        "outputs made from the source as it is now, under these settings, and unchanged since)")
    c.add_argument("--retry-failed", action="store_true", help="also redo inputs that failed in an earlier run")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-file lines, only failures")
    c.add_argument("--batch-size", type=_batch_size, default=SegmentOptions.batch_size,
                   help="images of one size segmented together, or auto: as many as fit in the free GPU memory "
                        "(1 on a CPU); results may differ in the last bit")
    c.add_argument("--prefetch", type=int, default=None,
                   help="decoder threads reading ahead (and as many writer threads); 0: one file at a time. "
                        "Default 2 on a GPU, 0 on the CPU, where the model already keeps every core busy "
                        "(threads beside it made a 2-core CPU 17%% slower)")
    c.add_argument("--shard", type=_shard, default=Shard(),
                   help="K/N: process only shard K (0-based) of N, e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; "
                        "shards may share --out")
    c.add_argument("--engine", choices=ENGINES, default="local",
                   help="local (this process) or ray (a Ray Data pipeline: pip install 'pdfnet[ray]')")
    c.add_argument("--workers", type=int, default=1, help="--engine ray: segmentation actors (one model each)")
    c.add_argument("--gpus-per-worker", type=float, default=None,
                   help="--engine ray: GPUs per actor (default 1 where the cluster has GPUs, else 0)")
    c.add_argument("--address", help="--engine ray: join this cluster (e.g. auto or ray://head:10001); "
                                     "default: start a local one")
    c.add_argument("--max-pixels", type=int, default=None,
                   help=f"refuse images above this many pixels, from their header, before decoding them "
                        f"(default ${MAX_PIXELS_ENV} or {DEFAULT_MAX_PIXELS:,})")
    c.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    c.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                   help="model precision (default: auto on CUDA, fp32, the official numbers, elsewhere; fp32 on "
                        "CUDA may use TF32 matrix products); auto: bf16 where the device has "
                        "native bf16 kernels (AVX-512 BF16/AMX CPUs, Ampere and later GPUs), about 2x faster on such "
                        "a CPU, with masks that differ from fp32 by a few 8-bit levels at soft edges")
    c.add_argument("--revision", choices=["auto", *REVISIONS], default=CutoutConfig.revision,
                   help="PDFNet code revision to run: v1 (first release, which saved the published weights), "
                        "v2 (current official code); auto decides from the checkpoint (default)")

    v = sub.add_parser("convert", help="convert a checkpoint to safetensors")
    v.add_argument("source", type=Path)
    v.add_argument("target", type=Path)
    v.add_argument("--dtype", choices=list(DTYPES), default="fp32")

    m = sub.add_parser("models", help="list the known model files: licence, size, whether present")
    m.add_argument("--models-dir", type=Path, help="models folder (default $PDFNET_MODELS_DIR or ~/.cache/pdfnet/models)")
    m.add_argument("--commercial-only", action="store_true", help="only files whose licence allows commercial use")

    d = sub.add_parser("download", help="download a known model file from the Hugging Face hub")
    d.add_argument("name", help="file name, e.g. PDFNet_Best.pth or depth_anything_v2_vits.pth")
    d.add_argument("--dir", help="target folder (default: MODELS_DIR/<folder>)")
    d.add_argument("--models-dir", type=Path)
    add_parsers(sub)   # train / evaluate: the training code loads when one runs
    return p


def _despill(text: str) -> str:
    try:
        key_color(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _size(text: str) -> int:
    if text == "auto":
        return AUTO_SIZE
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be a number or auto, got {text!r}") from None


def _size_problem(choice: ModelChoice, size: int) -> str | None:
    """Why the model file --model names cannot run at --size (from its known facts), or None."""
    spec = choice.spec
    name = choice.known.filename if choice.known is not None else \
        choice.path.name if choice.path is not None else spec.default_file
    entry = lookup(name) if name else None
    canvas = spec.entry_canvas(entry) if entry is not None and entry.arch == spec.name else spec.canvas()
    problem = canvas.problem(size)
    return None if problem is None else f"--size: {name or spec.label}: {problem}"


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch-size must be a number or auto, got {text!r}") from None


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _max_pixels(value: int | None) -> int:
    if value is not None:
        return value
    env = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not env:
        return DEFAULT_MAX_PIXELS
    try:
        return int(float(env))
    except ValueError:
        raise UsageError(f"{MAX_PIXELS_ENV}={env!r} is not a number of pixels") from None


def _cutout_config(args: argparse.Namespace) -> CutoutConfig:
    try:
        segment = SegmentOptions(size=args.size, resize=args.resize, tta=args.tta, quantize_depth=args.quantize_depth,
                                 second_pass=args.second_pass, boundary_tiles=args.boundary_tiles,
                                 batch_size=1 if args.batch_size == "auto" else args.batch_size).validate()
    except ValueError as exc:   # its message starts with the option's name: say it as the flag
        option, _, problem = str(exc).partition(" ")
        raise UsageError(f"--{option.replace('_', '-')} {problem}") from None
    if args.alpha != "matting" and (args.fine_hair != CutoutConfig.fine_hair or args.edge_shift != CutoutConfig.edge_shift):
        raise UsageError("--fine-hair and --edge-shift shape the matted edge: add --alpha matting "
                         "(to grow or shrink a mask without matting use --grow)")
    if not 0 <= args.fine_hair <= 1:
        raise UsageError(f"--fine-hair must be in 0..1, got {args.fine_hair}")
    if abs(args.edge_shift) > EDGE_SHIFT_MAX:
        raise UsageError(f"--edge-shift must be within -{EDGE_SHIFT_MAX}..{EDGE_SHIFT_MAX} pixels, got {args.edge_shift}")
    if not (args.rgba or args.mask or args.background or args.background_image):
        raise UsageError("nothing to write: drop --no-rgba or add --mask / --background")
    keys = CutoutConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in keys}
    values["inputs"] = tuple(args.inputs)
    values["segment"] = segment
    values["refine"] = _refine_config(args)
    try:
        choice = resolve_model_choice(args.model, args.weights)   # before any model loads: a bad name is usage
    except ModelChoiceError as exc:
        raise UsageError(str(exc)) from None
    if (problem := _size_problem(choice, segment.size)) is not None:
        raise UsageError(problem)
    values["auto_batch"] = args.batch_size == "auto"
    device = resolve_device(args.device)
    values["dtype"] = args.dtype or default_dtype_name(device)
    if device.type == "cuda":
        allow_tf32()   # this process is ours: fp32 matrix products may use TF32 (parity checks keep it off)
    values["max_pixels"] = _max_pixels(args.max_pixels)
    if args.gpus_per_worker is None:
        values.pop("gpus_per_worker")
    if args.engine != "ray" and (args.address or args.gpus_per_worker is not None or args.workers != 1):
        raise UsageError("--workers, --gpus-per-worker and --address need --engine ray")
    if args.prefetch is None:
        values["prefetch"] = args.prefetch = 0 if device.type == "cpu" else 2
    for flag, value, least in (("--prefetch", args.prefetch, 0), ("--workers", args.workers, 1)):
        if value < least:
            raise UsageError(f"{flag} must be at least {least}, got {value}")
    return CutoutConfig(**values)


def _refine_config(args: argparse.Namespace) -> RefineConfig | None:
    """The refinement flags as a RefineConfig (None: every step off, as by default)."""
    config = RefineConfig(threshold_low=args.threshold, threshold_high=args.threshold_high,
                          island_min_area=args.remove_islands, fill_holes=args.fill_holes,
                          hole_max_area=args.hole_max_area, grow_pixels=args.grow, guided_radius=args.guided_radius,
                          guided_eps=args.guided_eps, guide=args.guide, feather_sigma=args.feather)
    for flag, bad, rule in (
            ("--threshold", args.threshold is not None and not 0 <= args.threshold <= 1, "must be in 0..1"),
            ("--threshold-high", args.threshold_high is not None and
             (args.threshold is None or not args.threshold < args.threshold_high <= 1),
             "needs --threshold, and must be above it and at most 1"),
            ("--remove-islands", args.remove_islands < 0, "must not be negative"),
            ("--hole-max-area", args.hole_max_area is not None and args.hole_max_area < 1, "must be positive"),
            ("--guided-radius", args.guided_radius < 0, "must not be negative"),
            ("--guided-eps", args.guided_eps <= 0, "must be positive"),
            ("--feather", args.feather < 0, "must not be negative")):
        if bad:
            raise UsageError(f"{flag} {rule}")
    return None if config == RefineConfig() else config


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "cutout": lambda args: run_cutout(_cutout_config(args)),
    "models": run_models,
    "convert": run_convert,
    "download": run_download,
}


class _Once(logging.Filter):
    """Our root handler skips records that a library's own handler prints already (huggingface_hub
    attaches one to its logger and still propagates, so each of its retries printed twice)."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger = logging.getLogger(record.name)
        while logger is not None and logger is not logging.root:
            if any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
                return False
            logger = logger.parent if logger.propagate else None
        return True


class _TqdmSafeHandler(logging.Handler):
    """Writes to the current sys.stderr, above a progress bar (through tqdm.write), not through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _configure_logging() -> None:
    """As logging.basicConfig: only where nothing is configured yet."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = _TqdmSafeHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Once())
    root.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    _configure_logging()
    args = _parser().parse_args(argv)
    try:
        run = getattr(args, "run", None) or COMMANDS[args.command]   # train/evaluate bring their own
        return run(args)
    except (UsageError, CheckpointError, ModelDownloadError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except Exception:  # a bug: never confused with "some inputs failed" (1)
        traceback.print_exc()
        print(f"error: unexpected internal error (exit status {ExitStatus.CRASH:d}); please report it with the "
              "traceback above", file=sys.stderr)
        return ExitStatus.CRASH
