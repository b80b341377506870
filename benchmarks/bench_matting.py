"""Alpha quality of the matting stage on generated composites with a known alpha and foreground.

    .venv/bin/python benchmarks/bench_matting.py [--size 512] [--scenes strands fur veil keyed]
                                                 [--picture docs/images/matting_crops.png] [--timing] [--no-scenes]

Each scene is a foreground (colours F, alpha A) composited over a background B: I = A F + (1 - A) B.
The starting mask is what a segmenter working at 1/4 of the resolution gives: A area-averaged 4x
down, sharpened as a network's output is (what is under half coverage fades), bilinear 4x up, so
strands narrower than ~2 px are gone.  Three ways to a cut-out are scored against A and A F:
* mask:     the mask as alpha, the photo as colours (the plain cut-out);
* guided:   the mask guided-filtered (radius 8, eps 1e-3), colours by multi-level estimation;
* matting:  ``pdfnet_core.ops.matting.matte`` (trimap, closed-form alpha, colours, despill "auto");
* pymatting closed-form: pymatting's ``estimate_alpha_cf`` on the same trimap, solved to convergence,
            colours by its ``estimate_foreground_ml`` (no despill).
Figures: SAD (sum |a - A| / 1000), MSE (x 1e3), gradient error (Gaussian-derivative sigma 1.4,
sum of squared magnitude differences / 1000), connectivity error (Rhemann et al. 2009, thresholds
0.1 apart, / 1000), the premultiplied colour error in the edge band (mean |aF - AF| over RGB in
8-bit levels, over pixels within 3 px of where 0 < A < 1), seconds (wall and CPU, user + sys, of the
call) and peak memory.  Every measurement runs in a fresh child process.  A scene row's peak is that
process's peak RSS during the call (VmHWM reset just before it: Python, torch, the inputs and the
method), so the "mask" row is the baseline the other methods add to.  ``--timing`` adds 1024x768
and 6000x4000 runs of matte() end to end (the photo built in the child, then matted: wall and CPU
seconds of the call, the child's whole peak RSS, ``ru_maxrss`` from ``os.wait4``).  CPU seconds are the figure to compare on a shared machine: wall time
there says more about the neighbours.  Nothing is asserted; the README "Matting" table is printed
in markdown.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pdfnet_core.ops.despill import DespillConfig  # noqa: E402
from pdfnet_core.ops.foreground import estimate_foreground  # noqa: E402
from pdfnet_core.ops.matting import MattingConfig, matte  # noqa: E402
from pdfnet_core.ops.refine import gaussian_blur, grow_mask, guided_filter, label_components  # noqa: E402
from pdfnet_core.ops.trimap import TrimapConfig, make_trimap  # noqa: E402

SUPER = 4   # strands are drawn at 4x and area-averaged: antialiased sub-pixel widths


# --------------------------------------------------------------------------------------------
# scenes


def _grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")


def _background(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = _grid(h, w)
    phase = torch.rand(3, generator=g) * 6
    bg = torch.stack([0.45 + 0.3 * torch.sin(xx * 5 + phase[c]) * torch.cos(yy * 4 + phase[c] * 2) for c in range(3)], -1)
    noise = F.interpolate(torch.rand(1, 3, h // 16, w // 16, generator=g), size=(h, w), mode="bicubic")[0]
    return (bg + 0.15 * (noise.permute(1, 2, 0) - 0.5)).clamp(0, 1)


def _strands(h: int, w: int, roots: torch.Tensor, directions: torch.Tensor, lengths: torch.Tensor,
             curl: torch.Tensor, width: float) -> torch.Tensor:
    """Alpha [h,w] of curved strands drawn at SUPER x and area-averaged; positions in pixels."""
    hs, ws = h * SUPER, w * SUPER
    canvas = torch.zeros(hs * ws)
    brush = max(1, round(width * SUPER))
    steps = int(lengths.max().item() * SUPER * 1.5) + 2
    t = torch.linspace(0, 1, steps)[:, None]
    angle = directions[None] + curl[None] * t
    # positions along each strand: the integral of its turning direction
    dy = torch.sin(angle) * lengths[None] / steps
    dx = torch.cos(angle) * lengths[None] / steps
    ys = (roots[:, 0][None] + dy.cumsum(0)) * SUPER
    xs = (roots[:, 1][None] + dx.cumsum(0)) * SUPER
    for oy in range(brush):
        for ox in range(brush):
            y = (ys + oy - brush // 2).round().long()
            x = (xs + ox - brush // 2).round().long()
            ok = (y >= 0) & (y < hs) & (x >= 0) & (x < ws)
            canvas[(y[ok] * ws + x[ok])] = 1.0
    return F.avg_pool2d(canvas.view(1, 1, hs, ws), SUPER)[0, 0]


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    d = torch.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return ((1 - d) * min(ry, rx) + 0.5).clamp(0, 1)  # a 1-pixel antialiased edge


def _hair_colour(h: int, w: int, base: tuple[float, float, float], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = _grid(h, w)
    shade = 0.85 + 0.15 * torch.sin(xx * 40 + yy * 13)
    noise = F.interpolate(torch.rand(1, 1, h // 4, w // 4, generator=g), size=(h, w), mode="bilinear")[0, 0]
    return (torch.tensor(base) * (shade + 0.2 * (noise - 0.5))[..., None]).clamp(0, 1)


def scene_strands(s: int) -> dict:
    h = w = s
    g = torch.Generator().manual_seed(1)
    body = _ellipse(h, w, 0.75 * h, 0.5 * w, 0.35 * h, 0.28 * w)
    n = 160
    theta = -math.pi / 2 + (torch.rand(n, generator=g) - 0.5) * 2.4
    roots = torch.stack([0.75 * h + 0.33 * h * torch.sin(theta), 0.5 * w + 0.26 * w * torch.cos(theta)], 1)
    hair = _strands(h, w, roots, theta + (torch.rand(n, generator=g) - 0.5) * 0.6,
                    s * (0.08 + 0.14 * torch.rand(n, generator=g)), (torch.rand(n, generator=g) - 0.5) * 2.0, 0.75)
    alpha = torch.maximum(body, hair)
    fg = _hair_colour(h, w, (0.55, 0.35, 0.2), 2)
    return {"alpha": alpha, "fg": fg, "bg": _background(h, w, 3)}


def scene_fur(s: int) -> dict:
    h = w = s
    g = torch.Generator().manual_seed(4)
    body = _ellipse(h, w, 0.5 * h, 0.5 * w, 0.3 * h, 0.34 * w)
    n = 1400
    theta = torch.rand(n, generator=g) * 2 * math.pi
    roots = torch.stack([0.5 * h + 0.29 * h * torch.sin(theta), 0.5 * w + 0.33 * w * torch.cos(theta)], 1)
    fur = _strands(h, w, roots, theta + (torch.rand(n, generator=g) - 0.5) * 0.8,
                   s * (0.015 + 0.03 * torch.rand(n, generator=g)), (torch.rand(n, generator=g) - 0.5) * 1.5, 0.6)
    alpha = torch.maximum(body, fur)
    fg = _hair_colour(h, w, (0.9, 0.85, 0.75), 5)
    return {"alpha": alpha, "fg": fg, "bg": _background(h, w, 6) * 0.6}


def scene_veil(s: int) -> dict:
    """A solid object under a semi-transparent veil (alpha 0.3..0.6) with a soft outline."""
    h = w = s
    core = _ellipse(h, w, 0.55 * h, 0.5 * w, 0.2 * h, 0.18 * w)
    yy, xx = _grid(h, w)
    veil = _ellipse(h, w, 0.45 * h, 0.5 * w, 0.38 * h, 0.36 * w) * (0.45 + 0.15 * torch.sin(xx * 9) * torch.cos(yy * 7))
    alpha = torch.maximum(core, gaussian_blur(veil, 1.0))
    fg = torch.where(core[..., None] > 0.5, _hair_colour(h, w, (0.2, 0.3, 0.8), 7),
                     torch.tensor([0.95, 0.95, 0.9]).expand(h, w, 3))
    return {"alpha": alpha, "fg": fg, "bg": _background(h, w, 8)}


def scene_keyed(s: int) -> dict:
    """A smooth object with strands on a green screen; the screen's light spills onto the subject
    near its edge (in the photo, not in the true foreground colours)."""
    h = w = s
    g = torch.Generator().manual_seed(9)
    body = _ellipse(h, w, 0.6 * h, 0.5 * w, 0.3 * h, 0.25 * w)
    n = 90
    theta = -math.pi / 2 + (torch.rand(n, generator=g) - 0.5) * 2.0
    roots = torch.stack([0.6 * h + 0.28 * h * torch.sin(theta), 0.5 * w + 0.23 * w * torch.cos(theta)], 1)
    hair = _strands(h, w, roots, theta, s * (0.06 + 0.1 * torch.rand(n, generator=g)),
                    (torch.rand(n, generator=g) - 0.5) * 1.5, 0.75)
    alpha = torch.maximum(body, hair)
    fg = _hair_colour(h, w, (0.75, 0.55, 0.45), 10)
    yy, xx = _grid(h, w)
    bg = torch.stack([0.12 + 0.03 * yy, 0.62 + 0.06 * xx, 0.22 + 0.02 * yy], -1)
    edge_near = 1 - grow_mask((alpha > 0.99).float()[None], -6)[0]   # reflected light near the rim
    spill = 0.18 * gaussian_blur(edge_near, 3.0).clamp(0, 1)
    green = torch.tensor([-0.5, 1.0, -0.5])
    seen_fg = (fg + spill[..., None] * green).clamp(0, 1)
    return {"alpha": alpha, "fg": fg, "bg": bg, "seen_fg": seen_fg}


SCENES = {"strands": scene_strands, "fur": scene_fur, "veil": scene_veil, "keyed": scene_keyed}


def compose(d: dict) -> torch.Tensor:
    a = d["alpha"][..., None]
    return (a * d.get("seen_fg", d["fg"]) + (1 - a) * d["bg"]).clamp(0, 1)


def low_res_mask(alpha: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """What a segmenter at 1/``factor`` resolution gives: coverage, sharpened, upsampled."""
    h, w = alpha.shape
    small = F.avg_pool2d(alpha[None, None], factor)
    sharp = ((small - 0.5) * 2.5 + 0.5).clamp(0, 1)
    return F.interpolate(sharp, size=(h, w), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)


# --------------------------------------------------------------------------------------------
# errors


def sad(a: torch.Tensor, gt: torch.Tensor) -> float:
    return float((a - gt).abs().sum()) / 1000


def mse(a: torch.Tensor, gt: torch.Tensor) -> float:
    return float(((a - gt) ** 2).mean()) * 1000


def _gauss_grad(x: torch.Tensor, sigma: float = 1.4) -> torch.Tensor:
    r = math.ceil(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-t * t / (2 * sigma * sigma))
    g = g / g.sum()
    dg = -t * g / (sigma * sigma)
    x = x[None, None]
    gx = F.conv2d(F.conv2d(F.pad(x, (r, r, r, r), mode="replicate"), dg.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
    gy = F.conv2d(F.conv2d(F.pad(x, (r, r, r, r), mode="replicate"), g.view(1, 1, 1, -1)), dg.view(1, 1, -1, 1))
    return torch.sqrt(gx * gx + gy * gy)[0, 0]


def gradient_error(a: torch.Tensor, gt: torch.Tensor) -> float:
    return float(((_gauss_grad(a) - _gauss_grad(gt)) ** 2).sum()) / 1000


def _largest_component(binary: torch.Tensor) -> torch.Tensor:
    labels = label_components(binary[None], 4)[0]
    if not bool(binary.any()):
        return binary
    values, counts = labels[labels >= 0].unique(return_counts=True)
    return labels == values[counts.argmax()]


def connectivity_error(a: torch.Tensor, gt: torch.Tensor, step: float = 0.1) -> float:
    thresholds = torch.arange(0, 1 + step, step)
    level = torch.full_like(a, -1)
    for i in range(1, len(thresholds)):
        omega = _largest_component((a >= thresholds[i]) & (gt >= thresholds[i]))
        level[(level == -1) & ~omega] = thresholds[i - 1]
    level[level == -1] = 1
    pred_d, gt_d = a - level, gt - level
    pred_phi = 1 - pred_d * (pred_d >= 0.15)
    gt_phi = 1 - gt_d * (gt_d >= 0.15)
    return float((pred_phi - gt_phi).abs().sum()) / 1000


def edge_band(gt: torch.Tensor, pixels: int = 3) -> torch.Tensor:
    soft = ((gt > 0.002) & (gt < 0.998)).float()
    return grow_mask(soft[None], pixels)[0] > 0.5


def colour_error(a: torch.Tensor, fg: torch.Tensor, gt: torch.Tensor, gt_fg: torch.Tensor, band: torch.Tensor) -> float:
    diff = (a[..., None] * fg - gt[..., None] * gt_fg).abs().mean(-1)
    return float(diff[band].mean()) * 255


# --------------------------------------------------------------------------------------------
# methods


def method_mask(image, mask, network):
    return mask, image


def method_guided(image, mask, network):
    alpha = guided_filter(mask[None], image[None], radius=8, eps=1e-3)[0]
    return alpha, estimate_foreground(image[None], alpha[None], "multilevel").foreground[0]


def matting_config(network: int, fine_hair: float = 0.0) -> MattingConfig:
    return MattingConfig(trimap=TrimapConfig(network_size=network, fine_hair=fine_hair),
                         despill=DespillConfig(key="auto"))


def method_matting(image, mask, network):
    alpha, fg = matte(image[None], mask[None], matting_config(network))
    return alpha[0], fg[0]


def method_matting_hair(image, mask, network):
    alpha, fg = matte(image[None], mask[None], matting_config(network, fine_hair=1.0))
    return alpha[0], fg[0]


def method_pymatting(image, mask, network):
    """The well-kept library's closed-form matting (Levin et al., pymatting's own preconditioned solver run
    to its tolerance) on the very trimap ``matte`` uses, colours by its multi-level estimate: the
    same model, solved to convergence on the CPU."""
    from pymatting import estimate_alpha_cf, estimate_foreground_ml   # the comparison's library (test toolchain)

    trimap = make_trimap(mask[None], matting_config(network).trimap)[0]
    alpha = estimate_alpha_cf(image.double().numpy(), trimap.double().numpy())
    fg = estimate_foreground_ml(image.double().numpy(), alpha)
    return torch.from_numpy(alpha).float().clamp(0, 1), torch.from_numpy(fg).float()


METHODS = {"mask": method_mask, "guided": method_guided, "matting": method_matting,
           "matting, fine hair": method_matting_hair, "pymatting closed-form": method_pymatting}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reset_peak_rss() -> bool:
    """Start this process's peak RSS (VmHWM) afresh (Linux: clear_refs 5); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_gib() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 2**20


def timed(fn) -> tuple[object, float, float, float | None]:
    """(fn(), wall seconds, CPU seconds, peak RSS in GiB while it ran or None) of one call.  The peak
    is the whole process's (Python, torch, the inputs) during the call: the scene built before it,
    at 4x supersampling, would otherwise hide what the methods themselves take."""
    reset = _reset_peak_rss()
    cpu, t0 = _cpu_seconds(), time.perf_counter()
    out = fn()
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu
    return out, seconds, cpu, _peak_rss_gib() if reset else None


def in_child(args: list[str], threads: int) -> dict:
    """Run this script with ``args`` in a fresh process; its JSON line plus its peak RSS in GiB.

    ``os.wait4`` gives the rusage of that one child (``RUSAGE_CHILDREN`` is the maximum over every
    child waited for, so it cannot tell one method's peak from an earlier one's)."""
    proc = subprocess.Popen([sys.executable, __file__, "--threads", str(threads), *args], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed with exit status {proc.returncode}")
    row = json.loads(out.decode().strip().splitlines()[-1])
    row["process_peak_gib"] = usage.ru_maxrss / 2**20   # KiB on Linux
    if row.get("peak_gib") is None:
        row["peak_gib"] = row["process_peak_gib"]
    return row


def score_one(name: str, method: str, size: int) -> dict:
    """The child's side of one (scene, method) measurement."""
    d = SCENES[name](size)
    image = compose(d)
    mask = low_res_mask(d["alpha"])
    gt, gt_fg = d["alpha"], d["fg"]
    (alpha, fg), seconds, cpu, peak = timed(lambda: METHODS[method](image, mask, size // 4))
    return {"scene": name, "method": method, "sad": sad(alpha, gt), "mse": mse(alpha, gt),
            "grad": gradient_error(alpha, gt), "conn": connectivity_error(alpha, gt),
            "colour": colour_error(alpha, fg, gt, gt_fg, edge_band(gt)), "seconds": seconds, "cpu": cpu,
            "peak_gib": peak}


def evaluate(size: int, names: list[str], methods: list[str], threads: int) -> list[dict]:
    rows = []
    for name in names:
        for method in methods:
            r = in_child(["--child-score", name, method, "--size", str(size)], threads)
            rows.append(r)
            print(f"{name:8s} {method:21s} SAD {r['sad']:7.2f}  MSE {r['mse']:6.2f}  grad {r['grad']:7.2f}  "
                  f"conn {r['conn']:7.2f}  colour {r['colour']:6.2f}  {r['seconds']:6.2f} s  {r['cpu']:6.2f} s CPU  "
                  f"{r['peak_gib']:5.2f} GiB", flush=True)
    return rows


def markdown(rows: list[dict], size: int) -> str:
    lines = [f"| scene ({size}²) | method | SAD | MSE ×1e3 | gradient | connectivity | edge colour | s | CPU s | "
             "peak GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scene']} | {r['method']} | {r['sad']:.2f} | {r['mse']:.2f} | {r['grad']:.2f} | "
                     f"{r['conn']:.2f} | {r['colour']:.1f} | {r['seconds']:.2f} | {r['cpu']:.2f} | "
                     f"{r['peak_gib']:.2f} |")
    return "\n".join(lines)


def summary(rows: list[dict], scenes=("strands", "fur", "keyed")) -> str:
    out = []
    by = {(r["scene"], r["method"]): r for r in rows}
    methods = sorted({r["method"] for r in rows} - {"mask"}, key=list(METHODS).index)
    for method in methods:
        have = [s for s in scenes if (s, method) in by and (s, "mask") in by]
        if not have:
            continue
        ratio = sum(by[s, method]["sad"] for s in have) / sum(by[s, "mask"]["sad"] for s in have)
        worse = [s for s in {r["scene"] for r in rows} if (s, method) in by and by[s, method]["sad"] > by[s, "mask"]["sad"]]
        out.append(f"{method}: SAD over {'+'.join(have)} = {ratio:.2f}x the mask's; scenes worse than the mask: "
                   f"{', '.join(sorted(worse)) or 'none'}")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# timing at photo sizes


def photo(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A photo-sized composite and its mask: the 512² strands scene stretched, so the band scales
    like a real photo's."""
    d = scene_strands(512)
    image = F.interpolate(compose(d).permute(2, 0, 1)[None], size=(h, w), mode="bilinear")[0]
    mask = F.interpolate(low_res_mask(d["alpha"])[None, None], size=(h, w), mode="bilinear")[0, 0]
    return image.permute(1, 2, 0).contiguous(), mask


def time_one(h: int, w: int) -> dict:
    """The child's side of one end-to-end timing: build the photo, matte it."""
    image, mask = photo(h, w)
    _, seconds, cpu, _ = timed(lambda: matte(image[None], mask[None], matting_config(1024)))
    return {"size": f"{w}x{h}", "seconds": seconds, "cpu": cpu}


def timing(sizes: list[tuple[int, int]], threads: int) -> list[dict]:
    rows = []
    for h, w in sizes:
        r = in_child(["--child-time", str(h), str(w)], threads)
        rows.append(r)
        print(f"matte {r['size']} end to end: {r['seconds']:.1f} s wall, {r['cpu']:.1f} s CPU ({threads} threads), "
              f"peak RSS {r['process_peak_gib']:.2f} GiB", flush=True)
    print("\n| photo (matting, end to end) | s | CPU s | peak GiB |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['seconds']:.1f} | {r['cpu']:.1f} | {r['process_peak_gib']:.2f} |")
    return rows


def crops_picture(size: int, path: Path) -> None:
    """Before/after crops of the strands and keyed scenes over a new background, side by side."""
    from PIL import Image

    tiles = []
    new_bg = torch.tensor([0.95, 0.95, 0.97])
    for name in ("strands", "keyed"):
        d = SCENES[name](size)
        image, mask = compose(d), low_res_mask(d["alpha"])
        alpha, fg = method_matting(image, mask, size // 4)
        y0, x0, c = size // 10, size // 4, size // 2
        row = []
        for a, f in ((mask, image), (alpha, fg), (d["alpha"], d["fg"])):
            comp = a[..., None] * f + (1 - a[..., None]) * new_bg
            row.append(comp[y0:y0 + c, x0:x0 + c])
        tiles.append(torch.cat(row, 1))
    grid = torch.cat(tiles, 0)
    Image.fromarray((grid.clamp(0, 1) * 255 + 0.5).byte().numpy()).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB): rows {', '.join(('strands', 'keyed'))}; columns: "
          "mask cut-out, matting, truth")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--picture", type=Path, help="write a before/after crop picture here")
    p.add_argument("--timing", action="store_true", help="also time matte() at 1024x768 and 6000x4000")
    p.add_argument("--no-scenes", action="store_true", help="skip the quality table (with --timing)")
    p.add_argument("--child-score", nargs=2, metavar=("SCENE", "METHOD"), help=argparse.SUPPRESS)
    p.add_argument("--child-time", nargs=2, type=int, metavar=("H", "W"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_score:
        print(json.dumps(score_one(*args.child_score, args.size)))
        return
    if args.child_time:
        print(json.dumps(time_one(*args.child_time)))
        return
    if args.picture:
        crops_picture(args.size, args.picture)
    if not args.no_scenes:
        rows = evaluate(args.size, args.scenes, args.methods, args.threads)
        print()
        print(markdown(rows, args.size))
        print()
        print(summary(rows))
    if args.timing:
        timing([(768, 1024), (4000, 6000)], args.threads)


if __name__ == "__main__":
    main()
