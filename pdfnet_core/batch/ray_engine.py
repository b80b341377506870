"""``--engine ray``: the same job as a Ray Data pipeline, on one machine or a cluster.

Inputs are listed by the driver (a local folder or any pyarrow filesystem URI), decoded in Ray
tasks, and segmented by a pool of ``workers`` actors, each holding its models (loaded once, through
the model cache) on ``gpus_per_worker`` GPUs; the actors render and write the outputs into --out
(on a cluster: a folder every node mounts) with the same atomic writes as the local engine, and
hand their manifest records back to the driver, the manifest's only writer.  An actor that dies is
restarted and its batch retried by Ray Data; the driver sees one record per input, so the
manifest has exactly one line per input however often a batch was retried.

This is the only module that imports ray (install it with ``pip install 'pdfnet[ray]'``).
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np
import torch

import ray
from ray.data import DataContext

from .config import CutoutConfig
from .imageio import size_order
from .jobs import Job
from .manifest import Record
from .progress import BatchProgress
from .stages import CutoutModels, Decoded, decode, process_batch

DECODE_CPUS = 0.5


def _row_job(row: dict[str, Any]) -> Job:
    return Job(str(row["source"]), PurePosixPath(str(row["stem"])), str(row["shown"]))


def decode_row(row: dict[str, Any], cfg: CutoutConfig) -> dict[str, Any]:
    """A Ray task: one input decoded into plain columns (arrays, numbers, strings)."""
    item = decode(_row_job(row), cfg)
    empty = np.zeros((0, 0), np.float32)
    return {**row,
            "image": empty[..., None].repeat(3, -1) if item.image is None else item.image.numpy(),
            "depth": empty if item.depth is None else item.depth.numpy(),
            "has_depth": item.depth is not None,
            "error": item.error or "",
            "stat": [-1, -1] if item.stat is None else list(item.stat),
            "decode_s": item.stages.get("decode", 0.0)}


def _decoded(batch: dict[str, np.ndarray], i: int) -> Decoded:
    row = {k: batch[k][i] for k in ("source", "stem", "shown")}
    size, mtime = (int(v) for v in batch["stat"][i])
    error = str(batch["error"][i]) or None
    item = Decoded(_row_job(row), None if size < 0 else (size, mtime), error=error,
                   stages={"decode": float(batch["decode_s"][i])})
    if error is None:
        item.image = torch.from_numpy(np.array(batch["image"][i], np.float32))
        if bool(batch["has_depth"][i]):
            item.depth = torch.from_numpy(np.array(batch["depth"][i], np.float32))
    return item


class Segmenter:
    """A Ray Data actor: models loaded once; each call segments, renders and writes a batch."""

    def __init__(self, cfg: CutoutConfig, background: np.ndarray | None,
                 load_models: Callable[[CutoutConfig], CutoutModels]) -> None:
        self.cfg = cfg
        self.models = load_models(cfg)
        self.background = None if background is None else torch.from_numpy(background)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [_decoded(batch, i) for i in range(len(batch["key"]))]
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault((item.size, item.depth is None, item.error is None), []).append(i)
        records: list[str] = [""] * len(items)
        for (_, _, ok), indices in groups.items():
            chunks = [indices] if ok else [[i] for i in indices]
            for chunk in chunks:
                for i, record in zip(chunk, process_batch([items[i] for i in chunk], self.models, self.cfg,
                                                          self.background)):
                    records[i] = record.to_json()
        return {"key": np.asarray(batch["key"]), "record": np.asarray(records, dtype=object)}


def _runtime_env(joining: bool) -> dict[str, Any]:
    """How the workers import pdfnet_core: shipped to a cluster, found on the path locally."""
    package = Path(__file__).resolve().parents[1]
    if joining:
        return {"py_modules": [str(package)]}
    path = os.pathsep.join(p for p in (str(package.parent), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def run_ray(todo: list[Job], cfg: CutoutConfig, background: torch.Tensor | None,
            report: Callable[[Record, Job], None], progress: BatchProgress,
            load_models: Callable[[CutoutConfig], CutoutModels]) -> None:
    started = not ray.is_initialized()
    if started:
        progress.note(f"starting Ray ({'joining ' + cfg.address if cfg.address else 'a local instance'})")
        ray.init(address=cfg.address, runtime_env=_runtime_env(cfg.address is not None),
                 include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        DataContext.get_current().enable_progress_bars = False   # ours counts images, not blocks
        gpus = cfg.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        if cfg.segment.batch_size > 1:
            todo = size_order(todo, max(1, cfg.prefetch))
        jobs = dict(enumerate(todo))
        rows = [{"key": k, "source": job.source, "stem": job.stem.as_posix(), "shown": str(job)}
                for k, job in jobs.items()]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * cfg.workers)))
        # Decoding asks for other resources than the actors, so Ray Data keeps it in its own tasks
        # (not fused into the actors), overlapping with the model.
        ds = ds.map(decode_row, fn_kwargs={"cfg": cfg}, num_cpus=DECODE_CPUS)
        ds = ds.map_batches(Segmenter, fn_constructor_kwargs={
                                "cfg": cfg, "background": None if background is None else background.numpy(),
                                "load_models": load_models},
                            batch_size=cfg.segment.batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=cfg.workers),
                            num_gpus=gpus, num_cpus=0 if gpus else 1)
        progress.note(f"segmenting with {cfg.workers} Ray worker(s), {gpus:g} GPU(s) each")
        seen: set[int] = set()
        for row in ds.iter_rows():
            key = int(row["key"])
            if key in seen:  # a retried batch whose first attempt got through: written already
                continue
            seen.add(key)
            report(Record.from_json(str(row["record"])), jobs[key])
    finally:
        if started:
            ray.shutdown()
