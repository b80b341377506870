"""Command line: ``python -m pdfnet_core {cutout,convert,download} ...``.

``cutout`` is the batch job: files and folders of photos in, RGBA cut-outs (and optionally masks
and composites) out, one line per file, already finished files skipped, unreadable files reported
without stopping the batch.  Nothing is ever written outside ``--out``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
OUTPUT_FORMATS = {"png": ".png", "webp": ".webp"}


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


@dataclass(frozen=True)
class Job:
    source: Path
    stem: Path      # output path without suffix, relative to --out

    def outputs(self, cfg: CutoutConfig) -> list[Path]:
        paths = []
        if cfg.rgba:
            paths.append(self.target(cfg, "", OUTPUT_FORMATS[cfg.fmt]))
        if cfg.mask:
            paths.append(self.target(cfg, "_mask", ".png"))
        if cfg.background or cfg.background_image:
            paths.append(self.target(cfg, "_composite", OUTPUT_FORMATS[cfg.fmt]))
        return paths

    def target(self, cfg: CutoutConfig, tag: str, suffix: str) -> Path:
        path = (cfg.out / self.stem).with_name(self.stem.name + tag + suffix)
        out = cfg.out.resolve()
        if out not in path.resolve().parents:
            raise ValueError(f"refusing to write {path}: outside the output folder {out}")
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


# --------------------------------------------------------------------------------------------
# reading and writing images


def read_image(path: Path):
    """An RGB float tensor [H,W,3] (orientation from EXIF applied), or a ValueError saying why not."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from .images import pil_to_array, to_rgb_list

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode == "CMYK":
                im = im.convert("RGB")
            arr = pil_to_array(im)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ValueError(f"not a readable image ({exc})") from exc
    return to_rgb_list(arr, str(path))[0].permute(1, 2, 0)


def read_depth(path: Path):
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("F") if im.mode not in ("I;16", "I") else im, dtype=np.float32)
    return torch.from_numpy(arr.copy())


def write_image(tensor, path: Path) -> None:
    """Save [H,W,C] float 0..1 (C = 1, 3 or 4) as 8-bit PNG/WebP; atomically, so no half files."""
    import numpy as np
    import torch
    from PIL import Image

    arr = (tensor.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    image = Image.fromarray(np.ascontiguousarray(arr))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    fmt = "WEBP" if path.suffix == ".webp" else "PNG"
    image.save(tmp, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    os.replace(tmp, path)


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
    from .defaults import DEFAULTS, default_model_path

    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        return path
    folder = None if cfg.models_dir is None else cfg.models_dir / DEFAULTS[kind].folder_key
    return default_model_path(kind, folder, download=cfg.download or None)


def load_models(cfg: CutoutConfig):
    import torch

    from .depth_anything_loader import load_depth_anything
    from .pdfnet_loader import load_pdfnet
    from .weights import DTYPES

    device, dtype = _device(cfg.device), DTYPES[cfg.dtype]
    model = load_pdfnet(_resolve_weights(cfg.weights, "pdfnet", cfg), device=device, dtype=dtype)
    depth_model = None
    if cfg.depth_dir is None:
        depth_model = load_depth_anything(_resolve_weights(cfg.depth_weights, "depth_anything", cfg),
                                          device=device, dtype=torch.float32 if dtype == torch.float16 else dtype)
    return model, depth_model


# --------------------------------------------------------------------------------------------
# the job


def process(job: Job, cfg: CutoutConfig, model, depth_model, background) -> None:
    from .composite import composite_over_color, composite_over_image, to_rgba
    from .foreground import estimate_foreground
    from .pipeline import segment

    image = read_image(job.source)
    depth = None
    if cfg.depth_dir is not None:
        depth_path = next((p for p in (cfg.depth_dir / job.stem).parent.glob(job.stem.name + ".*")
                           if p.suffix.lower() in IMAGE_SUFFIXES), None)
        if depth_path is None:
            raise ValueError(f"no depth map named {job.stem.name}.* in {(cfg.depth_dir / job.stem).parent}")
        depth = read_depth(depth_path)
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


def run_cutout(cfg: CutoutConfig, echo: Callable[[str], None] = print) -> int:
    """Returns the exit status: 0 when every file was done or skipped, 1 when some failed."""
    jobs, problems = find_jobs(cfg.inputs, cfg.recursive)
    for line in problems:
        echo(f"error: {line}")
    todo = [j for j in jobs if cfg.overwrite or not all(p.exists() for p in j.outputs(cfg))]
    skipped = len(jobs) - len(todo)
    if skipped:
        echo(f"skipping {skipped} file(s) already done (use --overwrite to redo them)")
    if not todo:
        echo("nothing to do")
        return 1 if problems else 0
    background = read_image(cfg.background_image) if cfg.background_image else None
    model, depth_model = load_models(cfg)
    failed = len(problems)
    start = time.perf_counter()
    for n, job in enumerate(todo, start=1):
        t0 = time.perf_counter()
        try:
            process(job, cfg, model, depth_model, background)
        except (ValueError, OSError) as exc:
            failed += 1
            echo(f"[{n}/{len(todo)}] {job.source}: FAILED: {exc}")
            continue
        echo(f"[{n}/{len(todo)}] {job.source} -> {job.outputs(cfg)[0]} ({time.perf_counter() - t0:.1f} s)")
    done = len(todo) - (failed - len(problems))
    echo(f"done: {done} written, {skipped} skipped, {failed} failed in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------
# other commands


def run_convert(args: argparse.Namespace) -> int:
    from .weights import identify, read_state_dict, save_safetensors

    state = read_state_dict(args.source)
    family = identify(state.keys())
    if family is None:
        print(f"error: {args.source} is not a checkpoint of a model this pack knows", file=sys.stderr)
        return 2
    if family.name == "pdfnet":
        from .pdfnet_loader import load_pdfnet
        state = load_pdfnet(state).state_dict()  # validated, stale training entries dropped
    target = save_safetensors(state, args.target, args.dtype, metadata={"pdfnet_core.arch": family.name})
    print(f"wrote {target} ({family.description}, {args.dtype}, {target.stat().st_size / 2**20:.1f} MiB)")
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
    p = argparse.ArgumentParser(prog="python -m pdfnet_core", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("cutout", help="segment images and folders into RGBA cut-outs / masks / composites")
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
    c.add_argument("--overwrite", action="store_true", help="redo files whose outputs already exist")
    c.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    c.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="model precision")

    v = sub.add_parser("convert", help="convert a checkpoint to safetensors")
    v.add_argument("source", type=Path)
    v.add_argument("target", type=Path)
    v.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")

    d = sub.add_parser("download", help="download a known model file from the Hugging Face hub")
    d.add_argument("name", help="file name, e.g. PDFNet_Best.pth or depth_anything_v2_vits.pth")
    d.add_argument("--dir", help="target folder (default: MODELS_DIR/<folder>)")
    d.add_argument("--models-dir", type=Path)
    return p


def _cutout_config(args: argparse.Namespace) -> CutoutConfig:
    if args.size < 32 or args.size % 32:
        raise SystemExit(f"error: --size must be a positive multiple of 32, got {args.size}")
    if not (args.rgba or args.mask or args.background or args.background_image):
        raise SystemExit("error: nothing to write: drop --no-rgba or add --mask / --background")
    keys = CutoutConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in keys}
    values["inputs"] = tuple(args.inputs)
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
        return COMMANDS[args.command](args)
    except (CheckpointError, ModelDownloadError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
