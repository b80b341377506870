"""Run by test_comfy_gpu_path.py under ComfyUI's python: the node layer's residency against ComfyUI's
OWN comfy/model_management.py and comfy/model_patcher.py (no server), on CUDA when there is one
(offload device: the CPU, load device: the GPU), with --cpu otherwise.

Usage: python comfy_gpu_path_child.py COMFY_DIR REFERENCE_DIR WORK_DIR.  Prints one JSON line of
facts, and exits non-zero with the reason when a check fails.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMFY_DIR, REFERENCE_DIR, WORK_DIR = (Path(a) for a in sys.argv[1:4])
# the pack first: ComfyUI's top-level nodes.py must not shadow the pack's nodes/ package
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]
sys.path.append(str(COMFY_DIR))

import torch  # noqa: E402

import comfy.cli_args  # noqa: E402

CUDA = torch.cuda.is_available()
if not CUDA:
    comfy.cli_args.args.cpu = True

import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher as mp  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import pdfnet_core  # noqa: E402
from nodes import adapters as ad  # noqa: E402
from nodes import host  # noqa: E402
from synthetic_dam2 import key_shapes, synth_state_dict  # noqa: E402
from synthetic_pdfnet import synthetic_state_dict  # noqa: E402


def check(ok: bool, what: str) -> None:
    if not ok:
        print(f"CHECK FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    facts: dict = {"cuda": CUDA, "load_device": str(mm.get_torch_device()),
                   "offload_device": str(mm.unet_offload_device())}
    # What main.py does where comfy-aimdo works (NVIDIA): the dynamic-VRAM patcher becomes CoreModelPatcher.
    mp.CoreModelPatcher = mp.ModelPatcherDynamic
    host.install_residency_hook()

    # ComfyUI's weight loads and load_models_gpu calls, counted (the real functions still run)
    loads: list[str] = []
    real_load = mp.ModelPatcher.load

    def counting_load(self, *args, **kwargs):
        loads.append(type(self.model).__name__)
        return real_load(self, *args, **kwargs)
    mp.ModelPatcher.load = counting_load
    calls: list[int] = []
    real_load_models_gpu = mm.load_models_gpu

    def counting_load_models_gpu(models, *args, **kwargs):
        calls.append(len(models))
        return real_load_models_gpu(models, *args, **kwargs)
    mm.load_models_gpu = counting_load_models_gpu

    pdfnet_file = WORK_DIR / "synthetic_pdfnet.pth"
    torch.save(synthetic_state_dict(REFERENCE_DIR), pdfnet_file)
    dam_file = WORK_DIR / "synthetic_dav2_vits_fp32.safetensors"
    save_file(synth_state_dict(key_shapes(REFERENCE_DIR, "vits")), str(dam_file))
    load, park = host.load_device(), host.offload_device()
    net = pdfnet_core.load_cached("pdfnet", pdfnet_file, device=load, dtype=torch.float32, park=park)
    dam = pdfnet_core.load_cached("depth_anything", dam_file, device=load, dtype=torch.float32, park=park)
    check(net.device == park and dam.device == park, f"models parked on {park}: {net.device}, {dam.device}")
    patcher = pdfnet_core.default_cache().handle_for(net.module)
    facts["patcher"] = type(patcher).__name__
    check(type(patcher) is mp.ModelPatcher, f"the plain ModelPatcher, not {type(patcher).__name__}")

    # the reference: CPU copies, one image per pass
    n = 20 if CUDA else 2
    image = torch.rand(n, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    options = pdfnet_core.SegmentOptions(size=64)
    ref_net = pdfnet_core.LoadedModel(copy.deepcopy(net.module).cpu(), net.spec)
    ref_dam = pdfnet_core.LoadedModel(copy.deepcopy(dam.module).cpu(), dam.spec)
    want = torch.stack(pdfnet_core.segment(image, model=ref_net, depth_model=ref_dam, options=options))

    # where the weights are at each forward pass of the segmenter
    seen: list[tuple[str, int, int]] = []
    after: list = []

    def record(module, inputs, output):
        p = next(module.parameters())
        seen.append((str(p.device), p.data_ptr(), inputs[0].shape[0]))
        while after:
            after.pop()()
    hook = net.module.register_forward_hook(record)

    got = ad.segment_images(image, net, options, host.ComfyRuntime(), depth_model=dam)
    diff = (got.cpu() - want).abs().max().item()
    facts.update(first_calls=len(calls), first_loads=list(loads), batches=[b for *_, b in seen], max_diff=diff,
                 devices=sorted({d for d, *_ in seen}))
    check(diff < 2e-2, f"masks differ from the CPU reference by {diff}")
    check(calls == [2], f"one load_models_gpu call with both models per execution, got {calls}")
    check(sorted(loads) == ["DepthAnythingV2", "PDFNet"], f"each model's weights loaded once, got {loads}")
    check(len({ptr for _, ptr, _ in seen}) == 1, "the segmenter's weights were never loaded again between batches")
    check(all(d == str(load) or (d == "cpu" and load.type == "cpu") for d, *_ in seen),
          f"ran on {facts['devices']}, not {load}")
    if CUDA:
        check(len(seen) >= 2 and seen[0][2] > 1, f"batches sized to the free GPU memory, got {facts['batches']}")
    else:
        check(all(b == 1 for *_, b in seen), f"batches of 1 on a CPU, got {facts['batches']}")

    # the next execution: one load_models_gpu call again, no weights moved
    calls.clear(), loads.clear(), seen.clear()
    again = ad.segment_images(image, net, options, host.ComfyRuntime(), depth_model=dam)
    check(torch.equal(again, got), "the second execution gives the same masks")
    check(calls == [2] and loads == [], f"second execution: calls {calls}, weight loads {loads}")

    # ComfyUI unloads everything between two batches: the next batch loads the models again
    calls.clear(), loads.clear(), seen.clear()
    after.append(mm.unload_all_models)
    third = ad.segment_images(image, net, options, host.ComfyRuntime(), depth_model=dam)
    check((third.cpu() - want).abs().max().item() < 2e-2, "masks after an unload between batches")
    facts.update(unload_calls=list(calls), unload_loads=list(loads))
    expect = 2 if len(seen) > 1 else 1   # with one segmenter batch there is no batch after the unload
    check(len(calls) == expect, f"load_models_gpu again after the unload: {calls}")
    hook.remove()
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
