"""Seconds and peak memory of Depth-Anything-V2 depth estimation on one image (CPU by default).

    .venv/bin/python benchmarks/bench_depth.py                    # vits, vitb, vitl at 1024x1024
    .venv/bin/python benchmarks/bench_depth.py --variants vits --size 2048 --repeat 3

Each case runs in its own subprocess so that peak memory (``getrusage``'s max RSS, and Linux's
VmHWM reset just before inference) belongs to that case alone.  Weights are synthetic (the
reference recipe, applied to the model's own parameter shapes), so any machine can run this;
the speed of real weights is the same.  Numbers are printed, never asserted.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib(field: str) -> float | None:
    """VmRSS / VmHWM from /proc (Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so the peak measured afterwards is the
    # inference's own, not weight generation's.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _release_freed_memory() -> None:
    # glibc keeps freed heap pages; give them back so "RSS with the model loaded" means that.
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _max_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024   # bytes on macOS, KiB on Linux


def run_case(variant: str, size: int, repeat: int, dtype_name: str, threads: int | None) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from pdfnet_core.depth import estimate_depth, network_size
    from pdfnet_core.models.depth_anything.loader import load_depth_anything
    from pdfnet_core.models.depth_anything.net import build_depth_anything
    from tests.support.synthetic_dam2 import synth_state_dict

    if threads:
        torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    rss_base = _rss_mib("VmRSS")
    with torch.device("meta"):
        shapes = {k: list(v.shape) for k, v in build_depth_anything(variant).state_dict().items()}
    model = load_depth_anything(synth_state_dict(shapes, seed=0), variant=variant, dtype=dtype)
    weights_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)

    _release_freed_memory()
    rss_ready = _rss_mib("VmRSS")
    reset = _reset_peak_rss()
    times = []
    for _ in range(1 + repeat):            # the first call includes one-time allocator/kernel setup
        t0 = time.perf_counter()
        estimate_depth(image, model)
        times.append(time.perf_counter() - t0)
    return {
        "variant": variant, "size": size, "network": list(network_size(size, size)), "dtype": dtype_name,
        "threads": torch.get_num_threads(), "first_s": times[0], "best_s": min(times[1:] or times),
        "median_s": statistics.median(times[1:] or times),
        "weights_mib": weights_mib, "rss_base_mib": rss_base, "rss_ready_mib": rss_ready,
        "peak_inference_mib": _rss_mib("VmHWM") if reset else None, "peak_process_mib": _max_rss_mib(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["vits", "vitb", "vitl"])
    ap.add_argument("--size", type=int, default=1024, help="square image side in pixels")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs after the first")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--summary", metavar="PATH", help="append the rows of benchmarks/summary.py's table here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(run_case(args.variants[0], args.size, args.repeat, args.dtype, args.threads)))
        return

    sys.path[:0] = [str(ROOT)]
    from benchmarks.measure import report

    print(f"Depth-Anything-V2, one {args.size}x{args.size} image, {args.dtype}, CPU "
          f"({os.cpu_count()} cores), synthetic weights")
    print("RSS columns in MiB: after imports / with the model loaded / peak while inferring "
          "(+ its rise over loaded) / peak of the whole process (includes weight generation)")
    print(f"{'variant':8} {'network':>9} {'first s':>8} {'best s':>8} {'median s':>9} {'params':>7} "
          f"{'base':>6} {'loaded':>7} {'peak infer':>16} {'peak proc':>10}")
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--child", "--variants", variant, "--size", str(args.size),
               "--repeat", str(args.repeat), "--dtype", args.dtype]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{variant:8} failed:\n{proc.stderr.strip()}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        fmt = lambda v: f"{v:.0f}" if v is not None else "n/a"
        peak_infer = (f"{r['peak_inference_mib']:.0f} (+{r['peak_inference_mib'] - r['rss_ready_mib']:.0f})"
                      if r["peak_inference_mib"] is not None and r["rss_ready_mib"] is not None else "n/a")
        print(f"{variant:8} {'x'.join(map(str, r['network'])):>9} {r['first_s']:8.2f} {r['best_s']:8.2f} {r['median_s']:9.2f} "
              f"{fmt(r['weights_mib']):>7} {fmt(r['rss_base_mib']):>6} {fmt(r['rss_ready_mib']):>7} "
              f"{peak_infer:>16} {fmt(r['peak_process_mib']):>10}")
        peak = r["peak_inference_mib"] if r["peak_inference_mib"] is not None else r["peak_process_mib"]
        report(args.summary, f"Depth-Anything-V2 {variant}", args.dtype,
               f"{args.size}² image ({'x'.join(map(str, r['network']))} network)", r["median_s"], peak / 1024)


if __name__ == "__main__":
    main()
