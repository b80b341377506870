"""Seconds and peak memory of one PDFNet forward at several sizes (prints numbers; asserts nothing).

Each size runs in a fresh subprocess so that peak RSS belongs to that size alone:
    python benchmarks/bench_pdfnet.py                     # 512, 1024, 2048 on the CPU, fp32, batch 1
    python benchmarks/bench_pdfnet.py --sizes 1024 --dtype bf16 --device cuda --repeats 3
    python benchmarks/bench_pdfnet.py --sizes 1024 --pipeline vits   # depth prior + PDFNet via segment()
    PYTHONPATH=/tmp/offdeps python benchmarks/bench_pdfnet.py --sizes 1024 --dtype fp32 bf16 \\
        --official /tmp/official_pdfnet
With ``--official DIR`` (an export of Tennine2077/PDFNet; its own imports, einops and timm, must be
importable) the official fp32 ``inference()`` runs beside ours with the same weights and input size,
alternating fresh subprocesses ``--rounds`` times, and the ratios ours/official are printed
(medians over the rounds; the load of a shared machine moves both alike).
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
    return _timed(run, repeats, device, size, dtype_name)


def _timed(run, repeats: int, device: str, size: int, dtype_name: str) -> dict:
    """timed_runs, plus the CPU seconds of the process per call (steadier than wall time on a shared machine)."""
    import time

    from benchmarks.measure import timed_runs

    cpu0 = time.process_time()
    times, figures = timed_runs(run, repeats, device)
    cpu = (time.process_time() - cpu0) / max(1, repeats)
    return {"size": size, "dtype": dtype_name, "device": device, "seconds": times, "cpu_seconds": cpu, **figures}


def official_child(size: int, device: str, repeats: int, weights: str, threads: int, official: str) -> dict:
    """The official model (fp32, its own ``inference()``), built from an export of its repository."""
    import importlib.util
    import types

    sys.path[:0] = [official, str(ROOT)]
    # models/utils.py imports matplotlib for training plots only; inference never draws
    if importlib.util.find_spec("matplotlib") is None:
        for name in ("matplotlib", "matplotlib.pyplot"):
            sys.modules[name] = types.ModuleType(name)
    import torch

    import models.PDFNet as official_net
    from args import get_args_parser
    from pdfnet_core.weights import read_state_dict

    torch.set_num_threads(threads)
    swin_b = official_net.SwinB
    # its SwinB loads an ImageNet file from the author's disk; the weights come from ours instead
    official_net.SwinB = lambda args, in_chans=3, pretrained=True: swin_b(args, in_chans=in_chans, pretrained=False)
    args = get_args_parser().parse_args([])
    args.device = device
    model, _ = official_net.build_model(args)
    model.load_state_dict(read_state_dict(weights), strict=True)
    model.to(device).eval()
    with torch.no_grad():
        model.inference(torch.zeros(1, 3, 64, 64, device=device), torch.rand(1, 1, 64, 64, device=device))
    image = torch.randn(1, 3, size, size, device=device)
    depth = torch.rand(1, 1, size, size, device=device)
    return _timed(lambda: model.inference(image, depth)[1], repeats, device, size, "fp32")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--dtype", nargs="+", default=["fp32"], choices=["fp32", "fp16", "bf16"],
                   help="one or more: each runs in its own subprocess beside the others")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weights")
    p.add_argument("--pipeline", choices=["vits", "vitb", "vitl"], help="time segment() with this depth model")
    p.add_argument("--official", metavar="DIR", help="also time the official code exported in DIR (fp32)")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternating runs of every configuration (medians are printed)")
    p.add_argument("--summary", metavar="PATH", help="append the rows of benchmarks/summary.py's table here")
    p.add_argument("--depth-weights", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--official-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.official_child:
        print(json.dumps(official_child(args.sizes[0], args.device, args.repeats, args.weights, args.threads,
                                        args.official)))
        return
    if args.child:
        print(json.dumps(child(args.sizes[0], args.dtype[0], args.device, args.repeats, args.weights, args.threads,
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


def _child_result(cmd: list[str]) -> dict | str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(who: str, r: dict, sec: float) -> str:
    extra = f" cuda peak {r['cuda_peak_gib']:.2f} GiB" if "cuda_peak_gib" in r else ""
    return (f"{r['size']:>6} {who:>10} {r['dtype']:>5} {r['device']:>6} {sec:>9.2f} {r['before_gib']:>11.2f} "
            f"{r['peak_gib']:>9.2f} {r['peak_gib'] - r['before_gib']:>12.2f} {r['cpu_seconds']:>8.1f}{extra}"
            f"{'' if r['finite'] else '  NON-FINITE OUTPUT'}")


def _run_sizes(args: argparse.Namespace, weights: str, depth_weights: str | None) -> None:
    from benchmarks.measure import report

    print(f"{'size':>6} {'code':>10} {'dtype':>5} {'device':>6} {'seconds':>9} {'before GiB':>11} {'peak GiB':>9} "
          f"{'forward GiB':>12} {'CPU s':>8}")
    common = ["--device", args.device, "--repeats", str(args.repeats), "--threads", str(args.threads),
              "--weights", weights]
    official = args.official and not args.pipeline
    for size in args.sizes:
        cmds = {f"ours {dtype}": [sys.executable, __file__, "--child", "--sizes", str(size), "--dtype", dtype, *common]
                + (["--depth-weights", depth_weights] if depth_weights else []) for dtype in args.dtype}
        if official:
            cmds["official"] = [sys.executable, __file__, "--official-child", "--sizes", str(size), "--official",
                                str(Path(args.official).resolve()), *common]
        runs: dict[str, list[dict]] = {who: [] for who in cmds}
        for _ in range(max(1, args.rounds)):
            for who, cmd in cmds.items():
                r = _child_result(cmd)
                if isinstance(r, str):
                    print(f"{size:>6} {who:>10} {r}")
                    continue
                runs[who].append(r)
                print(_row(who, r, statistics.median(r["seconds"])))
        sec = {who: statistics.median(s for r in rs for s in r["seconds"]) for who, rs in runs.items() if rs}
        cpu = {who: statistics.median(r["cpu_seconds"] for r in rs) for who, rs in runs.items() if rs}
        peak = {who: statistics.median(r["peak_gib"] for r in rs) for who, rs in runs.items() if rs}
        for who in sec:
            versus = ""
            if who != "official" and "official" in sec:
                print(f"{size:>6} {who} / official fp32: {sec[who] / sec['official']:.2f}x time "
                      f"({sec[who]:.2f} s / {sec['official']:.2f} s), {cpu[who] / cpu['official']:.2f}x CPU time, "
                      f"{peak[who] / peak['official']:.2f}x peak RSS ({peak[who]:.2f} / {peak['official']:.2f} GiB)")
                versus = f"{sec[who] / sec['official']:.2f}x the official time, {peak[who] / peak['official']:.2f}x its peak"
            model = "PDFNet (official code)" if who == "official" else \
                f"PDFNet{' + Depth-Anything-V2 ' + args.pipeline + ' via segment()' if args.pipeline else ''}"
            report(args.summary, model, who.split()[-1] if who != "official" else "fp32", f"{size}² {args.device}",
                   sec[who], peak[who], versus)
        if args.pipeline:
            print(f"{size:>6} (segment() with {args.pipeline})")


if __name__ == "__main__":
    main()
