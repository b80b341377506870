"""One short run on an accelerator: parity on the device, low-precision agreement, throughput, peak memory.

    python benchmarks/gpu_check.py --device cuda               # what benchmarks/gpu_check.sh runs
    python benchmarks/gpu_check.py --device cpu --quick        # the same code paths on a CPU, small sizes

Three parts, each a table:
1. parity: every family on the device in fp32 (TF32 off) against the official fixtures of
   shared/reference, with the tolerances the parity tests use;
2. agreement: fp16 and bf16 against fp32 on the same device (IoU of the masks at 0.5, max |d alpha|);
3. throughput: images/s and peak device memory for PDFNet with its Depth-Anything-V2 Small prior
   through ``segment()`` and for BiRefNet Swin-L, at 1024² and batch 1 and 8.
Weights are the deterministic synthetic ones (speed does not depend on the values).  Prints numbers,
asserts nothing; the exit status is 1 when a parity row is outside its tolerance.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from pdfnet_core import DTYPES  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Row:
    part: str
    name: str
    value: str
    ok: bool | None = None   # None: a measurement, not a check


@dataclasses.dataclass(frozen=True)
class Setup:
    device: torch.device
    reference: Path
    quick: bool


def _max_mean(a: torch.Tensor, b: torch.Tensor | np.ndarray) -> tuple[float, float]:
    b = torch.as_tensor(b)
    assert tuple(a.shape) == tuple(b.shape), (a.shape, b.shape)
    d = (a.detach().double().cpu() - b.double()).abs()
    return d.max().item(), d.mean().item()


def _parity_row(name: str, actual: torch.Tensor, expected, max_tol: float, mean_tol: float | None = None) -> Row:
    mx, mean = _max_mean(actual, expected)
    ok = mx <= max_tol and (mean_tol is None or mean <= mean_tol)
    limit = f"<= {max_tol:g}" + ("" if mean_tol is None else f", mean {mean:.2g} <= {mean_tol:g}")
    return Row("parity", name, f"max |d| {mx:.2g} ({limit})", ok)


# --------------------------------------------------------------------------------------------
# the models, built from the synthetic recipes the fixtures were made with


def pdfnet(setup: Setup, dtype=torch.float32):
    from pdfnet_core.models.pdfnet.loader import load_pdfnet
    from synthetic_pdfnet import synthetic_state_dict

    return load_pdfnet(synthetic_state_dict(setup.reference), device=setup.device, dtype=dtype, revision="v2")


def depth_anything(setup: Setup, dtype=torch.float32):
    from pdfnet_core.models.depth_anything.loader import load_depth_anything
    from synthetic_dam2 import key_shapes, synth_state_dict

    return load_depth_anything(synth_state_dict(key_shapes(setup.reference, "vits"), seed=0),
                               device=setup.device, dtype=dtype)


def birefnet(setup: Setup, variant: str, dtype=torch.float32, patch_order: str = "current"):
    from pdfnet_core.models.birefnet.loader import load_birefnet
    from synthetic_birefnet import synthetic_state_dict

    return load_birefnet(synthetic_state_dict(setup.reference, variant), patch_order=patch_order,
                         device=setup.device, dtype=dtype)


def segrefiner(setup: Setup):
    from pdfnet_core.models.segrefiner.loader import load_segrefiner
    from synthetic_segrefiner import synthetic_state_dict

    return load_segrefiner(synthetic_state_dict(setup.reference, narrow=True), device=setup.device)


# --------------------------------------------------------------------------------------------
# 1. parity in fp32


def parity(setup: Setup) -> list[Row]:
    from pdfnet_fixtures import load, model_inputs

    dev, ref = setup.device, setup.reference
    rows = []
    model = pdfnet(setup)
    for case, tol in (("case256", 2e-4), ("case1024", 1e-3))[: 1 if setup.quick else 2]:
        image, depth = model_inputs(ref, case)
        with torch.no_grad():
            logits = model(image.to(dev), depth.to(dev))
        rows.append(_parity_row(f"PDFNet {case} logits", logits, load(ref, case, "logits"), tol, 2e-5))
    del model

    dam = depth_anything(setup)
    for inp, out in (("vits_s0_sq266_input_1x3x266x266", "vits_s0_sq266_forward_1x266x266"),
                     ("vits_s0_sq518_input_1x3x518x518", "vits_s0_sq518_forward_1x518x518")):
        x = torch.from_numpy(np.load(ref / "dam2" / f"{inp}.npy")).to(dev)
        with torch.no_grad():
            y = dam(x)
        rows.append(_parity_row(f"Depth-Anything-V2 vits {out.split('_')[2]}", y,
                                np.load(ref / "dam2" / f"{out}.npy"), 1e-3, 1e-4))
    del dam

    image = torch.from_numpy(np.load(ref / "birefnet" / "input_A_256x256.npy")).to(dev)
    variants = (("swin_v1_t", "current", "einops"), ("swin_v1_t", "legacy", "legacy"))
    if not setup.quick:
        variants += (("swin_v1_l", "current", "einops"),)
    for variant, order, suffix in variants:
        net = birefnet(setup, variant, patch_order=order)
        with torch.no_grad():
            logits = net(image)
        rows.append(_parity_row(f"BiRefNet {variant} ({order} patch order) logits", logits,
                                np.load(ref / "birefnet" / f"{variant}_seed0_256x256_logits_{suffix}.npy"), 2e-4))
        net = None

    from pdfnet_core.models.segrefiner.refiner import normalize_image

    refiner = segrefiner(setup)
    folder = ref / "segrefiner"
    seg_image = torch.cat([normalize_image(i) for i in np.load(folder / "fwd_image.npy")]).to(dev)
    mask = torch.from_numpy(np.load(folder / "fwd_mask.npy")).float()[:, None].to(dev)
    t = torch.from_numpy(np.load(folder / "fwd_t.npy")).to(dev)
    with torch.inference_mode():
        logits = refiner.unet(seg_image, mask, t)
    rows.append(_parity_row("SegRefiner UNet logits (narrow)", logits, np.load(folder / "fwd_logits.npy"), 2e-4))
    return rows


# --------------------------------------------------------------------------------------------
# 2. fp16 / bf16 against fp32 on the same device


def _agreement(name: str, fp32: torch.Tensor, low: torch.Tensor) -> Row:
    a, b = fp32.float().cpu(), low.float().cpu()
    inter = ((a > 0.5) & (b > 0.5)).sum().item()
    union = ((a > 0.5) | (b > 0.5)).sum().item()
    iou = inter / union if union else 1.0
    return Row("agreement", name, f"IoU@0.5 {iou:.4f}, max |d alpha| {(a - b).abs().max().item():.3g}", iou >= 0.99)


def agreement(setup: Setup) -> list[Row]:
    from pdfnet_fixtures import model_inputs

    dev = setup.device
    case = "case256" if setup.quick else "case1024"
    image, depth = model_inputs(setup.reference, case)
    birefnet_input = torch.from_numpy(np.load(setup.reference / "birefnet" / "input_A_256x256.npy"))
    outputs: dict[str, dict[torch.dtype, torch.Tensor]] = {"pdfnet": {}, "birefnet": {}}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        model = pdfnet(setup, dtype)
        with torch.no_grad():
            outputs["pdfnet"][dtype] = model(image.to(dev, dtype), depth.to(dev, dtype)).float().sigmoid()
        del model
        net = birefnet(setup, "swin_v1_t", dtype)
        with torch.no_grad():
            outputs["birefnet"][dtype] = net(birefnet_input.to(dev, dtype)).float().sigmoid()
        net = None
    rows = []
    for family, label in (("pdfnet", f"PDFNet {case}"), ("birefnet", "BiRefNet swin_v1_t 256²")):
        for dtype, dname in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
            rows.append(_agreement(f"{label} {dname} vs fp32", outputs[family][torch.float32], outputs[family][dtype]))
    return rows


# --------------------------------------------------------------------------------------------
# 3. throughput and peak memory


def _images_per_second(run: Callable[[], object], batch: int, device: torch.device, repeats: int) -> tuple[float, float]:
    cuda = device.type == "cuda"
    with torch.no_grad():
        run()   # warm-up: kernel selection, allocator growth
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(repeats):
            run()
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - t0) / repeats
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return batch / seconds, peak


def throughput(setup: Setup, dtypes: tuple[str, ...]) -> list[Row]:
    from pdfnet_core.pipeline import segment

    dev = setup.device
    size, batches, repeats = (256, (1, 2), 1) if setup.quick else (1024, (1, 8), 3)
    rows = []
    for dname in dtypes:
        dtype = DTYPES[dname]
        model, dam = pdfnet(setup, dtype), depth_anything(setup, dtype)
        for batch in batches:
            photos = torch.rand(batch, size, size, 3)
            speed, peak = _images_per_second(
                lambda: segment(photos, model=model, depth_model=dam, size=size, batch_size=batch), batch, dev, repeats)
            rows.append(Row("throughput", f"PDFNet + depth (vits) {size}² {dname} batch {batch}",
                            f"{speed:.2f} images/s, peak {peak:.2f} GiB"))
        model = dam = None
        net = birefnet(setup, "swin_v1_t" if setup.quick else "swin_v1_l", dtype)
        for batch in batches:
            x = torch.randn(batch, 3, size, size, device=dev, dtype=dtype)
            speed, peak = _images_per_second(lambda: net(x), batch, dev, repeats)
            rows.append(Row("throughput", f"BiRefNet {net.config.name} {size}² {dname} batch {batch}",
                            f"{speed:.2f} images/s, peak {peak:.2f} GiB"))
        net = None
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


PARTS = {"parity": parity, "agreement": agreement, "throughput": throughput}


def find_reference(given: str | None) -> Path:
    for candidate in ([Path(given)] if given else []) + [ROOT.parent / "shared" / "reference", ROOT / "shared" / "reference"]:
        if (candidate / "pdfnet").is_dir():
            return candidate
    raise SystemExit("no shared/reference beside or inside the checkout: pass --reference DIR")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--reference", help="the shared/reference folder (default: beside or inside the checkout)")
    p.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["bf16", "fp32"],
                   help="precisions of the throughput part")
    p.add_argument("--quick", action="store_true", help="small sizes and models (to check the script itself)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch sees no CUDA device (torch " + torch.__version__ + ")")
        # parity is an fp32 comparison: TF32 would round the matmul inputs to 10 bits
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    setup = Setup(device, find_reference(args.reference), args.quick)
    rows: list[Row] = []
    for part in args.parts:
        t0 = time.perf_counter()
        fn = PARTS[part]
        new = fn(setup, tuple(args.dtypes)) if part == "throughput" else fn(setup)
        rows += new
        for row in new:
            mark = "" if row.ok is None else ("  ok" if row.ok else "  FAIL")
            print(f"{row.part:<11} {row.name:<52} {row.value}{mark}", flush=True)
        print(f"# {part}: {time.perf_counter() - t0:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
    print("\n| part | what | result |\n|---|---|---|")
    for row in rows:
        mark = "" if row.ok is None else (" (ok)" if row.ok else " (**FAIL**)")
        print(f"| {row.part} | {row.name} | {row.value}{mark} |")
    return 1 if any(r.ok is False and r.part == "parity" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
