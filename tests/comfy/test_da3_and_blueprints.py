"""In a real ComfyUI server: core's Depth Anything 3 feeding PDFNet Segment (workflows/api/depth_anything_3.json),
and the bodies of the subgraph blueprints (subgraphs/*.json, built from tests/support/make_blueprints.py).

Same set-up as test_workflows.py (synthetic weights, COMFY_DIR required), plus a synthetic Depth Anything 3
file in core's `geometry_estimation` folder: written by da3_synthetic_child.py with ComfyUI's python, from
ComfyUI's own architecture, and read by core's LoadDA3Model.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from comfy_support import (COMFY_DIR, SIZE, Env, files_of, import_harness, read_png, serve, succeeded,
                           with_test_models, workflow)

pytestmark = pytest.mark.comfy

if not COMFY_DIR:
    pytest.skip("COMFY_DIR is not set: no ComfyUI to run the workflows in", allow_module_level=True)

from make_blueprints import BLUEPRINTS, api_body  # noqa: E402

harness = import_harness()
DA3_FILE = "synthetic_da3_mono.safetensors"


@pytest.fixture(scope="module")
def env(tmp_path_factory, reference_dir) -> Env:
    return Env(tmp_path_factory.mktemp("da3_assets"), reference_dir)


@pytest.fixture(scope="module")
def da3_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("da3") / DA3_FILE
    python = os.environ.get("COMFY_PYTHON") or sys.executable
    proc = subprocess.run([python, str(Path(__file__).with_name("da3_synthetic_child.py")), COMFY_DIR, str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def server(env, da3_file, tmp_path_factory):
    yield from serve(env, harness, tmp_path_factory.mktemp("da3_inputs"),
                     extra_models={"geometry_estimation": [str(da3_file)]})


def test_depth_anything_3_feeds_pdfnet_segment(server):
    wf = workflow("depth_anything_3.json", {("2", "model_name"): DA3_FILE})
    result = succeeded(server.run_workflow(wf))
    depth, cutout = read_png(files_of(result, "10")[0]), read_png(files_of(result, "9")[0])
    assert depth.shape == (*SIZE, 3) and cutout.shape == (*SIZE, 4)
    assert depth.std() > 1, "DA3Render gave a flat depth image"
    # PDFNet ran on DA3's depth, not on a depth model of its own: none is in the workflow
    assert not any(n["class_type"] == "PDFNetDepthAnythingLoader" for n in wf.values())
    # the depth changes the mask: the same image with a flat depth gives another cut-out
    flat = workflow("depth_anything_3.json", {("2", "model_name"): DA3_FILE})
    flat["5"] = {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": SIZE[1], "height": SIZE[0]}}
    other = read_png(files_of(succeeded(server.run_workflow(flat)), "9")[0])
    assert np.abs(other[..., 3].astype(int) - cutout[..., 3].astype(int)).max() > 0


def _blueprint_workflow(name: str) -> dict:
    wf = with_test_models(api_body(name), resolution=256)
    for node in wf.values():
        if node["class_type"] == "TripoSplatPreprocessImage":
            node["inputs"]["size"] = 256
    return wf


@pytest.mark.parametrize("name", sorted(BLUEPRINTS))
def test_blueprint_body_runs(server, name):
    result = succeeded(server.run_workflow(_blueprint_workflow(name)))
    shown = [read_png(server.file_path(item)) for ui in result["outputs"].values() for item in ui.get("images", [])]
    # every output of the blueprint has a preview (PreviewImage or MaskPreview)
    assert len(shown) == sum(n["class_type"] in ("PreviewImage", "MaskPreview") for n in api_body(name).values())
    expected = (256, 256) if name == "Cut Out and Crop for 3D (PDFNet)" else SIZE
    assert all(arr.shape[:2] == expected for arr in shown), [a.shape for a in shown]
    if name == "RGBA Cut-out (PDFNet)":
        assert any(arr.ndim == 3 and arr.shape[2] == 4 for arr in shown), [a.shape for a in shown]
