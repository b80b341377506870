"""Seconds and peak memory of one BiRefNet forward (Swin-T, Swin-L), with PDFNet beside them (prints numbers).

Every (model, size) runs in a fresh subprocess so that its peak RSS is its own:
    python benchmarks/bench_birefnet.py                        # 1024 on the CPU, fp32, batch 1
    python benchmarks/bench_birefnet.py --sizes 256 512 --threads 1
    python benchmarks/bench_birefnet.py --models swin_v1_t --device cuda --dtype fp16 --repeats 3
PDFNet rows come from benchmarks/bench_pdfnet.py (its child mode, so the measurement code is shared):
"pdfnet" is the network with a given depth map, "pdfnet+depth" is segment() including the
Depth-Anything-V2 (vits) depth estimate.  Weights are the deterministic synthetic ones, written to a
temporary folder and loaded as a user's file would be (speed and memory do not depend on the values).
"before" is the RSS after loading, "peak" the process maximum, so "peak - before" is one forward's cost.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
PDFNET_BENCH = ROOT / "benchmarks" / "bench_pdfnet.py"
BIREFNET_MODELS = ("swin_v1_t", "swin_v1_l")
PDFNET_MODELS = ("pdfnet", "pdfnet+depth")


def child(size: int, dtype_name: str, device: str, repeats: int, weights: str, threads: int) -> dict:
    sys.path[:0] = [str(ROOT)]
    import torch

    from pdfnet_core.models.birefnet.loader import load_birefnet
    from pdfnet_core.weights import DTYPES

    torch.set_num_threads(threads)
    dtype = DTYPES[dtype_name]
    model = load_birefnet(weights, device=device, dtype=dtype)
    with torch.no_grad():  # one small warm-up pass: kernel selection and one-time allocations
        model(torch.zeros(1, 3, 64, 64, device=device, dtype=dtype))
    image = torch.randn(1, 3, size, size, device=device, dtype=dtype)
    from benchmarks.measure import timed_runs

    times, figures = timed_runs(lambda: model(image), repeats, device)
    return {"size": size, "dtype": dtype_name, "device": device, "seconds": times, **figures}


def _write_weights(model: str, scratch: Path) -> list[str]:
    """Synthetic weights for ``model``; returns the extra command-line arguments that name them."""
    from safetensors.torch import save_file

    sys.path[:0] = [str(ROOT)]
    if model in BIREFNET_MODELS:
        from tests.support.synthetic_birefnet import synthetic_state_dict

        path = scratch / f"birefnet_{model}_synthetic.safetensors"
        save_file(synthetic_state_dict(REFERENCE, model), str(path))
        return ["--weights", str(path)]
    from tests.support.synthetic_pdfnet import synthetic_state_dict as pdfnet_state

    path = scratch / "pdfnet_synthetic.safetensors"
    if not path.exists():
        save_file(pdfnet_state(REFERENCE), str(path))
    extra = ["--weights", str(path)]
    if model == "pdfnet+depth":
        from tests.support.synthetic_dam2 import key_shapes, synth_state_dict

        depth = scratch / "dav2_vits_synthetic.safetensors"
        save_file(synth_state_dict(key_shapes(REFERENCE, "vits")), str(depth))
        extra += ["--depth-weights", str(depth)]
    return extra


def _command(model: str, size: int, args, extra: list[str]) -> list[str]:
    script = __file__ if model in BIREFNET_MODELS else str(PDFNET_BENCH)
    return [sys.executable, script, "--child", "--sizes", str(size), "--dtype", args.dtype, "--device", args.device,
            "--repeats", str(args.repeats), "--threads", str(args.threads)] + extra


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024])
    p.add_argument("--models", nargs="+", default=list(BIREFNET_MODELS + PDFNET_MODELS),
                   choices=BIREFNET_MODELS + PDFNET_MODELS)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.sizes[0], args.dtype, args.device, args.repeats, args.weights, args.threads)))
        return
    bad = [s for s in args.sizes if s <= 0 or s % 32]
    if bad:
        raise SystemExit(f"error: sizes must be positive multiples of 32, got {bad}")
    scratch = Path(tempfile.mkdtemp(prefix="birefnet_bench_"))
    try:
        print(f"{'model':>13} {'size':>6} {'dtype':>5} {'device':>6} {'seconds':>9} {'before GiB':>11} "
              f"{'peak GiB':>9} {'forward GiB':>12}")
        for model in args.models:
            extra = _write_weights(model, scratch)
            for size in args.sizes:
                proc = subprocess.run(_command(model, size, args, extra), capture_output=True, text=True)
                if proc.returncode:
                    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
                    print(f"{model:>13} {size:>6} failed: {last}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                extra_cuda = f" cuda peak {r['cuda_peak_gib']:.2f} GiB" if "cuda_peak_gib" in r else ""
                print(f"{model:>13} {size:>6} {r['dtype']:>5} {r['device']:>6} {statistics.median(r['seconds']):>9.2f} "
                      f"{r['before_gib']:>11.2f} {r['peak_gib']:>9.2f} {r['peak_gib'] - r['before_gib']:>12.2f}"
                      f"{extra_cuda}{'' if r['finite'] else '  NON-FINITE OUTPUT'}", flush=True)
            if model in BIREFNET_MODELS:   # the Swin-L file is ~0.9 GB: free the disk before the next model
                Path(extra[1]).unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
