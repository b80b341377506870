"""Seconds and peak memory of one PDFNet training step (prints numbers; asserts nothing).

One step = the training forward (PDFNet + depth head), the full loss, backward and an AdamW update,
at batch 1 as in the paper.  Each (size, precision) runs in a fresh subprocess so that its peak RSS
is its own:
    python benchmarks/bench_train.py                          # 512 and 1024, fp32 and bf16, CPU
    python benchmarks/bench_train.py --sizes 1024 --precisions bf16 --device cuda --steps 3
Weights are random (speed and memory do not depend on their values).  "before" is the RSS with the
model and optimizer built, "peak" the process maximum; a warm-up step at 64² comes first so that
the optimizer state exists and one-time allocations are counted in "before".
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(size: int, precision: str, device: str, steps: int, threads: int, revision: str) -> dict:
    sys.path[:0] = [str(ROOT)]
    import torch

    from benchmarks.measure import peak_rss_gib, rss_gib
    from pdfnet_core.models.pdfnet.net import PDFNetConfig
    from pdfnet_core.train.loop import autocast_dtype, forward_loss
    from pdfnet_core.train.model import build_training_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    amp = autocast_dtype(precision, dev)
    model = build_training_model(PDFNetConfig(revision=revision)).model.to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 else None

    def batch(side: int) -> dict:
        mask = torch.zeros(1, 1, side, side)
        mask[..., side // 4: 3 * side // 4, side // 3: 2 * side // 3] = 1
        return {"image": torch.randn(1, 3, side, side), "mask": mask, "depth": torch.rand(1, 1, side, side)}

    def step(data: dict) -> float:
        terms, _ = forward_loss(model, data, dev, amp, per_item=False)
        (scaler.scale(terms.total) if scaler is not None else terms.total).backward()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return terms.total.item()

    step(batch(64))
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = rss_gib()
    data = batch(size)
    times, loss = [], float("nan")
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step(data)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out = {"size": size, "precision": precision, "device": device, "seconds": times, "before_gib": before,
           "peak_gib": peak_rss_gib(), "loss": loss}
    if cuda:
        out["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--revision", default="v1", choices=["v1", "v2"])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.sizes[0], args.precisions[0], args.device, args.steps, args.threads,
                               args.revision)))
        return
    print(f"{'size':>6} {'autocast':>8} {'device':>6} {'s/step':>9} {'before GiB':>11} {'peak GiB':>9} "
          f"{'step GiB':>9} {'loss':>8}")
    for size in args.sizes:
        for precision in args.precisions:
            cmd = [sys.executable, __file__, "--child", "--sizes", str(size), "--precisions", precision,
                   "--device", args.device, "--steps", str(args.steps), "--threads", str(args.threads),
                   "--revision", args.revision]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit status {proc.returncode}"
                print(f"{size:>6} {precision:>8} failed: {why}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            extra = f"  cuda peak {r['cuda_peak_gib']:.2f} GiB" if "cuda_peak_gib" in r else ""
            print(f"{size:>6} {precision:>8} {r['device']:>6} {statistics.median(r['seconds']):>9.2f} "
                  f"{r['before_gib']:>11.2f} {r['peak_gib']:>9.2f} {r['peak_gib'] - r['before_gib']:>9.2f} "
                  f"{r['loss']:>8.4f}{extra}")


if __name__ == "__main__":
    main()
