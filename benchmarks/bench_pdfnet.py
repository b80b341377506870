"""Seconds and peak memory of one PDFNet forward at several sizes (prints numbers; asserts nothing).

Each size runs in a fresh subprocess so that peak RSS belongs to that size alone:
    python benchmarks/bench_pdfnet.py                     # 512, 1024, 2048 on the CPU, fp32, batch 1
    python benchmarks/bench_pdfnet.py --sizes 1024 --dtype bf16 --device cuda --repeats 3
    python benchmarks/bench_pdfnet.py --sizes 1024 --pipeline vits   # depth prior + PDFNet via segment()
Weights are the deterministic synthetic ones (speed and memory do not depend on the values); pass
--weights to time a real checkpoint.  "before" is the RSS after loading, "peak" the process maximum,
so "peak - before" is what one forward costs.  GPU runs also print torch's peak allocated memory.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
# Measured with the official code on this 2-core CPU (fp32, batch 1), from the issue.
OFFICIAL = {512: (9.8, 1.66), 1024: (21.8, 3.92)}


def child(size: int, dtype_name: str, device: str, repeats: int, weights: str | None, threads: int,
          depth_weights: str | None = None) -> dict:
    sys.path[:0] = [str(ROOT)]
    import torch

    from pdfnet_core.models.pdfnet.loader import load_pdfnet
    from pdfnet_core.weights import DTYPES

    torch.set_num_threads(threads)
    model = load_pdfnet(weights, device=device, dtype=DTYPES[dtype_name])
    with torch.no_grad():  # one small warm-up pass: kernel selection and one-time allocations
        model(torch.zeros(1, 3, 64, 64, device=device, dtype=DTYPES[dtype_name]), torch.rand(1, 1, 64, 64, device=device))
    image = torch.randn(1, 3, size, size, device=device, dtype=DTYPES[dtype_name])
    depth = torch.rand(1, 1, size, size, device=device)
    run = lambda: model(image, depth)  # noqa: E731
    if depth_weights:
        from pdfnet_core.models.depth_anything.loader import load_depth_anything
        from pdfnet_core.pipeline import segment

        depth_model = load_depth_anything(depth_weights, device=device)
        photo = torch.rand(1, size, size, 3)
        run = lambda: segment(photo, model=model, depth_model=depth_model, size=size)  # noqa: E731
    from benchmarks.measure import timed_runs

    times, figures = timed_runs(run, repeats, device)
    return {"size": size, "dtype": dtype_name, "device": device, "seconds": times, **figures}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weights")
    p.add_argument("--pipeline", choices=["vits", "vitb", "vitl"], help="time segment() with this depth model")
    p.add_argument("--depth-weights", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.sizes[0], args.dtype, args.device, args.repeats, args.weights, args.threads,
                               args.depth_weights)))
        return
    # synthetic weights go to files in a temporary folder, loaded by each child as a user's file would be
    import tempfile

    from safetensors.torch import save_file

    sys.path[:0] = [str(ROOT)]
    scratch = Path(tempfile.mkdtemp(prefix="pdfnet_bench_"))
    weights = args.weights
    if weights is None:
        from tests.support.synthetic_pdfnet import synthetic_state_dict

        weights = str(scratch / "pdfnet_synthetic.safetensors")
        save_file(synthetic_state_dict(REFERENCE), weights)
    depth_weights = None
    if args.pipeline:
        from tests.support.synthetic_dam2 import key_shapes, synth_state_dict

        depth_weights = str(scratch / f"dav2_{args.pipeline}_synthetic.safetensors")
        save_file(synth_state_dict(key_shapes(REFERENCE, args.pipeline)), depth_weights)
    try:
        _run_sizes(args, weights, depth_weights)
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)


def _run_sizes(args: argparse.Namespace, weights: str, depth_weights: str | None) -> None:
    print(f"{'size':>6} {'dtype':>5} {'device':>6} {'seconds':>9} {'before GiB':>11} {'peak GiB':>9} "
          f"{'forward GiB':>12}  vs official (s, peak GiB)")
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--child", "--sizes", str(size), "--dtype", args.dtype,
               "--device", args.device, "--repeats", str(args.repeats), "--threads", str(args.threads),
               "--weights", weights] + (["--depth-weights", depth_weights] if depth_weights else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"{size:>6} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        sec = statistics.median(r["seconds"])
        ref = OFFICIAL.get(size)
        vs = f"{sec / ref[0]:.2f}x time, {r['peak_gib'] / ref[1]:.2f}x peak" \
            if ref and args.device == "cpu" and not args.pipeline else (f"segment() with {args.pipeline}" if args.pipeline else "")
        extra = f" cuda peak {r['cuda_peak_gib']:.2f} GiB" if "cuda_peak_gib" in r else ""
        print(f"{size:>6} {r['dtype']:>5} {r['device']:>6} {sec:>9.2f} {r['before_gib']:>11.2f} {r['peak_gib']:>9.2f} "
              f"{r['peak_gib'] - r['before_gib']:>12.2f}  {vs}{extra}{'' if r['finite'] else '  NON-FINITE OUTPUT'}")


if __name__ == "__main__":
    main()
