"""Measure the activation memory of one forward pass per family, variant and size (the numbers in the specs).

    python benchmarks/measure_activations.py                   # every family, CPU, fp32
    python benchmarks/measure_activations.py --families pdfnet --device cuda

Each point runs in a fresh process: load the model (synthetic weights), one tiny warm-up pass, then
one forward pass at the size; the activation memory is the peak minus what was resident before the
call (RSS on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA).  Prints the ``activation_mib``
tables to paste into each ``models/<family>/spec.py`` (MiB per image in fp32) and, beside them, what
the specs say now.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"

# family -> variant -> (square sides at which to measure, images per pass).  The sides are those the
# nodes and the CLI use: segmenters at 512 and 1024 (the default), Depth-Anything-V2 at its
# 518 default and twice that, SegRefiner's UNet at its 256² patches in a batch of 8.  Larger sides follow
# the slope of the last two points (MeasuredActivation).
POINTS: dict[str, dict[str | None, tuple[tuple[int, ...], int]]] = {
    "pdfnet": {None: ((512, 1024), 1)},
    "birefnet": {"swin_v1_t": ((512, 1024), 1), "swin_v1_l": ((512, 1024), 1)},
    "depth_anything": {"vits": ((518, 1036), 1), "vitb": ((518, 1036), 1), "vitl": ((518, 1036), 1)},
    "segrefiner": {None: ((256,), 8)},
}


def _build(family: str, variant: str | None, device: str):
    """The module and a function (side, batch) -> one forward pass, with synthetic weights."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]
    import torch

    if family == "pdfnet":
        from pdfnet_core.models.pdfnet.loader import load_pdfnet
        from synthetic_pdfnet import synthetic_state_dict

        m = load_pdfnet(synthetic_state_dict(REFERENCE), device=device, revision="v2")
        return lambda s, b: m(torch.randn(b, 3, s, s, device=device), torch.rand(b, 1, s, s, device=device))
    if family == "birefnet":
        from pdfnet_core.models.birefnet.loader import load_birefnet
        from synthetic_birefnet import synthetic_state_dict

        m = load_birefnet(synthetic_state_dict(REFERENCE, variant), device=device)
        return lambda s, b: m(torch.randn(b, 3, s, s, device=device))
    if family == "depth_anything":
        from pdfnet_core.models.depth_anything.loader import load_depth_anything
        from synthetic_dam2 import key_shapes, synth_state_dict

        m = load_depth_anything(synth_state_dict(key_shapes(REFERENCE, variant)), device=device)
        return lambda s, b: m(torch.randn(b, 3, s, s, device=device))
    if family == "segrefiner":
        from pdfnet_core.models.segrefiner.loader import load_segrefiner
        from synthetic_segrefiner import synthetic_state_dict

        m = load_segrefiner(synthetic_state_dict(REFERENCE, narrow=False), device=device)
        return lambda s, b: m.unet(torch.randn(b, 3, s, s, device=device), torch.rand(b, 1, s, s, device=device),
                                   torch.full((b,), 3, dtype=torch.long, device=device))
    raise SystemExit(f"unknown family {family!r}")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def child(family: str, variant: str | None, side: int, batch: int, device: str) -> dict:
    import torch

    torch.set_num_threads(2)
    run = _build(family, variant, device)
    from benchmarks.measure import peak_rss_gib  # importable once _build has put the root on sys.path
    with torch.inference_mode():
        run(64 if family != "depth_anything" else 70, 1)   # kernel selection and one-time allocations
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run(side, batch)
            torch.cuda.synchronize()
            used = torch.cuda.max_memory_allocated() - before
        else:
            before = _rss_bytes()
            run(side, batch)
            used = int(peak_rss_gib() * 2**30) - before
    return {"mib_per_image": used / batch / 2**20}


def current_estimate(family: str, variant: str | None, side: int) -> float:
    sys.path[:0] = [str(ROOT)]
    from pdfnet_core.families import family as spec_of

    return spec_of(family).activation_bytes(side, 1, "fp32", variant) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", choices=list(POINTS), default=list(POINTS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", nargs=4, metavar=("FAMILY", "VARIANT", "SIDE", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        fam, var, side, batch = args.child
        print(json.dumps(child(fam, None if var == "-" else var, int(side), int(batch), args.device)))
        return
    for fam in args.families:
        table: dict[str | None, dict[int, int]] = {}
        for variant, (sides, batch) in POINTS[fam].items():
            for side in sides:
                out = subprocess.run([sys.executable, __file__, "--device", args.device, "--child", fam,
                                      variant or "-", str(side), str(batch)], capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{fam} {variant} {side}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                    continue
                mib = json.loads(out.stdout.strip().splitlines()[-1])["mib_per_image"]
                table.setdefault(variant, {})[side] = round(mib)
                print(f"{fam:<15} {variant or '':<10} {side:>5}²  measured {mib:8.0f} MiB/image   "
                      f"spec says {current_estimate(fam, variant, side):8.0f}", flush=True)
        print(f"{fam}: activation_mib={json.dumps({str(k): v for k, v in table.items()})}  # {args.device}, fp32")


if __name__ == "__main__":
    main()
