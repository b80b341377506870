"""Command line: ``python -m pdfnet_core {cutout,convert,download,train,evaluate} ...``.

``cutout`` is the batch job: files and folders of photos in, RGBA cut-outs (and optionally masks
and composites) out, one line per file, already finished files skipped, unreadable files reported
without stopping the batch.  Nothing is ever written outside ``--out``.

Faults (ISSUE 12): every output is written to its own hidden temporary file in its folder (unique,
short name), fsynced and renamed, so a killed or concurrent run never leaves a half file under a
final name; "done" means complete (decodes), at the source's size and not older than the source;
inputs that would share an output name get distinct names (see ``distinct_outputs``); every
per-file failure (unreadable, truncated, over the pixel budget, out of memory, a wrong depth map)
is one line and the batch goes on; bad arguments fail before any model is loaded.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import logging
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .files import TEMP_PREFIX, TEMP_SUFFIX, atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
OUTPUT_FORMATS = {"png": ".png", "webp": ".webp"}

# Exit statuses of every command (also in --help and README's "Command line").
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_CRASH = 0, 1, 2, 3
EXIT_STATUSES = """exit status:
  0  every input was written or was already done
  1  some inputs failed (each is listed at the end); the others were written
  2  usage, set-up or model error: nothing was processed (bad option, --out not writable,
     unreadable --background-image, missing or wrong weights)
  3  unexpected internal error (a bug): a traceback is printed"""

# Images above this many pixels are refused from their header, before they are decoded.
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "PDFNET_MAX_PIXELS"
# Temporary output files: hidden, short (never near the name limit), unique per writer.
NAME_MAX = 255  # bytes in one file name on every common file system


class UsageError(Exception):
    """Bad arguments or set-up, found before any work: exit status 2, one line."""


@dataclass(frozen=True)
class CutoutConfig:
    inputs: tuple[Path, ...]
    out: Path
    recursive: bool = False
    weights: Path | None = None
    depth_weights: Path | None = None
    depth_dir: Path | None = None
    models_dir: Path | None = None
    download: bool = False
    size: int = 1024
    resize: str = "squash"
    tta: bool = False
    quantize_depth: bool = True
    fmt: str = "png"
    rgba: bool = True
    mask: bool = False
    background: str | None = None
    background_image: Path | None = None
    fit: str = "cover"
    foreground: str = "multilevel"
    overwrite: bool = False
    device: str = "auto"
    dtype: str = "fp32"
    revision: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS


def output_kinds(cfg: CutoutConfig) -> list[tuple[str, str]]:
    """(tag, suffix) of each file one input produces."""
    kinds = []
    if cfg.rgba:
        kinds.append(("", OUTPUT_FORMATS[cfg.fmt]))
    if cfg.mask:
        kinds.append(("_mask", ".png"))
    if cfg.background or cfg.background_image:
        kinds.append(("_composite", OUTPUT_FORMATS[cfg.fmt]))
    return kinds


def _short_hash(text: str) -> str:
    return hashlib.sha1(os.fsencode(text)).hexdigest()[:8]


def output_name(stem: str, tag: str, suffix: str) -> str:
    """``stem + tag + suffix``, or, where that is over the 255-byte name limit, the stem cut short
    and marked with ``~`` and a hash of the whole stem (so two long names stay distinct)."""
    name = stem + tag + suffix
    if len(os.fsencode(name)) <= NAME_MAX:
        return name
    end = f"~{_short_hash(stem)}{tag}{suffix}"
    room = NAME_MAX - len(os.fsencode(end))
    return os.fsdecode(os.fsencode(stem)[:room]) + end


class OutsideOutputError(ValueError):
    """An output path that would lead outside --out (through a symbolic link or a name)."""


@dataclass(frozen=True)
class Job:
    source: Path
    stem: Path      # output path without suffix, relative to --out

    def outputs(self, cfg: CutoutConfig) -> list[Path]:
        return [self.target(cfg, tag, suffix) for tag, suffix in output_kinds(cfg)]

    def names(self, cfg: CutoutConfig) -> list[str]:
        """The outputs relative to --out, before any check (for finding name collisions)."""
        return [(self.stem.parent / output_name(self.stem.name, tag, suffix)).as_posix()
                for tag, suffix in output_kinds(cfg)]

    def target(self, cfg: CutoutConfig, tag: str, suffix: str) -> Path:
        path = cfg.out / self.stem.parent / output_name(self.stem.name, tag, suffix)
        out = cfg.out.resolve()
        # resolve() follows symbolic links: a link inside --out (to the file or a folder above it)
        # that points elsewhere is refused, not written through or replaced.
        if out not in path.resolve().parents:
            raise OutsideOutputError(f"refusing to write {path}: it leads outside the output folder {out} "
                                     "(a symbolic link?)")
        return path


# --------------------------------------------------------------------------------------------
# finding the work


def find_jobs(inputs: Iterable[Path], recursive: bool) -> tuple[list[Job], list[str]]:
    """Image files to process (with their output stems) and the problems met while looking."""
    jobs: list[Job] = []
    problems: list[str] = []
    seen: set[Path] = set()
    for item in inputs:
        if item.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(p for p in item.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            pairs = [(f, f.relative_to(item).with_suffix("")) for f in files]
        elif item.is_file():
            pairs = [(item, Path(item.stem))]
        else:
            problems.append(f"{item}: no such file or folder")
            continue
        for source, stem in pairs:
            if source.resolve() not in seen:
                seen.add(source.resolve())
                jobs.append(Job(source, stem))
    return jobs, problems


def distinct_outputs(jobs: Sequence[Job], cfg: CutoutConfig) -> tuple[list[Job], list[str]]:
    """Rename the jobs whose outputs would share a file name, so nothing is silently overwritten.

    The rule (README, "Command line"): when two inputs would write the same output name
    (``a.jpg`` and ``a.png``; ``x/photo.jpg`` and ``y/photo.jpg`` without ``--recursive``; also
    names equal but for case, which are one file on Windows and macOS), *each* of them is named
    after its source extension (``a_jpg.png``, ``a_png.png``); where that still collides, a short
    hash of the source path is added too (``photo_jpg_1a2b3c4d.png``).  Inputs without a
    collision keep their plain names.  Returns the jobs and one note per renamed input.
    """
    def collisions(items: Sequence[Job]) -> set[int]:
        owner: dict[str, int] = {}
        hit: set[int] = set()
        for i, job in enumerate(items):
            for name in job.names(cfg):
                key = name.casefold()
                if key in owner and owner[key] != i:
                    hit.update((i, owner[key]))
                owner.setdefault(key, i)
        return hit

    out = list(jobs)
    clash = collisions(out)
    if not clash:
        return out, []
    renamed = set(clash)

    def ext(job: Job) -> str:
        return job.source.suffix.lower().lstrip(".") or "file"

    for i in clash:
        out[i] = Job(jobs[i].source, jobs[i].stem.with_name(f"{jobs[i].stem.name}_{ext(jobs[i])}"))
    for _ in range(3):
        clash = collisions(out)
        if not clash:
            break
        renamed |= clash
        for i in clash:
            out[i] = Job(jobs[i].source, jobs[i].stem.with_name(
                f"{jobs[i].stem.name}_{ext(jobs[i])}_{_short_hash(str(jobs[i].source.resolve()))}"))
    notes = [f"note: {jobs[i].source} shares its output name with another input; writing it as "
             f"{out[i].names(cfg)[0]}" for i in sorted(renamed)]
    return out, notes


# --------------------------------------------------------------------------------------------
# reading and writing images


@contextlib.contextmanager
def _pixel_limit(max_pixels: int):
    """PIL's own decompression-bomb limit set to our budget (checked from the header by us)."""
    import warnings

    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _check_pixels(im, max_pixels: int) -> None:
    w, h = im.size
    if w * h > max_pixels:
        raise ValueError(f"{w}x{h} ({w * h:,} pixels) is above the pixel budget of {max_pixels:,} pixels; "
                         f"raise --max-pixels (or {MAX_PIXELS_ENV}) to process it")


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS):
    """An RGB float tensor [H,W,3] (orientation from EXIF applied), or a ValueError saying why not.

    An image over ``max_pixels`` is refused from its header size, before it is decoded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from .ops.images import pil_to_array, to_rgb_list

    try:
        with _pixel_limit(max_pixels), Image.open(path) as im:
            _check_pixels(im, max_pixels)
            im = ImageOps.exif_transpose(im)
            if im.mode == "CMYK":
                im = im.convert("RGB")
            arr = pil_to_array(im)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ValueError(f"not a readable image ({exc})") from exc
    return to_rgb_list(arr, str(path))[0].permute(1, 2, 0)


def read_depth(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS):
    """A depth map [H,W] float32 (any scale, 8- or 16-bit files) from an image file."""
    from PIL import Image, UnidentifiedImageError

    from .ops.images import to_mask_list

    try:
        with _pixel_limit(max_pixels), Image.open(path) as im:
            _check_pixels(im, max_pixels)
            im.load()
            return to_mask_list(im, str(path))[0]
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ValueError(f"depth map {path} is not a readable image ({exc})") from exc


def source_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of an image after its EXIF orientation, from the header only; None if unreadable."""
    from PIL import Image

    try:
        with _pixel_limit(2**62), Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Exception:  # an unreadable source is reported when it is processed
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def is_complete(path: Path, source: Path, size: tuple[int, int] | None = None) -> bool:
    """True when ``path`` is a finished output for ``source``: a regular, non-empty file that
    decodes in full, at ``size`` (when given), and not older than the source."""
    import stat

    from PIL import Image

    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0 or st.st_mtime_ns < source.stat().st_mtime_ns:
            return False
        with _pixel_limit(2**62), Image.open(path) as im:
            if size is not None and im.size != size:
                return False
            im.load()  # a truncated file fails here
    except Exception:  # missing, unreadable, truncated, not an image: not done
        return False
    return True


def is_done(job: Job, cfg: CutoutConfig) -> bool:
    """Every output of ``job`` exists and is complete (raises OutsideOutputError for a bad link)."""
    paths = job.outputs(cfg)
    if not all(p.exists() for p in paths):
        return False
    size = source_size(job.source)
    return all(is_complete(p, job.source, size) for p in paths)


def write_image(tensor, path: Path) -> None:
    """Save [H,W,C] float 0..1 (C = 1, 3 or 4) as 8-bit PNG/WebP, atomically (``files.atomic_write``)."""
    import numpy as np
    import torch
    from PIL import Image

    arr = (tensor.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    image = Image.fromarray(np.ascontiguousarray(arr))
    fmt = "WEBP" if path.suffix == ".webp" else "PNG"
    atomic_write(path, lambda fh: image.save(fh, format=fmt, **({"lossless": True} if fmt == "WEBP" else {})))


# --------------------------------------------------------------------------------------------
# models


def _device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _resolve_weights(path: Path | None, kind: str, cfg: CutoutConfig) -> Path:
    from .defaults import default_model_path
    from .registry import family

    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        return path
    folder = None if cfg.models_dir is None else cfg.models_dir / family(kind).folder_key
    return default_model_path(kind, folder, download=cfg.download or None)


def load_models(cfg: CutoutConfig):
    import torch

    from .models.depth_anything.loader import load_depth_anything
    from .models.pdfnet.loader import load_pdfnet
    from .weights import DTYPES

    device, dtype = _device(cfg.device), DTYPES[cfg.dtype]
    model = load_pdfnet(_resolve_weights(cfg.weights, "pdfnet", cfg), device=device, dtype=dtype,
                        revision=cfg.revision)
    depth_model = None
    if cfg.depth_dir is None:
        depth_model = load_depth_anything(_resolve_weights(cfg.depth_weights, "depth_anything", cfg),
                                          device=device, dtype=torch.float32 if dtype == torch.float16 else dtype)
    return model, depth_model


# --------------------------------------------------------------------------------------------
# the job


def process(job: Job, cfg: CutoutConfig, model, depth_model, background) -> None:
    from .ops.composite import composite_over_color, composite_over_image, to_rgba
    from .ops.foreground import estimate_foreground
    from .pipeline import segment

    image = read_image(job.source, cfg.max_pixels)
    depth = None
    if cfg.depth_dir is not None:
        # depth maps are named after the source (a renamed output, see distinct_outputs, keeps it)
        rel = job.stem.parent / job.source.stem
        folder = (cfg.depth_dir / rel).parent
        depth_path = next((p for p in sorted(folder.glob(glob_escape(rel.name) + ".*"))
                           if p.suffix.lower() in IMAGE_SUFFIXES), None)
        if depth_path is None:
            raise ValueError(f"no depth map named {rel.name}.* in {folder}")
        depth = read_depth(depth_path, cfg.max_pixels)
        if tuple(depth.shape) != tuple(image.shape[:2]):
            raise ValueError(f"the depth map {depth_path} is {depth.shape[0]}x{depth.shape[1]} but the image is "
                             f"{image.shape[0]}x{image.shape[1]}; a depth map must have its image's size")
    alpha = segment(image[None], depth, model, depth_model=depth_model, size=cfg.size, resize=cfg.resize,
                    tta=cfg.tta, quantize_depth=cfg.quantize_depth)[0]
    fg = image[None]
    if cfg.foreground != "none" and (cfg.rgba or background is not None):
        fg = estimate_foreground(image[None], alpha[None], cfg.foreground).foreground
    if cfg.rgba:
        write_image(to_rgba(fg, alpha[None])[0], job.target(cfg, "", OUTPUT_FORMATS[cfg.fmt]))
    if cfg.mask:
        write_image(alpha[..., None], job.target(cfg, "_mask", ".png"))
    if cfg.background is not None:
        write_image(composite_over_color(fg, alpha[None], cfg.background)[0],
                    job.target(cfg, "_composite", OUTPUT_FORMATS[cfg.fmt]))
    elif background is not None:
        write_image(composite_over_image(fg, alpha[None], background[None], fit=cfg.fit)[0],
                    job.target(cfg, "_composite", OUTPUT_FORMATS[cfg.fmt]))


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


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
    try:
        from PIL import Image
        bomb: tuple[type[BaseException], ...] = (Image.DecompressionBombError,)
    except ImportError:  # pragma: no cover
        bomb = ()
    if isinstance(exc, (ValueError, OSError, *bomb)):
        return text
    return None


def release_memory() -> None:
    """After a failed file: drop its tensors now and hand cached GPU memory back."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    with contextlib.suppress(Exception):
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    with contextlib.suppress(Exception):
        mps = getattr(torch, "mps", None)
        if mps is not None and torch.backends.mps.is_available():
            mps.empty_cache()


def check_setup(cfg: CutoutConfig) -> None:
    """Everything that can be checked before a model is loaded; raises UsageError (exit 2)."""
    if cfg.max_pixels < 1:
        raise UsageError(f"--max-pixels must be at least 1, got {cfg.max_pixels}")
    if cfg.background is not None:
        from .ops.composite import parse_color

        try:
            parse_color(cfg.background)
        except ValueError as exc:
            raise UsageError(f"--background: {exc}") from None
    if cfg.background_image is not None and not cfg.background_image.is_file():
        raise UsageError(f"--background-image {cfg.background_image}: no such file")
    if cfg.depth_dir is not None and not cfg.depth_dir.is_dir():
        raise UsageError(f"--depth-dir {cfg.depth_dir}: no such folder")
    for flag, path in (("--weights", cfg.weights), ("--depth-weights", cfg.depth_weights)):
        if path is not None and not path.is_file():
            raise UsageError(f"{flag} {path}: no such file")
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--out {out} is not a writable folder ({exc.strerror or exc})") from None


def run_cutout(cfg: CutoutConfig, echo: Callable[[str], None] = print) -> int:
    """Returns the exit status: 0 when every file was done or skipped, 1 when some failed.

    Set-up errors raise UsageError before any model is loaded; an unexpected exception propagates.
    """
    check_setup(cfg)
    background = None
    if cfg.background_image is not None:
        try:
            background = read_image(cfg.background_image, cfg.max_pixels)
        except ValueError as exc:
            raise UsageError(f"--background-image {cfg.background_image}: {exc}") from None
    jobs, problems = find_jobs(cfg.inputs, cfg.recursive)
    jobs, notes = distinct_outputs(jobs, cfg)
    failures: list[str] = []
    for line in problems:
        echo(f"error: {line}")
        failures.append(line)
    for line in notes:
        echo(line)
    todo: list[Job] = []
    skipped = 0
    for job in jobs:
        try:
            if not cfg.overwrite and is_done(job, cfg):
                skipped += 1
                continue
        except OutsideOutputError as exc:
            echo(f"{job.source}: FAILED: {exc}")
            failures.append(f"{job.source}: {exc}")
            continue
        todo.append(job)
    if skipped:
        echo(f"skipping {skipped} file(s) already done (use --overwrite to redo them)")
    if not todo:
        echo("nothing to do")
        _list_failures(failures, echo)
        return EXIT_SOME_FAILED if failures else EXIT_OK
    try:
        model, depth_model = load_models(cfg)
    except (OSError, RuntimeError, MemoryError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise UsageError(f"cannot load the models: {type(exc).__name__}: {exc}") from exc
    start = time.perf_counter()
    written = 0
    for n, job in enumerate(todo, start=1):
        t0 = time.perf_counter()
        reason = None
        try:
            process(job, cfg, model, depth_model, background)
        except Exception as exc:
            reason = file_failure(exc)
            if reason is None:
                raise
        if reason is not None:
            release_memory()  # after the except block, so the traceback's frames are gone too
            failures.append(f"{job.source}: {reason}")
            echo(f"[{n}/{len(todo)}] {job.source}: FAILED: {reason}")
            continue
        written += 1
        echo(f"[{n}/{len(todo)}] {job.source} -> {job.outputs(cfg)[0]} ({time.perf_counter() - t0:.1f} s)")
    echo(f"done: {written} written, {skipped} skipped, {len(failures)} failed in {time.perf_counter() - start:.1f} s")
    _list_failures(failures, echo)
    return EXIT_SOME_FAILED if failures else EXIT_OK


def _list_failures(failures: Sequence[str], echo: Callable[[str], None]) -> None:
    if failures:
        echo(f"failed ({len(failures)}):")
        for line in failures:
            echo(f"  {line}")


# --------------------------------------------------------------------------------------------
# other commands


def run_convert(args: argparse.Namespace) -> int:
    from .registry import identify
    from .weights import read_state_dict, save_safetensors

    state = read_state_dict(args.source)
    family = identify(state.keys())
    if family is None:
        print(f"error: {args.source} is not a checkpoint of a model this pack knows", file=sys.stderr)
        return 2
    metadata = {"pdfnet_core.arch": family.name}
    note = ""
    if family.name == "pdfnet":
        from .models.pdfnet.loader import load_pdfnet
        from .models.pdfnet.revision import METADATA_EVIDENCE_KEY, METADATA_KEY, revision_evidence, source_facts

        # The depth head that shows the code revision is dropped below: keep its verdict in the header.
        revision, why = revision_evidence(state, *source_facts(args.source))
        state = load_pdfnet(state, revision=revision or "auto").state_dict()  # validated, stale entries dropped
        if revision is not None:
            metadata.update({METADATA_KEY: revision, METADATA_EVIDENCE_KEY: why})
        note = f", revision {revision}" if revision else ", revision unknown (not recorded)"
    target = save_safetensors(state, args.target, args.dtype, metadata=metadata)
    print(f"wrote {target} ({family.description}, {args.dtype}{note}, {target.stat().st_size / 2**20:.1f} MiB)")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from .download import ensure_model_file
    from .registry import lookup

    entry = lookup(args.name)
    if entry is None:
        print(f"error: unknown model file {args.name!r}", file=sys.stderr)
        return 2
    from .defaults import models_dir

    folder = Path(args.dir) if args.dir else (args.models_dir or models_dir()) / entry.folder_key
    path = ensure_model_file(entry, folder, allow_download=True)
    print(path)
    return 0


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
    c.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders")
    c.add_argument("--out", required=True, type=Path, help="output folder (nothing is written elsewhere)")
    c.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders (kept in --out)")
    c.add_argument("--weights", type=Path, help="PDFNet checkpoint (.pth or .safetensors)")
    c.add_argument("--depth-weights", type=Path, help="Depth-Anything-V2 checkpoint (default: Small, Apache-2.0)")
    c.add_argument("--depth-dir", type=Path, help="use depth maps from this folder (same names) instead of a depth model")
    c.add_argument("--models-dir", type=Path, help="models folder (default $PDFNET_MODELS_DIR or ~/.cache/pdfnet/models)")
    c.add_argument("--download", action="store_true", help="download missing weights from the Hugging Face hub "
                                                          "(also: PDFNET_DOWNLOAD=1)")
    c.add_argument("--size", type=int, default=1024, help="network resolution, multiple of 32 (trained at 1024)")
    c.add_argument("--resize", choices=["squash", "pad"], default="squash", help="squash (as trained) or pad (keep aspect)")
    c.add_argument("--tta", action="store_true", help="6-pass flip x scale test-time augmentation (paper's evaluation; 6x slower)")
    c.add_argument("--no-quantize-depth", dest="quantize_depth", action="store_false", help="keep the depth prior in float")
    c.add_argument("--format", dest="fmt", choices=sorted(OUTPUT_FORMATS), default="png", help="cut-out file format")
    c.add_argument("--no-rgba", dest="rgba", action="store_false", help="do not write the RGBA cut-out")
    c.add_argument("--mask", action="store_true", help="also write the mask as NAME_mask.png (white = subject)")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--background", help="also write NAME_composite over this colour ('#RRGGBB')")
    g.add_argument("--background-image", type=Path, help="also write NAME_composite over this image")
    c.add_argument("--fit", choices=["stretch", "cover", "contain"], default="cover", help="how the background image is fitted")
    c.add_argument("--foreground", choices=["multilevel", "blur_fusion", "none"], default="multilevel",
                   help="foreground colour estimation against colour spill at the edges")
    c.add_argument("--overwrite", action="store_true",
                   help="redo files whose outputs already exist (without it, an output that is truncated, "
                        "of another size than its source, or older than it is redone anyway)")
    c.add_argument("--max-pixels", type=int, default=None,
                   help=f"refuse images above this many pixels, from their header, before decoding them "
                        f"(default ${MAX_PIXELS_ENV} or {DEFAULT_MAX_PIXELS:,})")
    c.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    c.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="model precision")
    c.add_argument("--revision", choices=["auto", "v1", "v2"], default="auto",
                   help="PDFNet code revision to run: v1 (first release, which saved the published weights), "
                        "v2 (current official code); auto decides from the checkpoint (default)")

    v = sub.add_parser("convert", help="convert a checkpoint to safetensors")
    v.add_argument("source", type=Path)
    v.add_argument("target", type=Path)
    v.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")

    d = sub.add_parser("download", help="download a known model file from the Hugging Face hub")
    d.add_argument("name", help="file name, e.g. PDFNet_Best.pth or depth_anything_v2_vits.pth")
    d.add_argument("--dir", help="target folder (default: MODELS_DIR/<folder>)")
    d.add_argument("--models-dir", type=Path)
    # train / evaluate: their parsers import only argparse; the training code loads when one runs
    from .train.commands import add_parsers

    add_parsers(sub)
    return p


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
    if args.size < 32 or args.size % 32:
        raise UsageError(f"--size must be a positive multiple of 32, got {args.size}")
    if not (args.rgba or args.mask or args.background or args.background_image):
        raise UsageError("nothing to write: drop --no-rgba or add --mask / --background")
    keys = CutoutConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in keys}
    values["inputs"] = tuple(args.inputs)
    values["max_pixels"] = _max_pixels(args.max_pixels)
    return CutoutConfig(**values)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "cutout": lambda args: run_cutout(_cutout_config(args)),
    "convert": run_convert,
    "download": run_download,
}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    from .download import ModelDownloadError
    from .weights import CheckpointError

    try:
        run = getattr(args, "run", None) or COMMANDS[args.command]   # train/evaluate bring their own
        return run(args)
    except (UsageError, CheckpointError, ModelDownloadError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug: never confused with "some inputs failed" (1)
        traceback.print_exc()
        print(f"error: unexpected internal error (exit status {EXIT_CRASH}); please report it with the traceback above",
              file=sys.stderr)
        return EXIT_CRASH
