"""Shared by the tests that drive a real ComfyUI (test_comfy_integration.py, test_browser.py).

The harness (../shared/comfy/harness.py or COMFY_HARNESS), the synthetic-weight checkpoints and
test images, and the API workflows of workflows/api with the test's models patched in.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows" / "api"
PACK_NAME = "ComfyUI-PDFNet"
RESOLUTION = 256          # small network size: the synthetic models are full-size Swin-B / ViT-S
SIZE = (240, 320)         # (H, W) of the test image, not square on purpose
COMFY_DIR = os.environ.get("COMFY_DIR", "")


def import_harness():
    """The shared harness module, loaded once per process (both server test modules use it)."""
    if "comfy_harness" in sys.modules:
        return sys.modules["comfy_harness"]
    path = Path(os.environ.get("COMFY_HARNESS", ROOT.parent / "shared" / "comfy" / "harness.py"))
    if not path.is_file():
        pytest.skip(f"ComfyUI harness not found at {path}; set COMFY_HARNESS", allow_module_level=True)
    spec = importlib.util.spec_from_file_location("comfy_harness", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfy_harness"] = module
    spec.loader.exec_module(module)
    return module



class Env:
    def __init__(self, tmp: Path, reference_dir: Path) -> None:
        from synthetic_dam2 import key_shapes, synth_state_dict
        from synthetic_pdfnet import synthetic_state_dict
        from safetensors.torch import save_file

        self.tmp = tmp
        self.pdfnet = tmp / "synthetic_pdfnet.pth"
        torch.save(synthetic_state_dict(reference_dir), self.pdfnet)
        self.dam = tmp / "synthetic_dav2_vits_fp32.safetensors"
        save_file(synth_state_dict(key_shapes(reference_dir, "vits")), str(self.dam))
        self.readme = tmp / "README.txt"
        self.readme.write_text("not a model: must not be listed by the loaders\n")

        h, w = SIZE
        yy, xx = np.mgrid[0:h, 0:w]
        rng = np.random.default_rng(0)
        img = (rng.random((h, w, 3)) * 60 + 30).astype(np.float64)
        disk = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (h / 3) ** 2
        img[disk] = [200, 120, 60]
        self.image = self._png(tmp / "example.png", img.astype(np.uint8))
        self.image2 = self._png(tmp / "example2.png", np.flip(img, 1).astype(np.uint8).copy())
        depth = np.where(disk, 220, 40).astype(np.uint8)
        self.depth = self._png(tmp / "example_depth.png", np.repeat(depth[..., None], 3, -1))
        self.small_depth = self._png(tmp / "small_depth.png", np.full((h // 2, w // 2, 3), 128, np.uint8))

    @staticmethod
    def _png(path: Path, arr: np.ndarray) -> Path:
        from PIL import Image

        Image.fromarray(arr).save(path)
        return path

    def images(self) -> dict:
        return {p.name: str(p) for p in (self.image, self.image2, self.depth, self.small_depth)}



def make_server(env: Env, harness, extra_models: dict | None = None):
    """A started server with this repository as a pack and the synthetic models in its folders (and
    `extra_models`, {folder: [paths]}, e.g. a core model folder)."""
    srv = harness.ComfyServer(
        comfy_dir=COMFY_DIR, python=os.environ.get("COMFY_PYTHON") or None,
        packs=[(str(ROOT), PACK_NAME)],
        # the depth file also sits in the pdfnet folder, to choose it by mistake in the PDFNet loader
        models={"pdfnet": [str(env.pdfnet), str(env.dam), str(env.readme)], "depthanything": [str(env.dam)],
                **(extra_models or {})})
    srv.start(timeout=300)
    for name, src in env.images().items():
        srv.put_input(src, name)
    return srv


def pack_import_failures(srv) -> list[str]:
    """The server's import failures that concern this pack (core's own optional nodes may fail to
    import where their extra packages are missing)."""
    return [line for line in srv.import_failures() if PACK_NAME in line]


def with_test_models(wf: dict, resolution: int = RESOLUTION) -> dict:
    """``wf`` (API format) with the test's synthetic model files and network resolution, in place."""
    for node in wf.values():
        inputs = node["inputs"]
        if node["class_type"] == "PDFNetModelLoader":
            inputs["model_name"] = "synthetic_pdfnet.pth"
        elif node["class_type"] == "PDFNetDepthAnythingLoader":
            inputs["model_name"] = "synthetic_dav2_vits_fp32.safetensors"
        elif node["class_type"] == "PDFNetSegment":
            inputs["resolution"] = resolution
    return wf


def workflow(name: str, patch: dict | None = None) -> dict:
    """An API workflow from workflows/api with the test's models, images and resolution."""
    wf = with_test_models(json.loads((WORKFLOWS / name).read_text()))
    for (node_id, key), value in (patch or {}).items():
        wf[node_id]["inputs"][key] = value
    return wf


def read_png(path: Path) -> np.ndarray:
    from PIL import Image  # deferred: only the server tests read outputs

    with Image.open(path) as im:
        return np.asarray(im).copy()


def files_of(result: dict, node_id: str) -> list[Path]:
    """The files a workflow run's node ``node_id`` produced."""
    return [Path(f["path"]) for f in result["files"] if f["node_id"] == node_id]


def succeeded(result: dict) -> dict:
    """``result`` of a run that must have succeeded (else the status, error and node errors)."""
    assert result["ok"], (result["status"], result["error"], result["node_errors"])
    return result


def write_test_inputs(srv, tmp: Path) -> None:
    """The input files the shipped workflows name: a background and a folder for the batch workflow
    (example.png and example_depth.png come from comfy_support.Env, or are made here)."""
    from PIL import Image

    h, w = SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    files = {
        "background.png": np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 128)], -1),
        "pdfnet_batch/a.png": np.stack([yy * 255 // h] * 3, -1),
        "pdfnet_batch/b.png": np.stack([np.full_like(xx, 200), xx * 255 // w, yy * 255 // h], -1)[:200, :300],
    }
    if not Path(srv.input_dir, "example.png").exists():
        files["example.png"] = files["pdfnet_batch/b.png"]
        files["example_depth.png"] = files["pdfnet_batch/a.png"]
    for name, arr in files.items():
        path = tmp / name.replace("/", "_")
        Image.fromarray(arr.astype(np.uint8)).save(path)
        sub, _, base = name.rpartition("/")
        srv.put_input(str(path), base, subfolder=sub)


def serve(env: "Env", harness, inputs_dir: Path, extra_models: dict | None = None):
    """The body of a module-scoped server fixture: started with the test inputs written, stopped after."""
    srv = make_server(env, harness, extra_models)
    try:
        write_test_inputs(srv, inputs_dir)
        yield srv
    finally:
        srv.stop()


def auto_dtype_of(family_name: str) -> torch.dtype:
    """What the loaders' dtype "auto" means on this CPU (bf16 where it has native kernels)."""
    from pdfnet_core import auto_dtype, family

    return auto_dtype(family(family_name).auto_dtypes, torch.device("cpu"))


def auto_name(family_name: str) -> str:
    from pdfnet_core import DTYPES

    return {v: k for k, v in DTYPES.items()}[auto_dtype_of(family_name)]
