"""The API twins of the shipped workflows (workflows/api/*.json) run in a real ComfyUI server.

Same server set-up as test_comfy_integration.py (tests/comfy_support.py): synthetic weights, the
test images, COMFY_DIR required. The generative workflow's checkpoint branch is replaced by an
image, since no checkpoint exists here.
"""
from __future__ import annotations


import numpy as np
import pytest

from comfy_support import (COMFY_DIR, SIZE, Env, files_of, import_harness, read_png, serve, succeeded,
                           workflow)

pytestmark = pytest.mark.comfy

if not COMFY_DIR:
    pytest.skip("COMFY_DIR is not set: no ComfyUI to run the workflows in", allow_module_level=True)

harness = import_harness()


@pytest.fixture(scope="module")
def env(tmp_path_factory, reference_dir) -> Env:
    return Env(tmp_path_factory.mktemp("workflow_assets"), reference_dir)


@pytest.fixture(scope="module")
def server(env, tmp_path_factory):
    yield from serve(env, harness, tmp_path_factory.mktemp("workflow_inputs"))


def test_remove_background_compare_node_sends_both_previews(server):
    result = succeeded(server.run_workflow(workflow("remove_background.json")))
    ui = result["outputs"]["9"]
    assert set(ui) == {"pdfnet_before", "pdfnet_after"}, ui
    before, after = ui["pdfnet_before"][0], ui["pdfnet_after"][0]
    assert before["type"] == after["type"] == "temp"
    rgba = read_png(server.file_path(after))
    assert rgba.shape == (*SIZE, 4)    # the RGBA result keeps its transparency in the preview
    assert read_png(server.file_path(before)).shape[:2] == SIZE


def test_rgba_png_with_core_nodes_needs_the_inverted_mask(server):
    """SaveImage writes a 4-channel IMAGE as an RGBA PNG. With core JoinImageWithAlpha (alpha = 1 - mask)
    the pack's mask must go through PDFNet Mask Polarity first; PDFNet To RGBA needs no conversion."""
    wf = workflow("remove_background.json")
    wf["20"] = {"class_type": "PDFNetMaskPolarity",
                "inputs": {"mask": ["4", 0], "direction": "foreground -> LoadImage/JoinImageWithAlpha mask"}}
    wf["21"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["1", 0], "alpha": ["20", 0]}}
    wf["22"] = {"class_type": "SaveImage", "inputs": {"images": ["21", 0], "filename_prefix": "pdfnet/core_rgba"}}
    result = succeeded(server.run_workflow(wf))
    core, ours = read_png(files_of(result, "22")[0]), read_png(files_of(result, "6")[0])
    assert core.shape == ours.shape == (*SIZE, 4)
    assert np.abs(core.astype(int) - ours.astype(int)).max() <= 1


def test_replace_background(server):
    result = succeeded(server.run_workflow(workflow("replace_background.json")))
    out = read_png(files_of(result, "8")[0])
    assert out.shape == (*SIZE, 3)


def test_depth_and_mask_side_by_side(server):
    result = succeeded(server.run_workflow(workflow("depth_and_mask.json")))
    out = read_png(files_of(result, "8")[0])
    h, w = SIZE
    assert out.shape == (h, 2 * w, 3), out.shape


def test_batch_folder(server):
    result = succeeded(server.run_workflow(workflow("batch_folder.json")))
    white, rgba = files_of(result, "6"), files_of(result, "8")
    assert len(white) == len(rgba) == 2, (white, rgba)   # one per file of input/pdfnet_batch, any size
    assert sorted(read_png(p).shape for p in rgba) == [(200, 300, 4), (*SIZE, 4)]


def test_generative_background_with_the_checkpoint_branch_replaced(server):
    wf = workflow("generative_background.json")
    for node_id in ("10", "11", "12", "13", "14", "15"):
        del wf[node_id]
    wf["15"] = {"class_type": "LoadImage", "inputs": {"image": "background.png"}}   # stands in for VAEDecode
    result = succeeded(server.run_workflow(wf))
    assert read_png(files_of(result, "7")[0]).shape == (*SIZE, 3)


def test_hair_matting_compares_the_masks_cut_out_with_the_matted_one(server):
    result = succeeded(server.run_workflow(workflow("hair_matting.json")))
    rgba = read_png(files_of(result, "10")[0])
    assert rgba.shape == (*SIZE, 4)
    ui = result["outputs"]["8"]
    before, after = (read_png(server.file_path(ui[k][0])) for k in ("pdfnet_before", "pdfnet_after"))
    assert before.shape[:2] == after.shape[:2] == SIZE
    assert np.abs(before.astype(int)[..., :3] - after.astype(int)[..., :3]).max() > 0   # matting changed the edge
