"""The local engine: one machine, the model kept busy.

``prefetch`` decoder threads read ahead, consecutive inputs of one size are segmented together
(``batch_size``; with a batch size above 1 the inputs are ordered by size first), and as many
writer threads encode and write while the model works on the next batch.  Records reach the
caller (the manifest and the progress display) in input order, from the calling thread only.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch

from .config import CutoutConfig
from .imageio import size_order
from .jobs import Job
from .manifest import Record
from .progress import BatchProgress
from .stages import CutoutModels, Decoded, cut_out, decode, process_batch, store

Report = Callable[[Record, Job], None]


def run_local(todo: list[Job], cfg: CutoutConfig, models: CutoutModels, background: torch.Tensor | None,
              report: Report, progress: BatchProgress) -> None:
    """Every input of ``todo`` through decode -> infer -> render -> store; ``report`` gets each record."""
    def on_start(name: str) -> Callable[[str], None]:
        return lambda stage: progress.stage(name, stage)

    batch_size = cfg.segment.batch_size
    if cfg.prefetch == 0:  # the plain sequential loop: every stage in a row, one input at a time
        for job in todo:
            report(cut_out(job, models, cfg, background, on_start(str(job))), job)
        return
    # same sizes next to each other, so that they can share a forward pass
    order = size_order(todo, cfg.prefetch) if batch_size > 1 else todo
    with ThreadPoolExecutor(cfg.prefetch, thread_name_prefix="pdfnet-decode") as decoders, \
            ThreadPoolExecutor(cfg.prefetch, thread_name_prefix="pdfnet-write") as writers:
        jobs = iter(order)
        reading: deque[Future[Decoded]] = deque()
        writing: deque[tuple[Future[Record] | Record, Job]] = deque()

        def read_ahead() -> None:
            while len(reading) < cfg.prefetch + batch_size:
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
            if item.error is not None or len(batch) == batch_size:
                run(batch)
                batch = []
        run(batch)
        drain(0)
