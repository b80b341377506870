"""Seconds and peak memory of one BiRefNet forward (Swin-T, Swin-L), with PDFNet beside them (prints numbers).

Every (model, size) runs in a fresh subprocess so that its peak RSS is its own:
    python benchmarks/bench_birefnet.py                        # 1024 on the CPU, fp32, batch 1
    python benchmarks/bench_birefnet.py --sizes 256 512 --threads 1
    python benchmarks/bench_birefnet.py --models swin_v1_t --device cuda --dtype fp16 --repeats 3
    COMFY_DIR=/work/comfy COMFY_PYTHON=/work/comfy-venv/bin/python \
        python benchmarks/bench_birefnet.py --models swin_v1_l --rounds 3      # beside ComfyUI core's BiRefNet
PDFNet rows come from benchmarks/bench_pdfnet.py (its child mode, so the measurement code is shared):
"pdfnet" is the network with a given depth map, "pdfnet+depth" is segment() including the
Depth-Anything-V2 (vits) depth estimate.  Weights are the deterministic synthetic ones, written to a
temporary folder and loaded as a user's file would be (speed and memory do not depend on the values).
"before" is the RSS after loading, "peak" the process maximum, so "peak - before" is one forward's cost;
"cpu s" is the process CPU time of one forward (all threads), which the load of a shared machine
moves far less than wall seconds.

With ``--comfy DIR`` (default: $COMFY_DIR) the Swin-L rows also time ComfyUI core's own BiRefNet
(``comfy/background_removal/birefnet.py`` of that tree, built as core builds it, ``comfy.ops.manual_cast``,
but with fp32 weights) on the same weights file and input, under ``--comfy-python`` (default:
$COMFY_PYTHON, else this interpreter).  Ours then uses the legacy patch order, as core does.  The two
alternate in fresh subprocesses ``--rounds`` times and the ratios ours/core of the medians are printed.

``--deform-conv`` instead times the two deformable-convolution backends alone at the decoder's shapes
(64 -> 256 channels; 1/4..1/32 of ``--sizes``; kernels 1, 3, 7), alternating in this process.
"""
from __future__ import annotations

import argparse
import json
import os
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
CORE = "core swin_v1_l"   # the row of ComfyUI core's model


def _measure(run, size: int, dtype_name: str, device: str, repeats: int) -> dict:
    import time

    import torch

    from benchmarks.measure import timed_runs

    cpu0 = time.process_time()
    times, figures = timed_runs(run, repeats, device)
    cpu = (time.process_time() - cpu0) / repeats
    return {"size": size, "dtype": dtype_name, "device": device, "seconds": times, "cpu_seconds": cpu,
            "torch": torch.__version__, **figures}


def child(size: int, dtype_name: str, device: str, repeats: int, weights: str, threads: int,
          patch_order: str | None) -> dict:
    sys.path[:0] = [str(ROOT)]
    import torch

    from pdfnet_core.models.birefnet.loader import load_birefnet
    from pdfnet_core.weights import DTYPES

    torch.set_num_threads(threads)
    dtype = DTYPES[dtype_name]
    model = load_birefnet(weights, patch_order=patch_order, device=device, dtype=dtype)
    with torch.no_grad():  # one small warm-up pass: kernel selection and one-time allocations
        model(torch.zeros(1, 3, 64, 64, device=device, dtype=dtype))
    image = torch.randn(1, 3, size, size, device=device, dtype=dtype)
    return _measure(lambda: model(image), size, dtype_name, device, repeats)


def core_child(size: int, device: str, repeats: int, weights: str, threads: int, comfy: str) -> dict:
    """ComfyUI core's BiRefNet, fp32, every checkpoint key loaded (core's own key names are the official ones)."""
    sys.path[:0] = [comfy, str(ROOT)]
    import torch
    from safetensors.torch import load_file

    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = device == "cpu"   # ComfyUI's --cpu: without it, start-up probes for a GPU
    import comfy.ops
    from comfy.background_removal.birefnet import BiRefNet

    torch.set_num_threads(threads)
    # as comfy/bg_removal_model.py builds it, except the dtype: core stores fp16 weights on the CPU
    model = BiRefNet(None, torch.float32, device, comfy.ops.manual_cast)
    missing, unexpected = model.load_state_dict(load_file(weights), strict=False)
    if missing or unexpected:
        raise SystemExit(f"core BiRefNet keys differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64, device=device))
    image = torch.randn(1, 3, size, size, device=device)
    return _measure(lambda: model(image), size, "fp32", device, repeats)


def deform_conv_times(size: int, threads: int) -> None:
    """CPU seconds of each deformable-convolution backend at the decoder's shapes (prints)."""
    import time

    import torch

    sys.path[:0] = [str(ROOT)]
    from pdfnet_core.models.birefnet import deform_conv

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    print(f"{'map':>5} {'k':>2} " + " ".join(f"{name + ' cpu s':>16}" for name in sorted(deform_conv.BACKENDS)))
    for hw in (size // 32, size // 16, size // 8, size // 4):
        for k in (1, 3, 7):
            x, weight = torch.randn(1, 64, hw, hw, generator=g), 0.05 * torch.randn(256, 64, k, k, generator=g)
            offset = 2 * torch.randn(1, 2 * k * k, hw, hw, generator=g)
            mask = 2 * torch.rand(1, k * k, hw, hw, generator=g)
            cpu = {name: [] for name in deform_conv.BACKENDS}
            with torch.no_grad():
                for _ in range(2):
                    for name in sorted(cpu):
                        t0 = time.process_time()
                        deform_conv.deform_conv2d(x, offset, weight, mask, k // 2, backend=name)
                        cpu[name].append(time.process_time() - t0)
            print(f"{hw:>5} {k:>2} " + " ".join(f"{min(cpu[name]):>16.3f}" for name in sorted(cpu)), flush=True)


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
    common = ["--sizes", str(size), "--device", args.device, "--repeats", str(args.repeats),
              "--threads", str(args.threads)] + extra
    if model == CORE:
        return [args.comfy_python, __file__, "--core-child", "--comfy", args.comfy] + common
    if model in BIREFNET_MODELS:
        order = ["--patch-order", "legacy"] if args.comfy else []
        return [sys.executable, __file__, "--child", "--dtype", args.dtype] + order + common
    return [sys.executable, str(PDFNET_BENCH), "--child", "--dtype", args.dtype] + common


def _run(model: str, size: int, args, extra: list[str]) -> dict | None:
    proc = subprocess.run(_command(model, size, args, extra), capture_output=True, text=True)
    if proc.returncode:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
        print(f"{model:>15} {size:>6} failed: {last}", flush=True)
        return None
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    extra_cuda = f" cuda peak {r['cuda_peak_gib']:.2f} GiB" if "cuda_peak_gib" in r else ""
    cpu = f"{r['cpu_seconds']:>8.2f}" if "cpu_seconds" in r else f"{'':>8}"
    print(f"{model:>15} {size:>6} {r['dtype']:>5} {r['device']:>6} {statistics.median(r['seconds']):>9.2f} {cpu} "
          f"{r['before_gib']:>11.2f} {r['peak_gib']:>9.2f} {r['peak_gib'] - r['before_gib']:>12.2f}"
          f"{extra_cuda}{'' if r['finite'] else '  NON-FINITE OUTPUT'}", flush=True)
    return r


def _median(runs: list[dict], key: str) -> float:
    """The median over rounds (fresh processes) of one measurement, itself a median where a run repeats."""
    return statistics.median(statistics.median(r[key]) if isinstance(r[key], list) else r[key] for r in runs)


def _ratios(ours: list[dict], core: list[dict]) -> str:
    return (f"ours/core over {len(ours)} round(s): wall {_median(ours, 'seconds') / _median(core, 'seconds'):.2f}, "
            f"cpu {_median(ours, 'cpu_seconds') / _median(core, 'cpu_seconds'):.2f}, forward memory "
            f"{_median(ours, 'peak_gib') - _median(ours, 'before_gib'):.2f} / "
            f"{_median(core, 'peak_gib') - _median(core, 'before_gib'):.2f} GiB"
            f" (torch {ours[0]['torch']} / {core[0]['torch']})")


def _report(path: str | None, model: str, ours: list[dict], core: list[dict] | None = None) -> None:
    """One summary row from the medians over the rounds, ours as well as core's."""
    sys.path[:0] = [str(ROOT)]
    from benchmarks.measure import report

    label = f"BiRefNet {model}" if model in BIREFNET_MODELS else model
    seconds, peak = _median(ours, "seconds"), _median(ours, "peak_gib")
    versus = ""
    if core:
        versus = (f"{seconds / _median(core, 'seconds'):.2f}x ComfyUI core's time, "
                  f"{peak / _median(core, 'peak_gib'):.2f}x its peak")
    r = ours[0]
    report(path, label, r["dtype"], f"{r['size']}² {r['device']}", seconds, peak, versus)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024])
    p.add_argument("--models", nargs="+", default=list(BIREFNET_MODELS + PDFNET_MODELS),
                   choices=BIREFNET_MODELS + PDFNET_MODELS)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--comfy", metavar="DIR", default=os.environ.get("COMFY_DIR") or None,
                   help="a ComfyUI tree: time its core BiRefNet beside Swin-L (default: $COMFY_DIR)")
    p.add_argument("--comfy-python", default=os.environ.get("COMFY_PYTHON") or sys.executable,
                   help="the interpreter of that ComfyUI (default: $COMFY_PYTHON, else this one)")
    p.add_argument("--rounds", type=int, default=1, help="with --comfy: alternating ours/core runs")
    p.add_argument("--deform-conv", action="store_true", help="time the deformable-convolution backends alone")
    p.add_argument("--summary", metavar="PATH", help="append the rows of benchmarks/summary.py's table here")
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--patch-order", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--core-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.sizes[0], args.dtype, args.device, args.repeats, args.weights, args.threads,
                               args.patch_order)))
        return
    if args.core_child:
        print(json.dumps(core_child(args.sizes[0], args.device, args.repeats, args.weights, args.threads, args.comfy)))
        return
    bad = [s for s in args.sizes if s <= 0 or s % 32]
    if bad:
        raise SystemExit(f"error: sizes must be positive multiples of 32, got {bad}")
    if args.deform_conv:
        for size in args.sizes:
            deform_conv_times(size, args.threads)
        return
    if args.comfy and args.dtype != "fp32":
        raise SystemExit("error: --comfy compares fp32 runs; leave --dtype at fp32")
    scratch = Path(tempfile.mkdtemp(prefix="birefnet_bench_"))
    try:
        print(f"{'model':>15} {'size':>6} {'dtype':>5} {'device':>6} {'seconds':>9} {'cpu s':>8} {'before GiB':>11} "
              f"{'peak GiB':>9} {'forward GiB':>12}", flush=True)
        for model in args.models:
            extra = _write_weights(model, scratch)
            against_core = args.comfy is not None and model == "swin_v1_l"
            for size in args.sizes:
                if not against_core:
                    r = _run(model, size, args, extra)
                    if r is not None:
                        _report(args.summary, model, [r])
                    continue
                ours, core = [], []
                for _ in range(max(1, args.rounds)):
                    for name, rows in ((model, ours), (CORE, core)):
                        r = _run(name, size, args, extra)
                        if r is not None:
                            rows.append(r)
                if ours and core:
                    print(f"{'':>15} {size:>6} {_ratios(ours, core)}", flush=True)
                    _report(args.summary, model, ours, core)
            if model in BIREFNET_MODELS:   # the Swin-L file is ~0.9 GB: free the disk before the next model
                Path(extra[1]).unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
