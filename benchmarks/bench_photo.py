"""Wall time and peak memory of one large photo end to end (prints numbers; asserts nothing).

    .venv/bin/python benchmarks/bench_photo.py                  # 6000x4000, CLI in a subprocess
    .venv/bin/python benchmarks/bench_photo.py --stages         # also the per-stage breakdown
    .venv/bin/python benchmarks/bench_photo.py --size 3000x2000 --foreground blur_fusion

A synthetic JPEG (textured background, a soft-edged object with a fringe of fine strands) and the
deterministic synthetic PDFNet and Depth-Anything-V2 Small weights are written to a scratch folder
(removed afterwards); ``python -m pdfnet_core cutout PHOTO --out DIR --weights W --depth-weights D``
runs in a child process and its peak RSS is ``getrusage(RUSAGE_CHILDREN).ru_maxrss``.

``--stages`` runs the same library calls as the CLI's per-image path in another child, one stage
at a time, with RSS sampled every few milliseconds by a thread: each stage's peak, and its peak
above the RSS it started from.  The depth prior is its own stage there (the CLI computes it inside
``segment``), so the stage peaks are a breakdown, not a second measurement of the CLI's peak.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"


def write_photo(path: Path, width: int, height: int, seed: int = 0) -> None:
    """A photo-like JPEG: a textured gradient, a soft-edged object, and thin strands on its edge."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((height, width, 3), np.uint8)
    xs = np.linspace(0, 1, width, dtype=np.float32)
    cy, cx, r = 0.5 * height, 0.5 * width, 0.3 * min(height, width)
    band = 256  # built in bands so the benchmark's own memory stays small
    for y0 in range(0, height, band):
        yy = np.arange(y0, min(height, y0 + band), dtype=np.float32)[:, None]
        ys = yy / height
        bg = np.stack([0.45 + 0.3 * np.sin(xs * 31 + c) * np.cos(ys * 17 + 2 * c) for c in range(3)], -1)
        fg = np.stack([0.6 + 0.25 * np.cos(xs * 9 + 3 * c) * np.sin(ys * 7) for c in range(3)], -1)
        px = np.arange(width, dtype=np.float32)[None]
        dist = np.hypot(yy - cy, px - cx)
        angle = np.arctan2(yy - cy, px - cx)
        edge = r * (1 + 0.08 * np.sin(angle * 7))
        alpha = np.clip((edge - dist) / 6 + 0.5, 0, 1)
        strands = (np.sin(angle * 900) > 0.97) & (dist < edge * 1.15)
        alpha = np.maximum(alpha, strands * np.clip((edge * 1.15 - dist) / (0.15 * edge), 0, 1))
        im = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
        im += rng.normal(0, 0.03, im.shape).astype(np.float32)  # sensor noise: JPEG texture
        out[y0:y0 + band] = np.clip(im * 255 + 0.5, 0, 255).astype(np.uint8)
    Image.fromarray(out).save(path, quality=90)


def write_weights(folder: Path) -> tuple[Path, Path]:
    from safetensors.torch import save_file

    sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]
    from synthetic_dam2 import key_shapes, synth_state_dict
    from synthetic_pdfnet import synthetic_state_dict

    pdfnet, depth = folder / "pdfnet_synthetic.safetensors", folder / "dav2_vits_synthetic.safetensors"
    save_file(synthetic_state_dict(REFERENCE), str(pdfnet))
    save_file(synth_state_dict(key_shapes(REFERENCE, "vits")), str(depth))
    return pdfnet, depth


# --------------------------------------------------------------------------------------------
# the per-stage child


class RssSampler:
    """Peak RSS since the last ``mark`` (sampled by a thread), and RSS now, in GiB."""

    def __init__(self, interval: float = 0.005):
        import os

        self._statm = os.open("/proc/self/statm", os.O_RDONLY)
        self._page = resource.getpagesize()
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def now(self) -> float:
        import os

        return int(os.pread(self._statm, 64, 0).split()[1]) * self._page / 2**30

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, self.now())

    def mark(self) -> float:
        """The peak since the previous mark; the next stage's peak starts from RSS now."""
        peak = max(self.peak, self.now())
        self.peak = self.now()
        return peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def stages_child(photo: str, weights: str, depth_weights: str, out: str, foreground: str) -> list[dict]:
    sys.path[:0] = [str(ROOT)]
    sampler = RssSampler()
    rows: list[dict] = []

    def stage(name: str, run):
        sampler.mark()  # the window starts here, not at the end of the previous stage
        start = sampler.now()
        t0 = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - t0
        peak = sampler.mark()
        rows.append({"stage": name, "seconds": seconds, "start_gib": start, "peak_gib": peak,
                     "after_gib": sampler.now()})
        return result

    import torch

    from pdfnet_core.batch.imageio import read_image, write_array
    from pdfnet_core.depth import depth_prior
    from pdfnet_core.models.depth_anything.loader import load_depth_anything
    from pdfnet_core.models.pdfnet.loader import load_pdfnet
    from pdfnet_core.ops.composite import to_rgba
    from pdfnet_core.ops.foreground import estimate_foreground
    from pdfnet_core.ops.images import to_uint8
    from pdfnet_core.pipeline import segment

    model = stage("load models", lambda: load_pdfnet(weights))
    depth_model = load_depth_anything(depth_weights)
    image = stage("read_image", lambda: read_image(Path(photo)))
    with torch.no_grad():
        depth = stage("depth prior", lambda: depth_prior(image[None], depth_model)[0])
        alpha = stage("segment (given depth)", lambda: segment(image[None], depth[None], model)[0])
    depth = None   # freed before the foreground stage, as the CLI frees it
    fg = stage(f"foreground {foreground}", lambda: estimate_foreground(image[None], alpha[None], foreground).foreground)
    rgba = stage("to_rgba", lambda: to_rgba(fg, alpha[None])[0])
    arr = stage("to_uint8 (banded)", lambda: to_uint8(rgba))
    stage("write_array (png)", lambda: write_array(arr, Path(out) / "stages.png"))
    sampler.close()
    from benchmarks.measure import peak_rss_gib

    rows.append({"stage": "process peak", "peak_gib": peak_rss_gib()})
    return rows


# --------------------------------------------------------------------------------------------
# the parent


def run_cli(photo: Path, weights: Path, depth: Path, out: Path, foreground: str) -> dict:
    cmd = [sys.executable, "-m", "pdfnet_core", "cutout", str(photo), "--out", str(out), "--weights", str(weights),
           "--depth-weights", str(depth), "--foreground", foreground, "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    # RUSAGE_CHILDREN is the largest peak of the waited-for children: this is the only child so far.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return {"status": proc.returncode, "wall_s": wall, "peak_gib": peak,
            "output": (proc.stdout + proc.stderr).strip().splitlines()[-3:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT of the synthetic photo")
    p.add_argument("--foreground", default="multilevel", choices=["multilevel", "blur_fusion", "none"])
    p.add_argument("--stages", action="store_true", help="also run the per-stage breakdown")
    p.add_argument("--keep", help="write the scratch files here and keep them")
    p.add_argument("--summary", metavar="PATH", help="append the rows of benchmarks/summary.py's table here")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(stages_child(*args.child, args.foreground)))
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    scratch = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pdfnet_photo_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        photo = scratch / "photo.jpg"
        write_photo(photo, width, height)
        weights, depth = write_weights(scratch)
        print(f"photo {width}x{height} ({photo.stat().st_size / 2**20:.1f} MiB JPEG), foreground {args.foreground}")
        r = run_cli(photo, weights, depth, scratch / "out", args.foreground)
        print(f"cli cutout: status {r['status']}, wall {r['wall_s']:.1f} s, peak RSS {r['peak_gib']:.2f} GiB")
        if not r["status"]:
            from benchmarks.measure import report

            report(args.summary, f"CLI cutout (depth, PDFNet, foreground {args.foreground}, RGBA)", "fp32",
                   f"{width}x{height} photo", r["wall_s"], r["peak_gib"])
        if r["status"]:
            print("\n".join(r["output"]))
        if args.stages:
            cmd = [sys.executable, __file__, "--foreground", args.foreground, "--child", str(photo), str(weights),
                   str(depth), str(scratch)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(f"stages failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
                return
            print(f"{'stage':<28} {'seconds':>8} {'start GiB':>10} {'peak GiB':>9} {'+peak GiB':>10} {'after GiB':>10}")
            for row in json.loads(proc.stdout.strip().splitlines()[-1]):
                if "seconds" not in row:
                    print(f"{row['stage']:<28} {'':>8} {'':>10} {row['peak_gib']:>9.2f}")
                    continue
                print(f"{row['stage']:<28} {row['seconds']:>8.1f} {row['start_gib']:>10.2f} {row['peak_gib']:>9.2f} "
                      f"{row['peak_gib'] - row['start_gib']:>10.2f} {row['after_gib']:>10.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
