"""The GPU check: parity, precision agreement, speed, residency, syncs and torch.compile on one device.

benchmarks/gpu_check.sh runs each section below as its own process under a time limit and calls
``report`` after each, so what finished is always written; run by hand:

    python benchmarks/gpu_check.py run parity --device cuda --reference .gpu_reference --work /tmp/w
    python benchmarks/gpu_check.py report --work /tmp/w --out gpu_out

Sections (all on the given device; weights are the deterministic synthetic ones the fixtures were
made with, built from the reference recipes by tests/support/synthetic_*.py):
  env         python, torch, CUDA, the device, the default TF32 flags, the fixtures copy
  parity      every family in fp32 with TF32 off, against the official-code fixtures, with the
              tolerances of tests/parity; TF32 is switched back on afterwards (asserted)
  agreement   fp16 and bf16 against fp32: IoU of the masks at 0.5 and max |d alpha|
  throughput  images/s of PDFNet alone and of pdfnet_core.segment() (PDFNet + Depth-Anything-V2
              Small) at 1024², batch 1, 8, 16, bf16; peak VRAM per row
  node        the node path (nodes.adapters.segment_images) on a 16-frame batch with a runtime that
              keeps models resident as ComfyUI does, counting weight uploads per run
  syncs       host-device syncs of one segment() call and one PDFNet forward
              (torch.cuda.set_sync_debug_mode("warn"))
  compile     one torch.compile of the PDFNet forward: compile time and images/s after
``--quick``: small sizes and one repeat, to check the script itself (a CPU dry run).
Nothing here downloads or installs anything.  Only the standard library is imported at module
level, so ``report`` runs without torch.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import statistics
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
for _folder in (ROOT, ROOT / "tests" / "support", ROOT / "benchmarks"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

SECTIONS = ("env", "parity", "agreement", "throughput", "node", "matting", "syncs", "compile")
CUDA_ONLY = ("syncs", "compile")
SIZE, BATCHES, NODE_FRAMES = 1024, (1, 8, 16), 16
QUICK_SIZE, QUICK_BATCHES, QUICK_FRAMES = 64, (2,), 2


@dataclasses.dataclass(frozen=True)
class Goal:
    key: str
    what: str
    images_per_s: float


# H100-class targets; the report puts the measured numbers beside them.
GOALS = (
    Goal("segment_b8", "segment() PDFNet + DAv2-S, bf16, 1024², batch 8", 60.0),
    Goal("model", "PDFNet model alone, bf16, 1024², best batch", 120.0),
    Goal("node", "node path, 16 frames 1024², bf16, warm", 25.0),
)


class SectionTimeout(BaseException):
    """The shell's time limit for this section has come (SIGTERM from timeout)."""


# --------------------------------------------------------------------------------------------
# one section's results, written after every row so that a killed section leaves what it had


class Section:
    def __init__(self, name: str, work: Path):
        self.name, self.path = name, work / "sections" / f"{name}.json"
        self.t0 = time.perf_counter()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {"section": name, "status": "running", "reason": "", "rows": [],
                                     "started": time.time(), "seconds": None, "peak_vram_gib": None}
        self.save()

    def emit(self, name: str, value: str, ok: bool | None = None, goal: str | None = None, **numbers) -> None:
        row = {"name": name, "value": value, "ok": ok, "goal": goal, "numbers": numbers}
        self.data["rows"].append(row)
        mark = "" if ok is None else ("  ok" if ok else "  FAIL")
        print(f"{self.name:<10} {time.perf_counter() - self.t0:6.1f}s {name:<56} {value}{mark}", flush=True)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


# --------------------------------------------------------------------------------------------
# the check's context: device, fixtures, synthetic weights, timing


class Check:
    def __init__(self, device: str, reference: Path, quick: bool, cache: Path | None, limit: float):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise SystemExit(f"--device {device}, but torch {torch.__version__} sees no CUDA device")
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.cuda = self.device.type == "cuda"
        self.reference, self.quick, self.cache = Path(reference), quick, cache
        self.deadline = time.monotonic() + limit
        self.section_peak = 0.0

    # ---- time and memory

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.sync()
            self.section_peak = max(self.section_peak, self.torch.cuda.max_memory_allocated() / 2**30)
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        if not self.cuda:
            return None
        self.sync()
        peak = self.torch.cuda.max_memory_allocated() / 2**30
        self.section_peak = max(self.section_peak, peak)
        return peak

    def free(self) -> None:
        import gc

        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def measure(self, fn: Callable[[], object], batch: int, *, min_seconds: float = 2.0, max_repeats: int = 20,
                min_repeats: int = 3) -> dict[str, Any]:
        """images/s from the median of repeated calls after one warm-up (quick: one call, no warm-up)."""
        self.reset_peak()
        if not self.quick:
            fn()
            self.sync()
        times: list[float] = []
        start = time.perf_counter()
        want = 1 if self.quick else min_repeats
        while len(times) < want or (not self.quick and time.perf_counter() - start < min_seconds
                                    and len(times) < max_repeats and self.time_left() > 20):
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        peak = self.peak_gib()
        return {"images_per_s": batch / median, "ms_per_batch": 1e3 * median, "repeats": len(times),
                "peak_vram_gib": peak}

    # ---- synthetic weights (cached on disk across the section processes)

    def state(self, name: str) -> dict:
        import synthetic_birefnet
        import synthetic_dam2
        import synthetic_pdfnet
        import synthetic_segrefiner

        ref = self.reference

        def keys(path: Path) -> dict[str, list[int]]:
            return {k: v["shape"] for k, v in json.loads(path.read_text()).items()}

        # (recipe module, key file, tensor(key, shape)): the recipes of tests/support, one tensor per key
        recipes: dict[str, tuple[Any, Path, Callable[[str, list[int]], Any]]] = {
            "pdfnet": (synthetic_pdfnet, ref / "pdfnet" / "keys.json", synthetic_pdfnet.synthetic_tensor),
            "dam2_vits": (synthetic_dam2, ref / "dam2" / "keys_vits.json",
                          lambda k, shape: synthetic_dam2.synth_weight(k, shape, 0)),
            "birefnet_swin_v1_t": (synthetic_birefnet, ref / "birefnet" / "keys_swin_v1_t.json",
                                   synthetic_birefnet.synthetic_tensor),
            "birefnet_swin_v1_l": (synthetic_birefnet, ref / "birefnet" / "keys_swin_v1_l.json",
                                   synthetic_birefnet.synthetic_tensor),
            "segrefiner_narrow": (synthetic_segrefiner, ref / "segrefiner" / "keys_narrow.json",
                                  synthetic_segrefiner.synthetic_tensor),
            "segrefiner_full": (synthetic_segrefiner, ref / "segrefiner" / "keys.json",
                                synthetic_segrefiner.synthetic_tensor),
        }
        module, key_file, tensor = recipes[name]

        def build() -> dict:
            # every key has its own generator, so the order does not matter: build them in parallel
            # (torch releases the GIL while it draws), seconds instead of tens of seconds for Swin-L
            from concurrent.futures import ThreadPoolExecutor

            shapes = keys(key_file)
            with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
                return dict(zip(shapes, pool.map(lambda item: tensor(*item), shapes.items())))

        if self.cache is None or name in ("birefnet_swin_v1_l", "segrefiner_full"):   # used once: not kept
            return build()
        digest = hashlib.sha256(key_file.read_bytes() + Path(module.__file__).read_bytes()).hexdigest()[:16]
        path = self.cache / f"{name}-{digest}.pt"
        if path.is_file():
            try:
                return self.torch.load(path, map_location="cpu", weights_only=True)
            except Exception:   # a torn file of a killed run: build it again
                path.unlink(missing_ok=True)
        state = build()
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        self.torch.save(state, tmp)
        tmp.replace(path)
        return state

    def pdfnet(self, dtype=None, device=None, revision: str = "v2"):
        from pdfnet_core import load_pdfnet

        return load_pdfnet(self.state("pdfnet"), device=device or self.device, dtype=dtype or self.torch.float32,
                           revision=revision)

    def depth(self, dtype=None, device=None):
        from pdfnet_core import load_depth_anything

        return load_depth_anything(self.state("dam2_vits"), device=device or self.device,
                                   dtype=dtype or self.torch.float32)

    def birefnet(self, variant: str, dtype=None, patch_order: str = "current"):
        from pdfnet_core import load_birefnet

        return load_birefnet(self.state(f"birefnet_{variant}"), patch_order=patch_order, device=self.device,
                             dtype=dtype or self.torch.float32)

    def segrefiner(self, narrow: bool = True):
        from pdfnet_core import load_segrefiner

        return load_segrefiner(self.state("segrefiner_narrow" if narrow else "segrefiner_full"), device=self.device)

    # ---- fixtures

    def npy(self, name: str):
        import numpy as np

        return np.load(self.reference / f"{name}.npy")

    def pdfnet_inputs(self, case: str):
        from pdfnet_fixtures import model_inputs   # rebuilds the float inputs, checks their hashes

        return model_inputs(self.reference, case)

    def photos(self, batch: int, size: int):
        """A ComfyUI IMAGE batch [B,H,W,3] float32 in 0..1 on the CPU (smooth, not noise)."""
        torch = self.torch
        g = torch.Generator().manual_seed(batch * 1000 + size)
        low = torch.rand(batch, 3, 8, 8, generator=g)
        return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear").permute(0, 2, 3, 1).contiguous()

    def network_inputs(self, batch: int, size: int, dtype):
        """A normalised image and a depth map for PDFNet, on the device."""
        from pdfnet_core.ops.images import imagenet_normalize

        photos = self.photos(batch, size).permute(0, 3, 1, 2)
        image = imagenet_normalize(photos).to(self.device, dtype)
        depth = photos.mean(1, keepdim=True).to(self.device, dtype)
        return image, depth


def tf32_state() -> dict[str, Any]:
    import torch

    return {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


@contextlib.contextmanager
def tf32_off():
    """fp32 parity: TF32 would round the matmul and convolution inputs to 10 bits.  Restored on exit."""
    import torch

    before = tf32_state()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield before
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before["matmul"]
        torch.backends.cudnn.allow_tf32 = before["cudnn"]
        torch.set_float32_matmul_precision(before["float32_matmul_precision"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# --------------------------------------------------------------------------------------------
# env


def section_env(chk: Check, out: Section) -> None:
    import platform

    import torch

    out.emit("python", f"{platform.python_version()} at {sys.executable}")
    out.emit("torch", f"{torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
             f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'none'}), "
             f"{torch.get_num_threads()} CPU threads of {os.cpu_count()}")
    if chk.cuda:
        props = torch.cuda.get_device_properties(chk.device)
        out.emit("device", f"{props.name}, {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, "
                 f"capability {props.major}.{props.minor}", total_gib=props.total_memory / 2**30)
        out.emit("bf16", "supported" if torch.cuda.is_bf16_supported() else "NOT supported")
    else:
        out.emit("device", f"{chk.device} ({platform.processor() or platform.machine()})")
    out.emit("TF32 defaults", ", ".join(f"{k} {v}" for k, v in tf32_state().items()), **tf32_state())
    from importlib import metadata

    versions = {}
    for name in ("numpy", "pillow", "safetensors", "torchvision", "huggingface_hub", "tqdm", "triton"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    out.emit("packages", ", ".join(f"{k} {v or 'ABSENT'}" for k, v in versions.items()), **versions)
    from pdfnet_core import __version__
    from pdfnet_core.models.birefnet import deform_conv

    out.emit("pdfnet_core", f"{__version__}; BiRefNet deformable conv: {deform_conv.DEFAULT_BACKEND}")
    from gpu_check_fixtures import verify

    problems = verify(chk.reference)
    manifest = json.loads((chk.reference / "MANIFEST.json").read_text()) if not problems else {}
    out.emit("fixtures", f"{chk.reference}: " + (f"{len(manifest['files'])} files, {manifest['bytes'] / 2**20:.1f} MiB, "
                                                 "hashes match" if not problems else "; ".join(problems[:3])),
             ok=not problems)
    if problems:   # every later section reads them: stop here (gpu_check.sh stops when env fails)
        raise RuntimeError(f"the fixtures in {chk.reference} are missing or damaged ({len(problems)} problems)")


# --------------------------------------------------------------------------------------------
# parity (fp32, TF32 off)


def _max_mean(actual, expected) -> tuple[float, float]:
    import torch

    a = actual.detach().double().cpu()
    b = torch.as_tensor(expected).double()
    assert tuple(a.shape) == tuple(b.shape), (tuple(a.shape), tuple(b.shape))
    d = (a - b).abs()
    return d.max().item(), d.mean().item()


def _close(out: Section, name: str, actual, expected, max_tol: float, mean_tol: float | None = None) -> None:
    mx, mean = _max_mean(actual, expected)
    ok = mx <= max_tol and (mean_tol is None or mean <= mean_tol)
    value = f"max |d| {mx:.2g} (<= {max_tol:g})" + ("" if mean_tol is None else f", mean {mean:.2g} (<= {mean_tol:g})")
    out.emit(name, value, ok, max_abs=mx, mean_abs=mean, max_tol=max_tol, mean_tol=mean_tol)


def _sides(out: Section, name: str, sides, load: Callable[[int], Any], tol: float = 2e-4) -> None:
    worst = max(_max_mean(side, load(k))[0] for k, side in enumerate(sides, start=1))
    out.emit(name, f"max |d| {worst:.2g} (<= {tol:g})", worst <= tol, max_abs=worst, max_tol=tol)


def _final_masks(out: Section, name: str, ours, theirs, fragile) -> None:
    import numpy as np

    ours = np.asarray(ours).astype(np.uint8).reshape(theirs.shape)
    allowed = {tuple(p) for p in fragile}
    differ = [tuple(p) for p in np.argwhere(ours != theirs).tolist()]
    bad = [p for p in differ if p not in allowed]
    out.emit(name, f"{len(bad)} pixels differ outside the {len(allowed)} listed fragile ones "
             f"({len(differ) - len(bad)} fragile differ)", not bad, non_fragile=len(bad), fragile=len(differ) - len(bad))


def section_parity(chk: Check, out: Section) -> None:
    import torch

    with tf32_off() as before:
        out.emit("TF32", f"off for parity (was: matmul {before['matmul']}, cudnn {before['cudnn']})")
        _parity(chk, out)
    after = tf32_state()
    assert after == before, f"TF32 not restored after parity: {after} != {before}"
    if chk.cuda:   # the flags read back, not only the dict: what later work in this process runs with
        assert torch.backends.cuda.matmul.allow_tf32 == before["matmul"]
        assert torch.backends.cudnn.allow_tf32 == before["cudnn"]
    out.emit("TF32 restored", f"matmul {after['matmul']}, cudnn {after['cudnn']}, "
             f"float32_matmul_precision {after['float32_matmul_precision']}", True)


def _parity(chk: Check, out: Section) -> None:
    import json as _json

    import torch

    dev, skipped = chk.device, []

    def pdfnet_case(model, case: str, max_tol: float, label: str) -> None:
        image, depth = chk.pdfnet_inputs(case)
        with torch.inference_mode():
            result = model(image.to(dev), depth.to(dev), with_sides=True)
        _close(out, f"PDFNet {label} logits", result.logits, chk.npy(f"pdfnet/{case}/logits"), max_tol, 2e-5)
        _sides(out, f"PDFNet {label} side logits 1-5", result.sides, lambda k: chk.npy(f"pdfnet/{case}/side_{k}"))

    model = chk.pdfnet()
    pdfnet_case(model, "case256", 2e-4, "v2 256²")
    if chk.quick:
        skipped.append("PDFNet v2 1024²")
    else:
        pdfnet_case(model, "case1024", 1e-3, "v2 1024²")
    del model
    if chk.quick:
        skipped.append("PDFNet v1")
    else:
        pdfnet_case(chk.pdfnet(revision="v1"), "v1", 2e-4, "v1 (802b477) 256²")
    chk.free()

    from pdfnet_core import estimate_depth

    dam = chk.depth()
    cases = (("sq266", "vits_s0_sq266_input_1x3x266x266", "vits_s0_sq266_forward_1x266x266"),
             ("sq518", "vits_s0_sq518_input_1x3x518x518", "vits_s0_sq518_forward_1x518x518"))
    for label, inp, expected in cases[: 1 if chk.quick else 2]:
        with torch.inference_mode():
            y = dam(torch.from_numpy(chk.npy(f"dam2/{inp}")).to(dev))
        _close(out, f"Depth-Anything-V2 vits forward {label}", y, chk.npy(f"dam2/{expected}"), 1e-3, 1e-4)
    if chk.quick:
        skipped.append("Depth-Anything-V2 518² and estimate_depth")
    else:
        (depth,) = estimate_depth(chk.npy("dam2/vits_s0_image_300x400_rgb_u8"), dam)
        _close(out, "Depth-Anything-V2 vits estimate_depth 300x400", depth, chk.npy("dam2/vits_s0_infer_300x400"),
               1e-3, 1e-4)
    del dam
    chk.free()

    if chk.quick:
        skipped.append("BiRefNet")
    else:
        image = torch.from_numpy(chk.npy("birefnet/input_A_256x256")).to(dev)
        for variant, order, suffix in (("swin_v1_t", "current", "einops"), ("swin_v1_t", "legacy", "legacy"),
                                       ("swin_v1_l", "current", "einops")):
            net = chk.birefnet(variant, patch_order=order)
            with torch.inference_mode():
                logits = net(image)
            _close(out, f"BiRefNet {variant} ({order} patch order) logits", logits,
                   chk.npy(f"birefnet/{variant}_seed0_256x256_logits_{suffix}"), 2e-4)
            del net
            chk.free()

    from pdfnet_core.models.segrefiner.refiner import normalize_image

    def unet_case(refiner, prefix: str, label: str) -> None:
        image = torch.cat([normalize_image(i) for i in chk.npy(f"segrefiner/{prefix}fwd_image")]).to(dev)
        mask = torch.from_numpy(chk.npy(f"segrefiner/{prefix}fwd_mask")).float()
        mask = mask.reshape(image.shape[0], 1, *image.shape[-2:]).to(dev)
        t = torch.from_numpy(chk.npy(f"segrefiner/{prefix}fwd_t")).to(dev)
        with torch.inference_mode():
            logits = refiner.unet(image, mask, t)
        _close(out, f"SegRefiner UNet logits ({label})", logits, chk.npy(f"segrefiner/{prefix}fwd_logits"), 2e-4)

    refiner = chk.segrefiner(narrow=True)
    unet_case(refiner, "", "narrow")
    if chk.quick:
        skipped.append("SegRefiner full width, LR and HR end to end")
    else:
        meta = _json.loads((chk.reference / "segrefiner" / "meta.json").read_text())["cases"]
        noise = [chk.npy(f"segrefiner/ins_noise_t{t}") for t in (5, 4, 3, 2, 1)]
        final = refiner.refine(chk.npy("segrefiner/ins_image"), chk.npy("segrefiner/ins_coarse"), "lr", noise=noise)
        _final_masks(out, "SegRefiner LR (instance) final masks", final, chk.npy("segrefiner/ins_final"),
                     meta["ins"]["final_fragile_px"]["where"])
        noise = [chk.npy(f"segrefiner/hr_noise_t{t}") for t in (5, 4, 3, 2)]
        final = refiner.refine(chk.npy("segrefiner/hr_image"), chk.npy("segrefiner/hr_coarse"), "hr", noise=noise)
        _final_masks(out, "SegRefiner HR final mask", final, chk.npy("segrefiner/hr_final"),
                     meta["hr"]["final_fragile_px_in_patches"]["where"])
        del refiner
        chk.free()
        unet_case(chk.segrefiner(narrow=False), "full_", "full width")
    if skipped:
        out.emit("not checked in --quick", ", ".join(skipped))


# --------------------------------------------------------------------------------------------
# agreement: fp16 and bf16 against fp32


def _agreement(out: Section, name: str, fp32, low) -> None:
    a, b = fp32.float().cpu(), low.float().cpu()
    inter = ((a > 0.5) & (b > 0.5)).sum().item()
    union = ((a > 0.5) | (b > 0.5)).sum().item()
    iou = inter / union if union else 1.0
    diff = (a - b).abs().max().item()
    finite = bool(b.isfinite().all())
    out.emit(name, f"IoU@0.5 {iou:.4f}, max |d alpha| {diff:.3g}" + ("" if finite else ", NOT FINITE"),
             None if finite else False, iou=iou, max_abs_alpha=diff)


def section_agreement(chk: Check, out: Section) -> None:
    import torch
    import torch.nn.functional as F

    from pdfnet_core import segment

    dev = chk.device
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if chk.quick:
        image, depth = chk.pdfnet_inputs("case256")
        image, depth = F.interpolate(image, size=QUICK_SIZE, mode="area"), F.interpolate(depth, size=QUICK_SIZE,
                                                                                          mode="area")
        photo, size, label = chk.npy("pdfnet/case256/image_u8")[0], QUICK_SIZE, f"{QUICK_SIZE}²"
    else:
        image, depth = chk.pdfnet_inputs("case1024")
        photo, size, label = chk.npy("pdfnet/case1024/image_u8")[0], SIZE, "1024²"
    model_out, segment_out, birefnet_out = {}, {}, {}
    for name, dtype in dtypes.items():
        model = chk.pdfnet(dtype)
        dam = None if chk.quick else chk.depth(dtype)
        with torch.inference_mode():
            model_out[name] = model(image.to(dev, dtype), depth.to(dev, dtype)).float().sigmoid().cpu()
        if not chk.quick:
            (segment_out[name],) = segment([photo], model=model, depth_model=dam, size=size)
        del model, dam
        chk.free()
        if not chk.quick:
            net = chk.birefnet("swin_v1_t", dtype)
            with torch.inference_mode():
                birefnet_out[name] = net(torch.from_numpy(chk.npy("birefnet/input_A_256x256")).to(dev, dtype)
                                         ).float().sigmoid().cpu()
            del net
            chk.free()
    for low in ("fp16", "bf16"):
        _agreement(out, f"PDFNet model {label} (fixture inputs) {low} vs fp32", model_out["fp32"], model_out[low])
        if segment_out:
            _agreement(out, f"segment() PDFNet + DAv2-S {label} {low} vs fp32", segment_out["fp32"], segment_out[low])
        if birefnet_out:
            _agreement(out, f"BiRefNet swin_v1_t 256² {low} vs fp32", birefnet_out["fp32"], birefnet_out[low])
    if chk.quick:
        out.emit("not checked in --quick", "segment(), BiRefNet")


# --------------------------------------------------------------------------------------------
# throughput


def _speed(m: dict) -> str:
    peak = "" if m["peak_vram_gib"] is None else f", peak {m['peak_vram_gib']:.2f} GiB"
    return f"{m['images_per_s']:.2f} images/s ({m['ms_per_batch']:.0f} ms/batch, n={m['repeats']}){peak}"


def _dtype_names(chk: Check, args_dtypes: list[str]):
    """The throughput precisions; fp32 in a CPU dry run (bf16 on a CPU without bf16 units is slow and tells nothing)."""
    import torch

    if chk.quick and not chk.cuda:
        args_dtypes = ["fp32"]
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    return [(name, table[name]) for name in args_dtypes]


def section_throughput(chk: Check, out: Section, dtypes: list[str]) -> None:
    import torch

    from pdfnet_core import segment

    size, batches = (QUICK_SIZE, QUICK_BATCHES) if chk.quick else (SIZE, BATCHES)
    for dname, dtype in _dtype_names(chk, dtypes):
        model, dam = chk.pdfnet(dtype), chk.depth(dtype)
        for batch in batches:
            if chk.time_left() < 25:
                out.emit(f"PDFNet model alone {size}² {dname} batch {batch}", "skipped: section time limit near")
                continue
            image, depth = chk.network_inputs(batch, size, dtype)

            def forward():
                with torch.inference_mode():
                    model(image, depth)

            m = chk.measure(forward, batch)
            out.emit(f"PDFNet model alone {size}² {dname} batch {batch}", _speed(m),
                     goal="model" if dname == "bf16" and batch >= 8 else None, **m)
            image = depth = None
        for batch in batches:
            if chk.time_left() < 25:
                out.emit(f"segment() PDFNet + DAv2-S {size}² {dname} batch {batch}", "skipped: section time limit near")
                continue
            photos = chk.photos(batch, size)
            m = chk.measure(lambda: segment(photos, model=model, depth_model=dam, size=size, batch_size=batch), batch,
                            min_seconds=3.0, max_repeats=10, min_repeats=2)
            out.emit(f"segment() PDFNet + DAv2-S {size}² {dname} batch {batch}", _speed(m),
                     goal="segment_b8" if dname == "bf16" and batch == 8 else None, **m)
        if not chk.quick and chk.time_left() > 20:   # where the depth prior's share of segment() goes
            batch = 8
            x = torch.rand(batch, 3, 518, 518, device=chk.device, dtype=dtype)

            def depth_forward():
                with torch.inference_mode():
                    dam(x)

            m = chk.measure(depth_forward, batch)
            out.emit(f"Depth-Anything-V2 S alone 518² {dname} batch {batch}", _speed(m), **m)
        model = dam = None
        chk.free()


# --------------------------------------------------------------------------------------------
# node path with simulated ComfyUI residency


class ResidentRuntime:
    """The node's ``Runtime`` as ComfyUI runs it on a machine with room for every model.

    ``resident`` moves a model onto the device only when its weights are not all there (what
    ``load_models_gpu`` does for a model it already holds) and counts each move as one upload; models
    are never offloaded in between.  It also answers what ``nodes.host.ComfyRuntime`` answers to a
    node that sizes its batches (``activation_budget``, ``will_run``, ``free_cached_memory``): the
    device's free memory as ComfyUI counts it, and one residency call for all of an execution's
    models.  A node layer without that protocol ignores these methods.
    """

    RESERVED = 400 * 2**20   # ComfyUI's extra reserved VRAM on Linux

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, device
        self.models: list = []
        self.calls = 0
        self.uploads: list[tuple[str, float]] = []

    def _on_device(self, model) -> bool:
        return all(t.device == self.device for t in (*model.parameters(), *model.buffers()))

    def resident(self, model, memory_required: int) -> None:
        self.calls += 1
        if self._on_device(model):
            return
        # one load_models_gpu call for the model and the others this execution named in will_run
        for m in [model, *(k for k in self.models if k is not model)]:
            if not self._on_device(m):
                size = sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))
                m.to(self.device)
                self.uploads.append((type(m).__name__, size / 2**20))

    def will_run(self, models, memory_required: int) -> None:
        self.models += [m for m in models if not any(m is k for k in self.models)]

    def activation_budget(self, models):
        if self.device.type != "cuda":
            return None
        cuda = self.torch.cuda
        stats = cuda.memory_stats(self.device)
        free = cuda.mem_get_info(self.device)[0] + cuda.memory_reserved(self.device) - stats.get(
            "active_bytes.all.current", 0) - self.RESERVED
        for m in {id(m): m for m in models}.values():
            if not self._on_device(m):
                free -= sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))
        return self.device, max(0, int(free))

    def free_cached_memory(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def progress(self, total: int):
        return lambda done, total: None


def section_node(chk: Check, out: Section) -> None:
    import torch

    from nodes.adapters import segment_images
    from pdfnet_core import SegmentOptions

    size, frames = (QUICK_SIZE, QUICK_FRAMES) if chk.quick else (SIZE, NODE_FRAMES)
    cpu = torch.device("cpu")
    # built on the offload device, as the loader nodes do (load_cached(..., park=offload device))
    (dname, dtype), = _dtype_names(chk, ["bf16"])
    model, dam = chk.pdfnet(dtype, device=cpu), chk.depth(dtype, device=cpu)
    options = SegmentOptions(size=size)   # what PDFNetSegment builds from its widgets (resize squash, no TTA)
    image = chk.photos(frames, size)
    out.emit("options", f"{frames} frames {size}x{size}, {dname}, SegmentOptions(size={options.size}, "
             f"batch_size={options.batch_size}, resize={options.resize!r}, tta={options.tta})")
    batches: dict[str, list[int]] = {"PDFNet": [], "DAv2": []}

    def seen(key: str):
        def hook(_module, args, kwargs):
            first = args[0] if args else next(iter(kwargs.values()), None)
            batches[key].append(int(first.shape[0]) if hasattr(first, "shape") else -1)
        return hook

    hooks = [m.register_forward_pre_hook(seen(key), with_kwargs=True) for key, m in (("PDFNet", model), ("DAv2", dam))]
    uploads, speeds = [], []
    try:
        for run in range(2 if chk.quick else 3):
            if run and chk.time_left() < 25:
                out.emit(f"run {run + 1}", "skipped: section time limit near")
                break
            runtime = ResidentRuntime(chk.device)   # ComfyUI makes one per node execution
            for sizes in batches.values():
                sizes.clear()
            chk.reset_peak()
            t0 = time.perf_counter()
            masks = segment_images(image, model, options, runtime, depth_model=dam)
            chk.sync()
            seconds = time.perf_counter() - t0
            assert tuple(masks.shape) == (frames, size, size), tuple(masks.shape)
            uploads.append(len(runtime.uploads))
            if run:
                speeds.append(frames / seconds)
            what = ", ".join(f"{name} {mib:.0f} MiB" for name, mib in runtime.uploads) or "none"
            peak = chk.peak_gib()
            out.emit(f"run {run + 1} ({'cold' if run == 0 else 'warm'})",
                     f"{frames / seconds:.2f} images/s; weight uploads: {what}; resident() calls {runtime.calls}; "
                     + "; ".join(f"{k} batches {','.join(map(str, v)) or '-'}" for k, v in batches.items())
                     + ("" if peak is None else f"; peak {peak:.2f} GiB"),
                     images_per_s=frames / seconds, seconds=seconds, uploads=len(runtime.uploads),
                     resident_calls=runtime.calls, batches={k: list(v) for k, v in batches.items()},
                     peak_vram_gib=peak)
    finally:
        for hook in hooks:
            hook.remove()
    if speeds:
        out.emit("warm images/s (median of runs 2..)", f"{statistics.median(speeds):.2f} images/s", goal="node",
                 images_per_s=statistics.median(speeds))
    note = "" if chk.cuda else " (cpu: the weights are already there, nothing to upload)"
    out.emit("weight uploads per run", ", ".join(map(str, uploads)) + note,
             (all(n == 0 for n in uploads[1:]) and uploads[0] <= 2) if chk.cuda else None, per_run=uploads)


# --------------------------------------------------------------------------------------------
# syncs


def _count_syncs(chk: Check, fn: Callable[[], object]) -> tuple[int, list[tuple[str, int]]]:
    """Synchronizing CUDA calls during ``fn`` and where they come from (innermost pdfnet_core/nodes frame)."""
    import torch

    records: list[str] = []

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message).lower():
            return
        frames = [f for f in traceback.extract_stack()[:-1]
                  if Path(f.filename).name != "warnings.py" and f.filename != __file__]
        ours = [f for f in frames if "pdfnet_core" in f.filename or f"{os.sep}nodes{os.sep}" in f.filename]
        where = ours[-1] if ours else frames[-1] if frames else None
        if where is None:
            records.append("(no python frame)")
            return
        name = os.path.relpath(where.filename, ROOT) if where.filename.startswith(str(ROOT)) else where.filename
        records.append(f"{name}:{where.lineno} {where.name}")

    chk.sync()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    chk.sync()
    return len(records), Counter(records).most_common(8)


def section_syncs(chk: Check, out: Section) -> None:
    import torch

    from pdfnet_core import segment

    model, dam = chk.pdfnet(torch.bfloat16), chk.depth(torch.bfloat16)
    photos = chk.photos(2, SIZE)
    image, depth = chk.network_inputs(1, SIZE, torch.bfloat16)

    def run_segment():
        segment(photos, model=model, depth_model=dam, size=SIZE, batch_size=2)

    def forward():
        with torch.inference_mode():
            model(image, depth)

    for name, fn in (("segment() 2 images 1024² bf16 batch 2", run_segment),
                     ("PDFNet forward 1024² bf16 batch 1", forward)):
        fn()   # warm-up: lazy initialisation is not the steady state
        count, where = _count_syncs(chk, fn)
        out.emit(name, f"{count} syncs" + ("; " + "; ".join(f"{n}x {w}" for w, n in where) if where else ""),
                 syncs=count, where=where)


# --------------------------------------------------------------------------------------------
# matting (closed-form alpha in a band: thousands of small CG steps, a GPU's kind of work)


def section_matting(chk: Check, out: Section) -> None:
    """matte() end to end on the device: seconds and peak memory at 1024x768 and 6000x4000 (the CPU
    bars: 15 s and 60 s), its agreement with the CPU's alpha, and its host syncs."""
    from bench_matting import matting_config, photo
    from pdfnet_core import matte

    config = matting_config(1024)
    sizes = [(96, 128)] if chk.quick else [(768, 1024), (4000, 6000)]
    for i, (h, w) in enumerate(sizes):
        image, mask = photo(h, w)
        on = image[None].to(chk.device), mask[None].to(chk.device)
        if not chk.quick:
            matte(*on, config)                 # warm-up: kernels and allocator
        chk.reset_peak()
        chk.sync()
        t0 = time.perf_counter()
        alpha, _ = matte(*on, config)
        chk.sync()
        seconds = time.perf_counter() - t0
        peak = chk.peak_gib()
        out.emit(f"matte {w}x{h} end to end", f"{seconds:.2f} s" + ("" if peak is None else f", peak {peak:.2f} GiB"),
                 seconds=seconds, peak_gib=peak)
        if i == 0:
            reference, _ = matte(image[None], mask[None], config)
            diff = (alpha.float().cpu() - reference).abs()
            mean, worst = float(diff.mean()), float(diff.max())
            out.emit(f"matte {w}x{h} alpha vs the CPU's", f"mean {mean:.2e}, max {worst:.2e}", ok=mean < 0.01,
                     mean=mean, max=worst)
            if chk.cuda:
                count, where = _count_syncs(chk, lambda: matte(*on, config))
                out.emit(f"matte {w}x{h} host syncs", f"{count} syncs" + (
                    "; " + "; ".join(f"{n}x {place}" for place, n in where) if where else ""), syncs=count, where=where)


# --------------------------------------------------------------------------------------------
# torch.compile


def section_compile(chk: Check, out: Section) -> None:
    import torch

    batch = 8
    model = chk.pdfnet(torch.bfloat16)
    image, depth = chk.network_inputs(batch, SIZE, torch.bfloat16)

    def eager():
        with torch.no_grad():
            return model(image, depth)

    m = chk.measure(eager, batch)
    out.emit(f"eager PDFNet 1024² bf16 batch {batch} (no_grad)", _speed(m), **m)
    reference = eager().float()
    compiled = torch.compile(model)
    out.emit("torch.compile", f"compiling (default mode), {chk.time_left():.0f} s left in this section")
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            first = compiled(image, depth)
        chk.sync()
    except Exception as exc:
        out.emit("torch.compile result", f"failed after {time.perf_counter() - t0:.0f} s: {_first_line(exc)}",
                 error=_first_line(exc))
        return
    seconds = time.perf_counter() - t0
    diff = (first.float() - reference).abs().max().item()
    breaks = None
    try:
        from torch._dynamo.utils import counters

        breaks = sum(counters["graph_break"].values())
    except Exception:
        pass
    out.emit("compile time (first call)", f"{seconds:.1f} s; max |d logit| vs eager {diff:.3g}"
             + ("" if breaks is None else f"; graph breaks {breaks}"),
             compile_seconds=seconds, max_abs_logit=diff, graph_breaks=breaks)

    def run_compiled():
        with torch.no_grad():
            compiled(image, depth)

    c = chk.measure(run_compiled, batch)
    out.emit(f"compiled PDFNet 1024² bf16 batch {batch}", _speed(c) + f"; {c['images_per_s'] / m['images_per_s']:.2f}x "
             "eager", speedup=c["images_per_s"] / m["images_per_s"], **c)


# --------------------------------------------------------------------------------------------
# running one or more sections


def run_sections(args) -> int:
    work = Path(args.work)

    def on_term(signum, frame):
        raise SectionTimeout()

    signal.signal(signal.SIGTERM, on_term)
    status = 0
    chk = None
    for name in args.sections:
        out = Section(name, work)
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            if out.name in CUDA_ONLY and args.device.split(":")[0] != "cuda":
                out.data.update(status="skipped", reason="no CUDA")
                out.emit(out.name, "skipped: no CUDA")
                continue
            if chk is None:
                chk = Check(args.device, args.reference, args.quick, args.cache, args.limit)
            out.data["tf32"] = tf32_state()
            chk.reset_peak()
            chk.section_peak = 0.0
            if out.name == "throughput":
                section_throughput(chk, out, args.dtypes)
            else:
                globals()[f"section_{out.name}"](chk, out)
            out.data["status"] = "run"
        except SectionTimeout:
            out.data.update(status="timed out", reason=f"the {args.limit:.0f} s limit came")
            print(f"{out.name}: timed out after {time.perf_counter() - t0:.0f} s", flush=True)
            status = 1
        except BaseException as exc:   # noqa: BLE001 - reported, then the next section runs
            out.data.update(status="failed", reason=_first_line(exc))
            traceback.print_exc()
            status = 1
        finally:
            out.data["seconds"] = time.perf_counter() - t0
            out.data["cpu_seconds"] = time.process_time() - cpu0
            if chk is not None and chk.cuda:
                with contextlib.suppress(Exception):
                    chk.peak_gib()
                    out.data["peak_vram_gib"] = chk.section_peak
            out.save()
            print(f"# {out.name}: {out.data['status']}, {out.data['seconds']:.1f} s"
                  + ("" if out.data["peak_vram_gib"] is None else f", peak {out.data['peak_vram_gib']:.2f} GiB"),
                  flush=True)
            if chk is not None:
                chk.free()
        if out.data["status"] == "timed out":
            break
    return status


# --------------------------------------------------------------------------------------------
# the report: $OUT/gpu_check.txt and $OUT/gpu_check.json from the sections done so far


def _shell_times(work: Path) -> dict[str, dict]:
    times = {}
    path = work / "shell.tsv"
    if path.is_file():
        for line in path.read_text().splitlines():
            name, limit, seconds, rc = line.split("\t")
            times[name] = {"limit_s": int(limit), "wall_s": float(seconds), "exit": int(rc)}
    return times


def build_report(work: Path, meta: dict) -> tuple[dict, str, int]:
    shell = _shell_times(work)
    sections: dict[str, dict] = {}
    for name in meta.get("sections", SECTIONS):
        path = work / "sections" / f"{name}.json"
        data = json.loads(path.read_text()) if path.is_file() else {"section": name, "status": "not run", "reason": "",
                                                                   "rows": [], "seconds": None, "peak_vram_gib": None}
        timing = shell.get(name)
        if timing:
            data["wall_s"], data["limit_s"] = timing["wall_s"], timing["limit_s"]
            if timing["exit"] == -1:
                data.update(status="skipped", reason="no time left in the budget")
            elif data["status"] == "running":   # killed before it could say so itself
                data.update(status="timed out" if timing["exit"] in (124, 137) else "failed",
                            reason=f"killed at the {timing['limit_s']} s limit" if timing["exit"] in (124, 137)
                            else f"exit status {timing['exit']}")
        sections[name] = data
    # TF32: parity switches it off and back; every later section must see the defaults env saw
    env_tf32 = next((r["numbers"] for r in sections.get("env", {}).get("rows", []) if r["name"] == "TF32 defaults"),
                    None)
    tf32_rows = []
    if env_tf32:
        default = {k: env_tf32[k] for k in ("matmul", "cudnn", "float32_matmul_precision")}
        for name, data in sections.items():
            if name not in ("env", "parity") and data.get("tf32") and data["tf32"] != default:
                tf32_rows.append(f"{name} ran with {data['tf32']}, not the defaults {default}")
    goals = []
    for goal in GOALS:
        values = [r["numbers"]["images_per_s"] for d in sections.values() for r in d["rows"]
                  if r.get("goal") == goal.key and "images_per_s" in r["numbers"]]
        best = max(values) if values else None
        goals.append({"key": goal.key, "what": goal.what, "goal_images_per_s": goal.images_per_s,
                      "measured_images_per_s": best,
                      "met": None if best is None or not meta.get("cuda") or meta.get("quick")
                      else best >= goal.images_per_s})
    failed_rows = [f"{d['section']}: {r['name']}" for d in sections.values() for r in d["rows"] if r["ok"] is False]
    bad_sections = [f"{n}: {d['status']} ({d['reason']})" for n, d in sections.items()
                    if d["status"] == "failed" or (d["status"] == "timed out" and n != "compile")]
    rc = 1 if failed_rows or bad_sections or tf32_rows else 0
    report = {"meta": meta, "sections": sections, "goals": goals, "tf32_problems": tf32_rows,
              "failed_rows": failed_rows, "problem_sections": bad_sections, "exit_status": rc}

    env_rows = {r["name"]: r["value"] for r in sections.get("env", {}).get("rows", [])}
    title = "; ".join(v for v in (env_rows.get("device"), env_rows.get("torch")) if v) or "(no env section)"
    mode = f"--device {meta.get('device', '?')}" + (" --quick" if meta.get("quick") else "")
    lines = [f"PDFNet GPU check ({mode}): {title}", ""]
    lines.append(f"{'section':<11} {'status':<10} {'took':>8} {'limit':>7} {'peak VRAM':>10}  note")
    for name, d in sections.items():
        took = d.get("wall_s", d.get("seconds"))
        peak = d.get("peak_vram_gib")
        lines.append(f"{name:<11} {d['status']:<10} {'-' if took is None else f'{took:.1f} s':>8} "
                     f"{'-' if d.get('limit_s') is None else str(d['limit_s']) + ' s':>7} "
                     f"{'-' if peak is None else f'{peak:.2f} GiB':>10}  {d['reason']}")
    for name, d in sections.items():
        if not d["rows"]:
            continue
        lines += ["", f"== {name}"]
        for r in d["rows"]:
            mark = "" if r["ok"] is None else ("  ok" if r["ok"] else "  FAIL")
            lines.append(f"  {r['name']:<56} {r['value']}{mark}")
    lines += ["", "== goals (H100-class)"]
    for g in goals:
        got = "not measured" if g["measured_images_per_s"] is None else f"{g['measured_images_per_s']:.2f} images/s"
        verdict = {None: "n/a" if not meta.get("cuda") or meta.get("quick") else "", True: "MET",
                   False: "BELOW"}[g["met"]]
        lines.append(f"  {g['what']:<56} {got:>18}   goal >= {g['goal_images_per_s']:g}   {verdict}")
    if tf32_rows:
        lines += ["", "== TF32 NOT RESTORED"] + [f"  {t}" for t in tf32_rows]
    lines += ["", "result: " + ("all checks passed" if rc == 0 else
                                "PROBLEMS: " + "; ".join(failed_rows + bad_sections + tf32_rows))]
    return report, "\n".join(lines) + "\n", rc


def write_report(args) -> int:
    work, out = Path(args.work), Path(args.out)
    meta_path = work / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    report, text, rc = build_report(work, meta)
    out.mkdir(parents=True, exist_ok=True)
    for name, content in (("gpu_check.json", json.dumps(report, indent=1, default=str)), ("gpu_check.txt", text)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(content)
        tmp.replace(out / name)
    if not args.quiet:
        print(text, end="", flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run sections, writing WORK/sections/NAME.json")
    r.add_argument("sections", nargs="+", choices=SECTIONS)
    r.add_argument("--device", default="cuda")
    r.add_argument("--reference", type=Path, default=ROOT / ".gpu_reference")
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("--cache", type=Path, help="folder for the synthetic weights shared by the sections")
    r.add_argument("--limit", type=float, default=600.0, help="seconds this process has (the shell's timeout)")
    r.add_argument("--dtypes", nargs="+", choices=("bf16", "fp16", "fp32"), default=["bf16"],
                   help="precisions of the throughput section")
    r.add_argument("--quick", action="store_true", help="small sizes, one repeat (to check the script itself)")
    w = sub.add_parser("report", help="write OUT/gpu_check.txt and OUT/gpu_check.json from WORK")
    w.add_argument("--work", type=Path, required=True)
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.command == "report":
        return write_report(args)
    return run_sections(args)


if __name__ == "__main__":
    sys.exit(main())
