"""Time and peak memory of mask refinement, foreground estimation and compositing (CPU).

    .venv/bin/python benchmarks/bench_compositing.py [--sizes 1024 4096] [--repeat 2]
                                                     [--pymatting-max 4096] [--timeout 900]

Compares pdfnet_core's torch functions with what existing packs do: PIL on 8-bit images
(MaxFilter + GaussianBlur for grow + feather, Image.composite over an ImageOps.fit background, with
the float <-> 8-bit conversions), pymatting's numba `estimate_foreground_ml`, and, for holes and
islands, scipy.ndimage.label (PIL has no equivalent). Prints a table and ratios ours/theirs; nothing
is asserted. Each case runs in a fresh process so one case's allocations and JIT threads do not
bleed into the next; memory is the peak RSS during the call minus RSS before it (first run), time is
the best of --repeat runs (one run at 4096² and above) after a small warm-up call (numba compiles
there); cpu is the process's CPU time, less sensitive than wall time to other load on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
THREADS = "2"


# --------------------------------------------------------------------------------------------
# inputs


def scene(size: int) -> dict[str, np.ndarray]:
    """A size x size image of a soft-edged blob over a colourful background, with its alpha."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    fg = np.stack([0.5 + 0.4 * np.sin(xx * 40 + c) * np.cos(yy * 30) for c in range(3)], -1)
    bg = np.stack([0.5 + 0.4 * np.cos(xx * 25 + 2 * c) * np.sin(yy * 50 + c) for c in range(3)], -1)
    r = np.hypot(yy - 0.5, xx - 0.5)
    angle = np.arctan2(yy - 0.5, xx - 0.5)
    alpha = np.clip((0.3 + 0.05 * np.sin(angle * 9) - r) * size / 12 + 0.5, 0, 1)
    alpha[(np.sin(xx * 200) * np.sin(yy * 200)) > 0.995] = 1.0  # specks: islands and holes
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    new_bg = np.stack([np.full((size * 3 // 4, size), v, np.float32) for v in (0.2, 0.5, 0.8)], -1)
    return {"image": image.astype(np.float32), "alpha": alpha.astype(np.float32), "background": new_bg}


# --------------------------------------------------------------------------------------------
# cases: name -> (setup(inputs) -> callable)


def _torch_inputs(d):
    import torch

    torch.set_num_threads(int(THREADS))
    return (torch.from_numpy(d["image"])[None], torch.from_numpy(d["alpha"])[None],
            torch.from_numpy(d["background"])[None])


def torch_grow_feather(d):
    from pdfnet_core.ops.refine import feather_mask, grow_mask

    _, a, _ = _torch_inputs(d)
    return lambda: feather_mask(grow_mask(a, 4), 2.0)


def pil_grow_feather(d):
    from PIL import Image, ImageFilter

    def run():
        m = Image.fromarray((d["alpha"] * 255 + 0.5).astype(np.uint8), "L")
        m = m.filter(ImageFilter.MaxFilter(9)).filter(ImageFilter.GaussianBlur(2))
        return np.asarray(m, dtype=np.float32) / 255
    return run


def torch_holes_islands(d):
    from pdfnet_core.ops.refine import fill_holes, remove_islands

    _, a, _ = _torch_inputs(d)
    return lambda: fill_holes(remove_islands(a, 64), 256)


def scipy_holes_islands(d):
    from scipy import ndimage

    def run():
        m = d["alpha"].copy()
        fg = m >= 0.5
        labels, _ = ndimage.label(fg, structure=np.ones((3, 3)))
        m[fg & (np.bincount(labels.ravel())[labels] < 64)] = 0
        bg = m < 0.5
        labels, _ = ndimage.label(bg)
        area = np.bincount(labels.ravel())
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        hole = bg & (area[labels] <= 256) & ~np.isin(labels, border)
        m[hole] = 1
        return m
    return run


def torch_guided(d):
    from pdfnet_core.ops.refine import guided_filter

    i, a, _ = _torch_inputs(d)
    return lambda: guided_filter(a, i, 8, 1e-3, "color")


def torch_fg_ml(d):
    from pdfnet_core.ops.foreground import estimate_foreground_ml

    i, a, _ = _torch_inputs(d)
    return lambda: estimate_foreground_ml(i, a)


def torch_fg_blur_fusion(d):
    from pdfnet_core.ops.foreground import estimate_foreground_blur_fusion

    i, a, _ = _torch_inputs(d)
    return lambda: estimate_foreground_blur_fusion(i, a)


def pymatting_fg_ml(d):
    from pymatting import estimate_foreground_ml

    return lambda: estimate_foreground_ml(d["image"], d["alpha"])


def torch_composite(d):
    from pdfnet_core.ops.composite import composite_over_image, to_rgba

    i, a, b = _torch_inputs(d)
    return lambda: (composite_over_image(i, a, b, "cover"), to_rgba(i, a))


def pil_composite(d):
    from PIL import Image, ImageOps

    def run():
        size = d["image"].shape[1], d["image"].shape[0]
        fg = Image.fromarray((d["image"] * 255 + 0.5).astype(np.uint8), "RGB")
        mask = Image.fromarray((d["alpha"] * 255 + 0.5).astype(np.uint8), "L")
        bg = ImageOps.fit(Image.fromarray((d["background"] * 255 + 0.5).astype(np.uint8), "RGB"), size)
        over = np.asarray(Image.composite(fg, bg, mask), dtype=np.float32) / 255
        rgba = fg.copy()
        rgba.putalpha(mask)
        return over, np.asarray(rgba, dtype=np.float32) / 255
    return run


def torch_pipeline(d):
    from pdfnet_core.ops.composite import composite_over_image
    from pdfnet_core.ops.foreground import estimate_foreground_ml
    from pdfnet_core.ops.refine import feather_mask, fill_holes, grow_mask, remove_islands

    i, a, b = _torch_inputs(d)

    def run():
        m = feather_mask(grow_mask(fill_holes(remove_islands(a, 64), 256), 4), 2.0)
        fg = estimate_foreground_ml(i, m).foreground
        return composite_over_image(fg, m, b, "cover")
    return run


def classic_pipeline(d):
    holes = scipy_holes_islands(d)
    from PIL import Image, ImageFilter, ImageOps
    from pymatting import estimate_foreground_ml

    def run():
        m = holes()
        pm = Image.fromarray((m * 255 + 0.5).astype(np.uint8), "L")
        pm = pm.filter(ImageFilter.MaxFilter(9)).filter(ImageFilter.GaussianBlur(2))
        m = np.asarray(pm, dtype=np.float32) / 255
        fg = estimate_foreground_ml(d["image"], m)
        size = fg.shape[1], fg.shape[0]
        fg_pil = Image.fromarray((fg * 255 + 0.5).astype(np.uint8), "RGB")
        bg = ImageOps.fit(Image.fromarray((d["background"] * 255 + 0.5).astype(np.uint8), "RGB"), size)
        return np.asarray(Image.composite(fg_pil, bg, pm), dtype=np.float32) / 255
    return run


CASES: dict[str, Callable] = {
    "torch grow+feather": torch_grow_feather,
    "PIL grow+feather (8-bit)": pil_grow_feather,
    "torch holes+islands": torch_holes_islands,
    "scipy holes+islands": scipy_holes_islands,
    "torch guided filter (color, r=8)": torch_guided,
    "torch fg multilevel": torch_fg_ml,
    "pymatting fg multilevel": pymatting_fg_ml,
    "torch fg blur-fusion": torch_fg_blur_fusion,
    "torch composite (cover) + rgba": torch_composite,
    "PIL composite (fit) + rgba (8-bit)": pil_composite,
    "torch pipeline": torch_pipeline,
    "classic pipeline (scipy+PIL+pymatting)": classic_pipeline,
}

RATIOS = [  # (label, ours, theirs)
    ("grow+feather vs PIL", "torch grow+feather", "PIL grow+feather (8-bit)"),
    ("holes+islands vs scipy", "torch holes+islands", "scipy holes+islands"),
    ("fg multilevel vs pymatting", "torch fg multilevel", "pymatting fg multilevel"),
    ("fg blur-fusion vs pymatting ml (other method)", "torch fg blur-fusion", "pymatting fg multilevel"),
    ("composite vs PIL", "torch composite (cover) + rgba", "PIL composite (fit) + rgba (8-bit)"),
    ("whole pipeline", "torch pipeline", "classic pipeline (scipy+PIL+pymatting)"),
]


# --------------------------------------------------------------------------------------------
# measurement (child process)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def child(case: str, size: int, repeat: int) -> dict:
    import ctypes

    sys.path.insert(0, str(ROOT))
    CASES[case](scene(32))()  # warm-up: imports, numba compilation, torch first-call paths
    run = CASES[case](scene(size))
    libc = ctypes.CDLL("libc.so.6")
    wall, cpu, peak = [], [], None
    for k in range(repeat):
        libc.malloc_trim(0)  # hand freed heap back, so the next peak counts only this call
        before = _status_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:  # reset the peak-RSS counter
                f.write("5")
        except OSError:
            pass
        t0, c0 = time.perf_counter(), time.process_time()
        out = run()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if k == 0:
            peak = (_status_kib("VmHWM") - before) / 1024
        del out
    return {"time_s": min(wall), "cpu_s": min(cpu), "peak_mib": peak}


# --------------------------------------------------------------------------------------------
# driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per case (best is kept)")
    ap.add_argument("--pymatting-max", type=int, default=4096,
                    help="skip pymatting (and the classic pipeline) above this side length")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per case")
    ap.add_argument("--cases", nargs="*", default=None, help="substring filter on case names")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.repeat)))
        return

    env = dict(os.environ, OMP_NUM_THREADS=THREADS, NUMBA_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS)
    # Memory is measured in a second run with a fixed mmap threshold, which makes glibc return every
    # large buffer to the OS when freed, so the peak-RSS delta counts the call's own allocations
    # rather than reused heap. It also makes every large allocation page-fault, so that run is not
    # timed.
    mem_env = dict(env, MALLOC_MMAP_THRESHOLD_="65536")

    def measure(case: str, size: int, repeat: int, environment: dict) -> dict | str:
        cmd = [sys.executable, __file__, "--child", case, str(size), "--repeat", str(repeat)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=environment, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return f"timed out (> {args.timeout} s)"
        if done.returncode != 0:
            return "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]
        return json.loads(done.stdout.strip().splitlines()[-1])

    results: dict[tuple[str, int], dict | str] = {}
    print(f"CPU: {os.cpu_count()} cores visible, {THREADS} threads per library; repeat={args.repeat}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (the machine is shared: wall times are noisy)")
    print(f"{'case':42s} {'size':>6s} {'wall s':>9s} {'cpu s':>9s} {'peak MiB':>9s}")
    for size in args.sizes:
        for case in CASES:
            if args.cases and not any(s in case for s in args.cases):
                continue
            if ("pymatting" in case or "classic" in case) and size > args.pymatting_max:
                results[case, size] = f"skipped (> --pymatting-max {args.pymatting_max})"
                print(f"{case:42s} {size:6d} {results[case, size]}")
                continue
            timed = measure(case, size, 1 if size >= 4096 else args.repeat, env)
            if isinstance(timed, dict):
                mem = measure(case, size, 1, mem_env)
                timed["peak_mib"] = mem["peak_mib"] if isinstance(mem, dict) else float("nan")
            results[case, size] = timed
            r = results[case, size]
            line = f"{r['time_s']:9.3f} {r['cpu_s']:9.3f} {r['peak_mib']:9.1f}" if isinstance(r, dict) else r
            print(f"{case:42s} {size:6d} {line}", flush=True)

    print("\nratios ours / theirs (wall time, cpu time, peak memory; < 1 means ours is faster / smaller)")
    for size in args.sizes:
        for label, ours, theirs in RATIOS:
            a, b = results.get((ours, size)), results.get((theirs, size))
            if isinstance(a, dict) and isinstance(b, dict):
                mem = a["peak_mib"] / b["peak_mib"] if b["peak_mib"] > 0.05 else float("nan")
                print(f"  {size:5d}  {label:46s} wall {a['time_s'] / b['time_s']:6.2f}x  "
                      f"cpu {a['cpu_s'] / b['cpu_s']:6.2f}x  memory {mem:6.2f}x")
            elif a is not None or b is not None:
                print(f"  {size:5d}  {label:46s} n/a ({a if not isinstance(a, dict) else b})")


if __name__ == "__main__":
    main()
