"""Images per second of the batch cut-out engine against the plain sequential loop.

    .venv/bin/python benchmarks/bench_batch.py [--images 24] [--size 256] [--batch-size 4]
        [--device auto] [--weights PDFNet.pth --depth-weights dav2.pth] [--rounds 2] [--scale 1]

24 photos of mixed sizes (four sizes, JPEG and PNG) are cut out into fresh folders by
  sequential  one file at a time, every stage in a row (``--prefetch 0``)
  pipelined   decoder and writer threads around the model (``--prefetch 2``, batch size 1)
  batched     the same with same-size images segmented together (``--batch-size N``)
with the models loaded once, alternating the variants round by round in one process (timings on
a shared machine are noisy).  Prints images/s per variant and round, the ratio to sequential,
and how far each variant's PNGs are from the sequential loop's (identical files, largest 8-bit
difference).  Without ``--weights`` the deterministic synthetic weights of tests/support are used (same network
size and cost as the released ones, outputs meaningless).  Nothing is asserted.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from benchmarks.measure import peak_rss_gib, report  # noqa: E402

SIZES = [(600, 800), (800, 600), (512, 512), (720, 1280)]


def make_photos(folder: Path, count: int, scale: float) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        h, w = (round(side * scale) for side in SIZES[i % len(SIZES)])
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack([128 + 100 * np.sin(xx / (17 + c + i) + yy / 29) for c in range(3)], -1)
        cy, cx, r = h / 2 + 40 * np.sin(i), w / 2, min(h, w) / 3
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (40 + 7 * i) % 255
        name = f"photo{i:02d}" + (".jpg" if i % 2 else ".png")
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / name, quality=92)


def synthetic_weights(folder: Path) -> tuple[Path, Path]:
    import torch
    from synthetic_dam2 import key_shapes, synth_state_dict
    from synthetic_pdfnet import synthetic_state_dict

    reference = ROOT.parent / "shared" / "reference"
    pdfnet, depth = folder / "pdfnet.pth", folder / "dav2_vits.pth"
    torch.save(synthetic_state_dict(reference), pdfnet)
    torch.save(synth_state_dict(key_shapes(reference, "vits")), depth)
    return pdfnet, depth


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--size", type=int, default=256, help="network size (1024 as trained; 256 keeps CPU runs short)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--foreground", default="multilevel")
    p.add_argument("--weights", type=Path)
    p.add_argument("--depth-weights", type=Path)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--scale", type=float, default=1.0, help="photo sizes times this (0.5 for a busy CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--summary", metavar="PATH", help="append the rows of benchmarks/summary.py's table here")
    args = p.parse_args()

    import torch

    from pdfnet_core.batch.config import CutoutConfig
    from pdfnet_core.batch.runner import run_cutout
    from pdfnet_core.batch.stages import load_models

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        src = work / "photos"
        make_photos(src, args.images, args.scale)
        weights, depth_weights = args.weights, args.depth_weights
        if weights is None or depth_weights is None:
            weights, depth_weights = synthetic_weights(work)
        base = CutoutConfig(inputs=(str(src),), out=work / "out", weights=weights, depth_weights=depth_weights,
                            size=args.size, device=args.device, dtype=args.dtype, foreground=args.foreground,
                            mask=True, quiet=True)
        t0 = time.perf_counter()
        models = load_models(base)
        print(f"models loaded in {time.perf_counter() - t0:.1f} s on {args.device}; {args.images} images "
              f"{sorted({(round(h * args.scale), round(w * args.scale)) for h, w in SIZES})} at network size {args.size}, foreground {args.foreground}, "
              f"torch threads {torch.get_num_threads()}", flush=True)
        variants = {"sequential": {"prefetch": 0}, "pipelined": {"prefetch": 2},
                    f"batched x{args.batch_size}": {"prefetch": 2, "batch_size": args.batch_size}}

        def run(name: str, tag: str) -> tuple[float, Path]:
            out = work / f"out_{tag}_{name.split()[0]}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = replace(base, out=out, **variants[name])
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            status = run_cutout(cfg, load_models=lambda _: models)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t
            if status != 0:
                print(f"  {name}: exit status {status}")
            return seconds, out

        # first calls (kernel selection, allocator growth) on one image of each size
        warm = work / "warmup"
        warm.mkdir()
        for q in sorted(src.iterdir())[:len(SIZES)]:
            shutil.copy(q, warm / q.name)
        run_cutout(replace(base, inputs=(str(warm),), out=work / "out_warmup"), load_models=lambda _: models)
        rates: dict[str, list[float]] = {name: [] for name in variants}
        outs: dict[str, Path] = {}
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                seconds, outs[name] = run(name, f"r{r}")
                rates[name].append(args.images / seconds)
                print(f"round {r + 1}  {name:<12} {seconds:7.1f} s  {args.images / seconds:6.2f} images/s", flush=True)

        def files(folder: Path) -> dict[str, bytes]:
            return {q.name: q.read_bytes() for q in folder.glob("*.png")}

        def largest_difference(a: bytes, b: bytes) -> int:
            from io import BytesIO

            from PIL import Image

            x, y = (np.asarray(Image.open(BytesIO(data))).astype(np.int16) for data in (a, b))
            return int(np.abs(x - y).max()) if x.shape == y.shape else 255

        reference = files(outs["sequential"])
        seq = float(np.median(rates["sequential"]))
        print(f"\n{'variant':<14}{'images/s (median)':>18}{'x sequential':>14}  outputs")
        for name in variants:
            got = files(outs[name])
            same = sum(got.get(k) == v for k, v in reference.items())
            # float32 GEMMs of another batch size sum in another order: a few pixels may move by 1/255
            worst = max((largest_difference(v, got[k]) for k, v in reference.items() if k in got), default=0)
            rate = float(np.median(rates[name]))
            print(f"{name:<14}{rate:>18.2f}{rate / seq:>14.2f}  {same}/{len(reference)} PNGs byte-identical, "
                  f"max |diff| {worst}/255" + ("" if len(got) == len(reference) else f" ({len(got)} written)"))
            report(args.summary, f"CLI batch, {name}", args.dtype, f"{args.images} mixed photos, network {args.size}²",
                   args.images / rate, peak_rss_gib(), f"{rate / seq:.2f}x the sequential loop's images/s, "
                   + (f"all {same} PNGs identical" if same == len(reference) else
                    f"{same}/{len(reference)} PNGs identical, the others within {worst}/255"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
