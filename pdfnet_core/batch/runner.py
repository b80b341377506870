"""Running a batch job: ``run_cutout`` checks the set-up before any model loads, lists the inputs
(one shard of them), skips what the manifest shows done, and hands the rest to an engine: the
local one (``local_engine``) or Ray Data (``ray_engine``, the optional extra).  It is the manifest's
only writer and owns the progress display.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Callable, TextIO

import torch

from ..atomic_files import TEMP_PREFIX, TEMP_SUFFIX, remove_stale_temporaries
from ..exit_status import ExitStatus
from ..ops.composite import parse_color
from .config import CutoutConfig, UsageError
from .imageio import read_image
from .jobs import Job, OutsideOutputError, distinct_outputs, find_jobs, in_shard, source_stat
from .local_engine import run_local
from .manifest import DONE, FAILED, Manifest, Record
from .progress import BatchProgress
from . import stages
from .stages import CutoutModels, auto_batch_size


@dataclass
class Plan:
    todo: list[Job] = field(default_factory=list)
    skipped: int = 0
    failed_before: int = 0
    failures: list[str] = field(default_factory=list)


def check_setup(cfg: CutoutConfig) -> None:
    """Everything that can be checked before a model is loaded; raises UsageError (exit 2)."""
    if cfg.max_pixels < 1:
        raise UsageError(f"--max-pixels must be at least 1, got {cfg.max_pixels}")
    if cfg.segment.batch_size < 1 or cfg.prefetch < 0 or cfg.workers < 1 or (cfg.gpus_per_worker or 0) < 0:
        raise UsageError("--batch-size and --workers must be at least 1, --prefetch and --gpus-per-worker at least 0")
    if cfg.background is not None:
        try:
            parse_color(cfg.background)
        except ValueError as exc:
            raise UsageError(f"--background: {exc}") from None
    if cfg.background_image is not None and not cfg.background_image.is_file():
        raise UsageError(f"--background-image {cfg.background_image}: no such file")
    if cfg.depth_dir is not None and not cfg.depth_dir.is_dir():
        raise UsageError(f"--depth-dir {cfg.depth_dir}: no such folder")
    if cfg.mask_dir is not None:
        if not cfg.mask_dir.is_dir():
            raise UsageError(f"--mask-dir {cfg.mask_dir}: no such folder")
        if cfg.engine == "ray":
            raise UsageError("--mask-dir runs on this machine only: drop --engine ray")
    for flag, path in (("--weights", cfg.weights), ("--depth-weights", cfg.depth_weights)):
        if path is not None and not path.is_file():
            raise UsageError(f"{flag} {path}: no such file")
    if cfg.engine == "ray":
        if importlib.util.find_spec("ray") is None:
            raise UsageError("--engine ray needs Ray Data: pip install 'pdfnet[ray]' (or 'ray[data]')")
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


def load_background(cfg: CutoutConfig) -> torch.Tensor | None:
    if cfg.background_image is None:
        return None
    try:
        return read_image(cfg.background_image, cfg.max_pixels)
    except ValueError as exc:
        raise UsageError(f"--background-image {cfg.background_image}: {exc}") from None


def plan(cfg: CutoutConfig, manifest: Manifest, progress: BatchProgress) -> Plan:
    """The inputs of this shard that are not done (nor failed before, unless --retry-failed)."""
    jobs, problems = find_jobs(cfg.inputs, cfg.recursive)
    jobs, notes = distinct_outputs(jobs, cfg)     # over all shards' inputs: every shard names alike
    result = Plan()
    for line in problems:
        progress.error(f"error: {line}")
        result.failures.append(line)
    for line in notes:
        progress.note(line)
    for job in jobs:
        if not in_shard(job, cfg.shard):
            continue
        try:
            outputs = job.outputs(cfg)
        except OutsideOutputError as exc:
            progress.error(f"{job}: FAILED: {exc}")
            result.failures.append(f"{job}: {exc}")
            continue
        if not cfg.overwrite:
            try:
                stat = source_stat(job.source)
            except OSError:
                stat = None  # reported when it is decoded
            state = manifest.state(job, cfg, stat, outputs)
            if state == DONE:
                result.skipped += 1
                continue
            if state == FAILED and not cfg.retry_failed:
                result.failed_before += 1
                result.failures.append(f"{job}: {manifest.latest[(job.source, job.stem.as_posix())].error} "
                                       "(failed before; --retry-failed tries again)")
                continue
        result.todo.append(job)
    return result


def run_cutout(cfg: CutoutConfig, stream: TextIO | None = None,
               load_models: Callable[[CutoutConfig], CutoutModels] | None = None) -> int:
    """Returns the exit status: 0 when every input was done or skipped, 1 when some failed.

    Set-up errors raise UsageError before any model is loaded; an unexpected exception propagates.
    ``load_models`` (default ``stages.load_models``) is called once per process that segments
    (once here, or once in each Ray actor); it must be picklable for the Ray engine.
    """
    load_models = load_models or stages.load_models
    check_setup(cfg)
    background = load_background(cfg)
    manifest = Manifest(cfg.out)
    notes = BatchProgress(0, quiet=cfg.quiet, stream=stream, bar=False)
    if stale := remove_stale_temporaries(cfg.out, recursive=cfg.recursive):   # what killed runs left
        notes.note(f"removed {len(stale)} temporary file(s) left by earlier runs that were stopped")
    planned = plan(cfg, manifest, notes)
    if planned.skipped:
        notes.note(f"skipping {planned.skipped} file(s) already done (use --overwrite to redo them)")
    if planned.failed_before:
        notes.note(f"skipping {planned.failed_before} file(s) that failed before (use --retry-failed to try again)")
    failures = planned.failures
    start = time.perf_counter()
    written = 0
    if planned.todo:
        progress = BatchProgress(len(planned.todo), quiet=cfg.quiet, stream=stream)

        def report(record: Record, job: Job) -> None:
            nonlocal written
            manifest.append(record)
            if record.status == DONE:
                written += 1
                target = record.outputs[0].path if record.outputs else "(nothing)"
                progress.finished(str(job), str(cfg.out / target), record.seconds, record.stages)
            else:
                failures.append(f"{job}: {record.error}")
                progress.finished(str(job), record.error or "failed", record.seconds, failed=True)

        try:
            if cfg.engine == "ray":
                # Deferred: the optional extra (pip install 'pdfnet[ray]'), imported only for --engine ray
                from .ray_engine import run_ray

                run_ray(planned.todo, cfg, background, report, progress, load_models)
            else:
                progress.note(f"loading the models for {len(planned.todo)} file(s)")
                try:
                    models = load_models(cfg)
                except (OSError, RuntimeError, MemoryError) as exc:
                    if isinstance(exc, FileNotFoundError):
                        raise
                    raise UsageError(f"cannot load the models: {type(exc).__name__}: {exc}") from exc
                if cfg.auto_batch:
                    cfg = replace(cfg, segment=replace(cfg.segment, batch_size=auto_batch_size(cfg, models)))
                    progress.note(f"--batch-size auto: {cfg.segment.batch_size} image(s) per forward pass")
                run_local(planned.todo, cfg, models, background, report, progress)
        finally:
            progress.close()
    else:
        notes.note("nothing to do")
    notes.note(f"done: {written} written, {planned.skipped} skipped, {len(failures)} failed in "
               f"{time.perf_counter() - start:.1f} s")
    if failures:
        notes.error(f"failed ({len(failures)}):")
        for line in failures:
            notes.error(f"  {line}")
    return ExitStatus.SOME_FAILED if failures else ExitStatus.OK


