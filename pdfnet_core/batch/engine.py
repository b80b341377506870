"""Running a batch job on one machine (and the set-up both engines share).

``run_cutout``: check the set-up before any model loads, list the inputs (one shard of them),
skip what the manifest shows done, then run the rest.  The local engine keeps the model busy:
``prefetch`` decoder threads read ahead, consecutive inputs of one size are segmented together
(``batch_size``; with a batch size above 1 the inputs are ordered by size first), and as many
writer threads encode and write while the model works on the next batch.  Records reach the
manifest and the progress display in input order, from the main thread only.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, TextIO

import torch

from ..files import TEMP_PREFIX, TEMP_SUFFIX
from .config import CutoutConfig, UsageError
from .imageio import header_size, read_image
from .jobs import Job, OutsideOutputError, distinct_outputs, find_jobs, in_shard, source_stat
from .manifest import DONE, FAILED, Manifest, Record
from .progress import BatchProgress
from . import work
from .work import Decoded, Models, cut_out, decode, process_batch, store

EXIT_OK, EXIT_SOME_FAILED = 0, 1


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
    if cfg.batch_size < 1 or cfg.prefetch < 0 or cfg.workers < 1 or (cfg.gpus_per_worker or 0) < 0:
        raise UsageError("--batch-size and --workers must be at least 1, --prefetch and --gpus-per-worker at least 0")
    if cfg.background is not None:
        from ..ops.composite import parse_color

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
    if cfg.engine == "ray":
        import importlib.util

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
               load_models: Callable[[CutoutConfig], Models] | None = None) -> int:
    """Returns the exit status: 0 when every input was done or skipped, 1 when some failed.

    Set-up errors raise UsageError before any model is loaded; an unexpected exception propagates.
    ``load_models`` (default ``work.load_models``) is called once per process that segments
    (once here, or once in each Ray actor); it must be picklable for the Ray engine.
    """
    check_setup(cfg)
    background = load_background(cfg)
    manifest = Manifest(cfg.out)
    notes = BatchProgress(0, quiet=cfg.quiet, stream=stream, bar=False)
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
                from .ray_engine import run_ray

                run_ray(planned.todo, cfg, background, report, progress, load_models or work.load_models)
            else:
                progress.note(f"loading the models for {len(planned.todo)} file(s)")
                try:
                    models = (load_models or work.load_models)(cfg)
                except (OSError, RuntimeError, MemoryError) as exc:
                    if isinstance(exc, FileNotFoundError):
                        raise
                    raise UsageError(f"cannot load the models: {type(exc).__name__}: {exc}") from exc
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
    return EXIT_SOME_FAILED if failures else EXIT_OK


Report = Callable[[Record, Job], None]


def size_order(todo: list[Job], threads: int) -> list[Job]:
    """``todo`` ordered by image size (read from the headers), unreadable ones last, else stable."""
    with ThreadPoolExecutor(threads) as pool:
        sizes = list(pool.map(lambda job: header_size(job.source), todo))
    return [job for _, job in sorted(zip(sizes, todo), key=lambda pair: (pair[0] is None, pair[0] or (0, 0)))]


def run_local(todo: list[Job], cfg: CutoutConfig, models: Models, background: torch.Tensor | None,
              report: Report, progress: BatchProgress) -> None:
    """Every input of ``todo`` through decode -> infer -> render -> store; ``report`` gets each record."""
    def on_start(name: str) -> Callable[[str], None]:
        return lambda stage: progress.stage(name, stage)

    if cfg.prefetch == 0:  # the plain sequential loop: every stage in a row, one input at a time
        for job in todo:
            report(cut_out(job, models, cfg, background, on_start(str(job))), job)
        return
    # same sizes next to each other, so that they can share a forward pass
    order = size_order(todo, cfg.prefetch) if cfg.batch_size > 1 else todo
    with ThreadPoolExecutor(cfg.prefetch, thread_name_prefix="pdfnet-decode") as decoders, \
            ThreadPoolExecutor(cfg.prefetch, thread_name_prefix="pdfnet-write") as writers:
        jobs = iter(order)
        reading: deque[Future[Decoded]] = deque()
        writing: deque[tuple[Future[Record] | Record, Job]] = deque()

        def read_ahead() -> None:
            while len(reading) < cfg.prefetch + cfg.batch_size:
                job = next(jobs, None)
                if job is None:
                    return
                reading.append(decoders.submit(decode, job, cfg))

        def drain(wait_for: int) -> None:
            """Report finished writes in input order, waiting until at most ``wait_for`` are open."""
            while writing and (len(writing) > wait_for or not isinstance(writing[0][0], Future)
                               or writing[0][0].done()):
                outcome, job = writing.popleft()
                report(outcome.result() if isinstance(outcome, Future) else outcome, job)

        def run(batch: list[Decoded]) -> None:
            if not batch:
                return
            outcomes = process_batch(batch, models, cfg, background, on_start(str(batch[0].job)),
                                     finish=lambda item, arrays, stages: writers.submit(store, item, arrays, cfg,
                                                                                        stages))
            writing.extend(zip(outcomes, (item.job for item in batch)))
            drain(2 * cfg.prefetch)

        batch: list[Decoded] = []
        read_ahead()
        while reading:
            item = reading.popleft().result()
            read_ahead()
            key = (item.size, item.depth is None)
            if batch and (item.error is not None or key != (batch[0].size, batch[0].depth is None)):
                run(batch)
                batch = []
            batch.append(item)
            if item.error is not None or len(batch) == cfg.batch_size:
                run(batch)
                batch = []
        run(batch)
        drain(0)
