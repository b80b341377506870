"""The node layer's residency against ComfyUI's OWN memory manager and model patcher (no server).

Runs when COMFY_DIR (a ComfyUI source tree, e.g. v0.33.0) is set, with COMFY_PYTHON its environment's
python; skipped otherwise (CI has no ComfyUI).  comfy_gpu_path_child.py runs in that python, in its
own process (importing ComfyUI sets global torch state): it makes CoreModelPatcher the dynamic-VRAM
patcher as main.py does on NVIDIA, loads synthetic-weight PDFNet and Depth-Anything-V2 through
pdfnet_core's cache parked on ComfyUI's offload device, and runs the Segment node's path three times.
With CUDA the load device is the GPU and the offload device the CPU; without, ComfyUI runs with --cpu
(the bookkeeping is still ComfyUI's own).  The CI twin with stand-ins is tests/unit/test_comfy_residency.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfy

COMFY_DIR = os.environ.get("COMFY_DIR", "")
if not COMFY_DIR:
    pytest.skip("COMFY_DIR is not set: no ComfyUI to test the residency against (see ../shared/comfy/README.md)",
                allow_module_level=True)

CHILD = Path(__file__).with_name("comfy_gpu_path_child.py")


def test_one_residency_call_per_execution_with_comfyuis_own_memory_manager(reference_dir, tmp_path):
    python = os.environ.get("COMFY_PYTHON") or sys.executable
    run = subprocess.run([python, str(CHILD), COMFY_DIR, str(reference_dir), str(tmp_path)], capture_output=True,
                         text=True, timeout=1200, cwd=str(CHILD.parents[2]))
    assert run.returncode == 0, f"{run.stderr[-6000:]}\n{run.stdout[-2000:]}"
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert facts["patcher"] == "ModelPatcher"
    assert facts["first_calls"] == 1 and sorted(facts["first_loads"]) == ["DepthAnythingV2", "PDFNet"]
    if facts["cuda"]:
        assert facts["offload_device"] == "cpu" and facts["devices"] == [facts["load_device"]]
