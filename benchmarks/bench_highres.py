"""Subjects at full resolution (#27): what one pass, a second pass on the subject's crop, and
boundary tiles give on large photos, and what each costs with the real PDFNet on this CPU.

Quality uses a resolution-limited stand-in network: a colour key (the subject has a colour of its
own) that recovers the subject exactly at whatever resolution it is given, run through the real
``segment()``: resized to the network side, keyed there, resized back.  That is what a perfect
network at that size can give; every loss is the resolution's.  Photos are generated (2000-6000
px) with small and large subjects and 1-2 px strands; scores against the drawn truth:

* boundary F-measure: precision and recall of the predicted edge pixels (mask >= 0.5) within
  2 px of the true edge;
* SAD: sum of absolute differences of the soft mask, in thousands (as the matting papers).

Cost: the real PDFNet architecture (synthetic weights, tests/support/synthetic_pdfnet.py) with the
Depth-Anything-V2-S prior at 1024, fp32: the time of one pass (prior + forward) measured through
``segment()``; the second pass and each tile cost one more of those (counted per case).

    python benchmarks/bench_highres.py [--no-timing] [--picture docs/images/highres_crop.png]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

import pdfnet_core  # noqa: E402
from colour_key import ColourKey  # noqa: E402
from pdfnet_core import LoadedModel, family  # noqa: E402

SUBJECT = (0.85, 0.15, 0.1)
SIZE = 1024


STAND_IN = dataclasses.replace(family("pdfnet"), module_type=ColourKey)


# --------------------------------------------------------------------------------------------
# generated photos


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    height: int
    width: int
    body: tuple[float, float, float, float]   # ellipse centre y, x and radii ry, rx, as fractions of the frame
    strands: int


CASES = [
    Case("small subject, 6000x4000", 4000, 6000, (0.55, 0.4, 0.12, 0.05), 40),
    Case("medium subject, 3000x2000", 2000, 3000, (0.5, 0.5, 0.2, 0.1), 30),
    Case("small subject, 2000x2000", 2000, 2000, (0.6, 0.6, 0.12, 0.1), 24),
    Case("large subject (4000 px wide), 6000x4000", 4000, 6000, (0.5, 0.5, 0.4, 0.34), 60),
    Case("subject fills the frame, 2500x2500", 2500, 2500, (0.5, 0.5, 0.47, 0.47), 30),
]


def scene(case: Case, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A [H,W,3] photo and its [H,W] truth: an ellipse body with a head, and curved strands
    (1-2 px) growing out of the head, over a textured background with no red in it."""
    g = torch.Generator().manual_seed(seed)
    h, w = case.height, case.width
    cy, cx, ry, rx = case.body[0] * h, case.body[1] * w, case.body[2] * h, case.body[3] * w
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None]
    truth = (((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1).float()
    hy, hr = cy - ry * 1.05, min(ry, rx) * 0.45
    truth = torch.maximum(truth, (((ys - hy) ** 2 + (xs - cx) ** 2) <= hr * hr).float())
    for _ in range(case.strands):
        angle = float(torch.rand(1, generator=g)) * math.pi + math.pi   # upwards
        bend = float(torch.randn(1, generator=g)) * 0.6
        length = hr * (0.8 + float(torch.rand(1, generator=g)) * 1.2)
        t = torch.linspace(0, 1, int(length * 3))
        a = angle + bend * t
        py = hy + torch.sin(a) * (hr * 0.9 + length * t)
        px = cx + torch.cos(a) * (hr * 0.9 + length * t)
        width = 1 + int(torch.rand(1, generator=g) < 0.5)
        for dy in range(width):
            for dx in range(width):
                iy = (py + dy).long().clamp(0, h - 1)
                ix = (px + dx).long().clamp(0, w - 1)
                truth[iy, ix] = 1
    background = torch.stack([0.25 + 0.2 * torch.sin(xs / 97.0 + ys / 211.0).expand(h, w),
                              0.45 + 0.15 * torch.cos(ys / 53.0).expand(h, w),
                              torch.full((h, w), 0.6)], -1)
    image = torch.lerp(background, torch.tensor(SUBJECT).expand(h, w, 3), truth[..., None])
    return image.contiguous(), truth


# --------------------------------------------------------------------------------------------
# measures


def _edge(binary: torch.Tensor) -> torch.Tensor:
    x = binary.float()[None, None]
    eroded = -F.max_pool2d(-x, 3, stride=1, padding=1)
    return (x - eroded)[0, 0] > 0


def _near(edge: torch.Tensor, radius: int) -> torch.Tensor:
    k = 2 * radius + 1
    x = F.max_pool2d(edge.float()[None, None], (1, k), stride=1, padding=(0, radius))
    return F.max_pool2d(x, (k, 1), stride=1, padding=(radius, 0))[0, 0] > 0


def boundary_f(mask: torch.Tensor, truth: torch.Tensor, tolerance: int = 2) -> float:
    pred, true = _edge(mask >= 0.5), _edge(truth >= 0.5)
    precision = float((pred & _near(true, tolerance)).sum()) / max(1, int(pred.sum()))
    recall = float((true & _near(pred, tolerance)).sum()) / max(1, int(true.sum()))
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def sad(mask: torch.Tensor, truth: torch.Tensor) -> float:
    return float((mask - truth).abs().sum()) / 1000


# --------------------------------------------------------------------------------------------
# runs


MODES = {"one pass": dict(second_pass=False), "two passes": dict(), "two passes + tiles": dict(boundary_tiles=True)}


def quality(cases: list[Case]) -> list[dict]:
    rows = []
    for case in cases:
        image, truth = scene(case)
        depth = torch.ones(case.height, case.width)
        for mode, options in MODES.items():
            net = LoadedModel(ColourKey(), STAND_IN)
            t0 = time.perf_counter()
            mask = pdfnet_core.segment(image, depth, net, size=SIZE, **options)[0]
            seconds = time.perf_counter() - t0
            rows.append(dict(case=case.name, mode=mode, bf=boundary_f(mask, truth), sad=sad(mask, truth),
                             forwards=net.module.forwards, seconds=seconds, mask=mask, truth=truth))
            print(f"{case.name:42s} {mode:20s} BF {rows[-1]['bf']:.3f}  SAD {rows[-1]['sad']:8.2f}  "
                  f"forwards {net.module.forwards:3d}", flush=True)
    return rows


def pass_seconds(repeat: int = 2) -> float:
    """Seconds of one pass of the real PDFNet at 1024 with its Depth-Anything-V2-S prior (fp32, CPU)."""
    from synthetic_dam2 import key_shapes, synth_state_dict
    from synthetic_pdfnet import synthetic_state_dict

    reference = ROOT.parent / "shared" / "reference"
    net = pdfnet_core.load_pdfnet(synthetic_state_dict(reference))
    depth_model = pdfnet_core.load_depth_anything(synth_state_dict(key_shapes(reference, "vits")))
    image = np.random.default_rng(0).integers(0, 255, (1536, 2048, 3), dtype=np.uint8)
    times = []
    for _ in range(repeat + 1):   # the first run warms up
        t0 = time.perf_counter()
        pdfnet_core.segment(image, model=net, depth_model=depth_model, size=SIZE, second_pass=False)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def table(rows: list[dict], per_pass: float | None) -> str:
    lines = ["| photo | method | boundary F | SAD (x1000) | model runs | added time, real PDFNet (CPU) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        extra = r["forwards"] - 1
        cost = "-" if per_pass is None else ("0" if extra == 0 else f"+{extra * per_pass:.0f} s")
        lines.append(f"| {r['case']} | {r['mode']} | {r['bf']:.3f} | {r['sad']:.1f} | {r['forwards']} | {cost} |")
    return "\n".join(lines)


def picture(rows: list[dict], path: Path, case: str, side: int = 220) -> None:
    """Truth, one pass, two passes and tiles side by side on a crop of the strands (nearest, 2x)."""
    found = [r for r in rows if r["case"] == case]
    truth = found[0]["truth"]
    # the crop: the top of the head, where the strands are
    ys, xs = torch.nonzero(truth).unbind(1)
    top = int(ys.min())
    cx = int(xs[ys < top + 40].float().mean())
    y0, x0 = max(0, top + side // 4), max(0, cx - side // 2)
    tiles = [truth[y0:y0 + side, x0:x0 + side]] + [r["mask"][y0:y0 + side, x0:x0 + side] for r in found]
    gap = torch.ones(side, 4)
    strip = torch.cat([t for tile in tiles for t in (tile, gap)][:-1], 1)
    arr = (strip.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    img = Image.fromarray(arr, "L").resize((arr.shape[1] * 2, arr.shape[0] * 2), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)
    print(f"picture: {path} (truth | {' | '.join(r['mode'] for r in found)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-timing", action="store_true", help="skip the real PDFNet timing")
    parser.add_argument("--picture", type=Path, help="write the crop picture here")
    parser.add_argument("--cases", type=int, default=len(CASES), help="the first N cases only")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = quality(CASES[:args.cases])
    for case in {r["case"] for r in rows}:
        one, two = (next(r for r in rows if r["case"] == case and r["mode"] == m) for m in ("one pass", "two passes"))
        if two["bf"] < one["bf"] - 1e-9 or two["sad"] > one["sad"] + 1e-9:
            print(f"WORSE: the second pass is worse than one pass on {case}")
    per_pass = None if args.no_timing else pass_seconds()
    if per_pass is not None:
        print(f"one pass of the real PDFNet + depth prior at {SIZE}, fp32, {torch.get_num_threads()} threads: "
              f"{per_pass:.1f} s")
    print(table(rows, per_pass))
    if args.picture is not None:
        picture(rows, args.picture, CASES[0].name)


if __name__ == "__main__":
    main()
