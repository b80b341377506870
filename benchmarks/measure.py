"""The one timing loop of the model benchmarks: wall time per call, resident memory, CUDA peak."""
from __future__ import annotations

import resource
import time
from typing import Callable


def rss_gib() -> float:
    """Resident memory of this process now, in GiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**30


def peak_rss_gib() -> float:
    """This process's peak resident memory, in GiB.

    ``VmHWM`` belongs to the process image itself; ``ru_maxrss`` (the fallback off Linux) starts
    from the parent's peak at fork, so a child of a parent that built weights would report those.
    """
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 2**20
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed_runs(run: Callable[[], object], repeats: int, device: str) -> tuple[list[float], dict]:
    """Call ``run`` ``repeats`` times without gradients; seconds per call and the memory figures.

    The figures: ``before_gib`` (RSS before the first call), ``peak_gib`` (the process's peak RSS),
    ``finite`` (the last output has no NaN/inf) and, on CUDA, ``cuda_peak_gib``.
    """
    import torch

    before = rss_gib()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    out = None
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = run()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    out = out[0] if isinstance(out, list) else out
    figures = {"before_gib": before, "peak_gib": peak_rss_gib(),
               "finite": bool(torch.isfinite(out).all())}
    if cuda:
        figures["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return times, figures


def report(path: str | None, model: str, dtype: str, size: str, seconds: float, peak_gib: float,
           versus: str = "") -> None:
    """Append one row of the benchmarks' summary table (``benchmarks/summary.py``) to ``path``.

    ``size`` says what one run processes ("1024²", "6000x4000 photo"); ``versus`` the ratio to the
    official code or a peer where one was timed in the same run ("0.48x official time, 0.37x peak").
    """
    if not path:
        return
    import json

    row = {"model": model, "dtype": dtype, "size": size, "seconds": round(seconds, 2),
           "peak_gib": round(peak_gib, 2), "versus": versus}
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
