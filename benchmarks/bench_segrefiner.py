"""Seconds per SegRefiner UNet step (256², the size of every official call) and per HR refinement.

    python benchmarks/bench_segrefiner.py                        # full width, 2048² HR mask, CPU fp32
    python benchmarks/bench_segrefiner.py --size 1024 --threads 2
    python benchmarks/bench_segrefiner.py --patch-dtype bf16      # fp32 global pass, bf16 patches
    python benchmarks/bench_segrefiner.py --estimate --batch 4    # global pass + patch count only
    python benchmarks/bench_segrefiner.py --width 32 --size 512   # the narrow test model (quick check)
    python benchmarks/bench_segrefiner.py --device cuda --dtype fp16

Weights are the deterministic synthetic ones of shared/reference/segrefiner (speed does not depend on
the values), loaded through ``load_segrefiner``.  The HR cost is 5 global steps at 256² plus one
step per selected 256² patch (one per call on a CPU, 32 on an accelerator: modes.patch_batch); the
number of patches depends on the weights and the image (random weights pick their own), so the
patch count is printed.  ``--estimate`` runs the real
global pass and patch selection but not the patches (a stub answers for them) and prints
``global + patches * patch step / batch``: a full 2048² run can take many minutes on a small CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _scene(size: int):
    """A disc-like object with a wavy border, and a coarse mask that is a blocky version of it."""
    import numpy as np

    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    angle = np.arctan2(yy - 0.5, xx - 0.5)
    radius = np.hypot(yy - 0.5, xx - 0.5)
    obj = radius < 0.3 + 0.03 * np.sin(9 * angle)
    image = np.where(obj[..., None], [210, 80, 50], [40, 100, 170]).astype(np.uint8)
    block = max(1, size // 64)
    coarse = obj[::block, ::block].repeat(block, 0).repeat(block, 1)[:size, :size]
    return image, coarse.astype(np.uint8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=128, help="UNet model_channels: 128 official, 32 narrow")
    p.add_argument("--size", type=int, default=2048, help="HR image/mask side (>= 256)")
    p.add_argument("--batch", type=int, default=1, help="batch of the UNet step timing")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--patch-dtype", choices=["model", "fp32", "fp16", "bf16"], default="model",
                   help="precision of the HR patch pass (HRConfig.patch_dtype); model: the model's own")
    p.add_argument("--skip-hr", action="store_true", help="only time the UNet step")
    p.add_argument("--summary", metavar="PATH", help="append the rows of benchmarks/summary.py's table here")
    p.add_argument("--estimate", action="store_true",
                   help="HR: time the global pass and count the patches; estimate the patch pass from the step")
    args = p.parse_args(argv)

    sys.path[:0] = [str(ROOT)]
    import torch

    from pdfnet_core.models.segrefiner.diffusion import NoiseSource
    from pdfnet_core.models.segrefiner.loader import load_segrefiner
    from pdfnet_core.models.segrefiner.modes import refine_hr
    from pdfnet_core.models.segrefiner.refiner import binarize, normalize_image
    from pdfnet_core.weights import DTYPES
    from tests.support.synthetic_segrefiner import synthetic_state_dict

    if args.threads:
        torch.set_num_threads(args.threads)
    state = synthetic_state_dict(REFERENCE, narrow=args.width == 32)
    if args.width not in (32, 128):
        raise SystemExit("--width must be 128 (official) or 32 (narrow): the synthetic weights exist for those")
    model = load_segrefiner(state, device=args.device, dtype=DTYPES[args.dtype])
    del state
    n_params = sum(p.numel() for p in model.parameters())
    print(f"SegRefiner width {args.width} ({n_params / 1e6:.1f} M params), {args.device} {args.dtype}, "
          f"{torch.get_num_threads()} threads")

    if args.patch_dtype != "model":
        model.hr_config = dataclasses.replace(model.hr_config, patch_dtype=DTYPES[args.patch_dtype])
    b = args.batch
    image = torch.randn(b, 3, 256, 256, device=args.device)
    mask = (torch.rand(b, 1, 256, 256, device=args.device) > 0.5).float()
    t = torch.full((b,), 3, dtype=torch.int64, device=args.device)
    step = {}
    with torch.inference_mode():
        unets = {"model": model.unet, "patch": model.unet_in(model.hr_config.patch_dtype)}
        for name, unet in unets.items():
            if name == "patch" and unet == model.unet:
                step["patch"] = step["model"]
                continue
            unet(image[:1, :, :64, :64], mask[:1, :, :64, :64], t[:1])   # warm-up: kernel selection
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                unet(image, mask, t)
                _sync(args.device)
                times.append(time.perf_counter() - t0)
            step[name] = statistics.median(times)
            print(f"UNet step 256x256 batch {b} ({name} precision {unet.__self__.placement()[1]}): median "
                  f"{step[name]:.3f} s, min {min(times):.3f} s over {len(times)}")

    if args.skip_hr:
        return 0
    img, coarse = _scene(args.size)
    trace: dict = {}
    if args.estimate:
        with torch.inference_mode():
            t0 = time.perf_counter()
            refine_hr(model.unet, normalize_image(img, args.device), binarize(coarse).float().to(args.device),
                      NoiseSource(0, args.device), model.hr_config, trace=trace,
                      patch_unet=lambda im, m, tt: torch.zeros_like(m))
            _sync(args.device)
            glob = time.perf_counter() - t0
        patches = int(trace["patch_boxes"].shape[0])
        print(f"HR refinement {args.size}x{args.size} ESTIMATE: {glob + patches * step['patch'] / b:.1f} s = "
              f"global pass {glob:.1f} s (measured) + {patches} patches x {step['patch'] / b:.2f} s "
              f"(step at batch {b}, not run) of {int(trace['nms_boxes'].shape[0])} NMS boxes")
        return 0
    t0 = time.perf_counter()
    out = model.refine(img, coarse, "hr", seed=0, trace=trace)
    _sync(args.device)
    total = time.perf_counter() - t0
    patches = int(trace["patch_boxes"].shape[0]) if "patch_boxes" in trace else 0
    print(f"HR refinement {args.size}x{args.size}: {total:.2f} s (5 global steps + {patches} patches of "
          f"{int(trace.get('nms_boxes', torch.zeros(0, 4)).shape[0])} NMS boxes); "
          f"{int((out != coarse).sum())} pixels changed")
    from benchmarks.measure import peak_rss_gib, report

    patch = "" if args.patch_dtype == "model" else f", patches {args.patch_dtype}"
    report(args.summary, f"SegRefiner HR (width {args.width})", args.dtype + patch, f"{args.size}² mask {args.device}",
           total, peak_rss_gib())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
