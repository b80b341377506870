"""The pack inside a REAL ComfyUI server, driven only through ComfyUI's HTTP and websocket API.

Runs when COMFY_DIR (a ComfyUI source tree) is set, with COMFY_PYTHON its environment's python;
skipped otherwise (CI has no ComfyUI).  The server comes from ../shared/comfy/harness.py (or
COMFY_HARNESS), with this repository linked into custom_nodes and synthetic-weight checkpoints
(the recipes of shared/reference) in a temporary models folder.  The workflows are the API-format
files in workflows/api/, with model names, the image and the resolution patched in.

How "a second run loads no model" is proven: in the node path a model is read from disk only by
the loader callable that pdfnet_core's cache runs on a miss (nodes/host.load_model), and it
logs exactly one "PDFNet pack: ... runs on ..." line per call.  The server log is ComfyUI's own
console output, so counting those lines before and after a run counts disk loads, with no debug
hook in the pack.  The forced re-run changes the loaders' dtype widget (auto -> what auto means here, the same
model on a CPU) so ComfyUI really executes the loader nodes again (checked in the websocket
'executing' messages) and the only thing that can avoid a reload is the shared cache.
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from comfy_support import (COMFY_DIR, auto_dtype_of, auto_name, PACK_NAME, RESOLUTION, SIZE, Env, files_of,
                           import_harness, make_server, pack_import_failures, read_png, succeeded, workflow)

pytestmark = pytest.mark.comfy

if not COMFY_DIR:
    pytest.skip("COMFY_DIR is not set: no ComfyUI to run the integration tests against "
                "(see ../shared/comfy/README.md)", allow_module_level=True)


harness = import_harness()


OUR_NODES = {"PDFNetModelLoader", "PDFNetDepthAnythingLoader", "PDFNetDepthEstimate", "PDFNetSegment",
             "PDFNetRefineMask", "PDFNetEstimateForeground", "PDFNetComposite", "PDFNetToRGBA",
             "PDFNetMaskPolarity", "PDFNetCompare",
             "PDFNetBiRefNetLoader", "PDFNetSegRefinerLoader", "PDFNetSegRefine", "PDFNetMatting"}
# pdfnet_core.loading's one line per load from disk: "<model> from <file> runs on <device> in <dtype>"
# (ComfyUI's console may put a coloured "[INFO]" before it)
LOAD_LINE = re.compile(r"^(?:\S*\[INFO\]\S* )?(.+?) from (\S+) runs on (\S+) in (\S+)", re.MULTILINE)


# --------------------------------------------------------------------------------------------
# fixtures: synthetic weights, images, one server for the module


@pytest.fixture(scope="module")
def env(tmp_path_factory, reference_dir) -> Env:
    return Env(tmp_path_factory.mktemp("comfy_assets"), reference_dir)


@pytest.fixture(scope="module")
def server(env):
    srv = make_server(env, harness)
    try:
        yield srv
    finally:
        srv.stop()


# --------------------------------------------------------------------------------------------
# helpers


def load_lines(srv) -> list[tuple[str, str, str, str]]:
    return LOAD_LINE.findall(srv.log_text())


def run(srv, wf: dict, timeout: float = 600) -> dict:
    return srv.run_workflow(wf, timeout=timeout)


def executed_nodes(result: dict) -> set[str]:
    return {m["data"]["node"] for m in result["ws_messages"]
            if m.get("type") == "executing" and m.get("data", {}).get("node") is not None}


def progress_of(result: dict, node_id: str) -> list[tuple[int, int]]:
    return [(m["data"]["value"], m["data"]["max"]) for m in result["ws_messages"]
            if m.get("type") == "progress" and m["data"].get("node") == node_id]


def rgb_of(path: Path) -> np.ndarray:
    return read_png(path).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def expected(env):
    """The same computations in this process, straight through pdfnet_core (no ComfyUI)."""
    from pdfnet_core import depth_prior, estimate_depth, load_depth_anything, load_pdfnet, segment
    from pdfnet_core.depth import normalize_depth

    model = load_pdfnet(env.pdfnet, dtype=auto_dtype_of("pdfnet"))
    dam = load_depth_anything(env.dam, dtype=auto_dtype_of("depth_anything"))
    image = torch.from_numpy(rgb_of(env.image))[None]
    prior = depth_prior(image, dam)
    ext = torch.from_numpy(rgb_of(env.depth)[..., 0])[None]
    return {
        "mask": segment(image, prior, model, size=RESOLUTION)[0].numpy(),
        "mask_external": segment(image, ext, model, size=RESOLUTION)[0].numpy(),
        "depth": normalize_depth(estimate_depth(image, dam)[0], quantize=False).numpy(),
    }


def assert_close_8bit(saved: np.ndarray, expected: np.ndarray, what: str) -> None:
    # SaveImage truncates 255*x to uint8, so a correct value lands in [255x - 1, 255x].
    diff = saved.astype(np.float64) - expected.astype(np.float64) * 255.0
    assert saved.shape == expected.shape, (what, saved.shape, expected.shape)
    assert diff.max() <= 1.0 and diff.min() >= -2.0, (what, diff.min(), diff.max())
    assert np.abs(diff).mean() < 1.0, (what, np.abs(diff).mean())


# --------------------------------------------------------------------------------------------
# the tests (module order: the model-load counts build on the runs before them)


def test_nodes_listed_without_import_failures(server, env):
    nodes = server.pack_nodes(PACK_NAME)
    assert set(nodes) == OUR_NODES, sorted(nodes)
    assert not pack_import_failures(server), server.import_failures()
    for node_id, info in nodes.items():
        assert info["category"].startswith("PDFNet/"), (node_id, info["category"])
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert nodes["PDFNetModelLoader"]["output"] == ["PDFNET_MODEL"]
    # optional, so the shipped workflows (saved before it existed) still validate and run with auto
    revision = nodes["PDFNetModelLoader"]["input"]["optional"]["revision"]
    assert revision[1]["options"] == ["auto", "v1", "v2"] and revision[1]["default"] == "auto"
    assert nodes["PDFNetDepthAnythingLoader"]["output"] == ["DEPTH_ANYTHING_MODEL"]
    seg = nodes["PDFNetSegment"]["input"]["optional"]
    assert seg["depth"][1].get("lazy") and seg["depth_model"][1].get("lazy")
    pdfnet_files = nodes["PDFNetModelLoader"]["input"]["required"]["model_name"][1]["options"]
    assert "synthetic_pdfnet.pth" in pdfnet_files and "PDFNet_Best.pth" in pdfnet_files
    assert "README.txt" not in pdfnet_files, "non-weight files must not be offered"
    depth_files = nodes["PDFNetDepthAnythingLoader"]["input"]["required"]["model_name"][1]["options"]
    assert "synthetic_dav2_vits_fp32.safetensors" in depth_files and "depth_anything_v2_vitl.pth" in depth_files
    assert "CC-BY-NC" in nodes["PDFNetDepthAnythingLoader"]["input"]["required"]["model_name"][1]["tooltip"]


def test_remove_background_with_depth_model(server, env, expected):
    before = len(load_lines(server))
    result = run(server, workflow("remove_background.json"))
    succeeded(result)
    loads = load_lines(server)[before:]
    assert sorted(l[0] for l in loads) == ["Depth-Anything-V2 vits", "PDFNet"], loads
    # auto on a CPU: bf16 where it has native kernels, else fp32 (the same answer for both families)
    auto = str(auto_dtype_of("pdfnet")).split(".")[-1]
    assert all(l[2] == "cpu" and l[3] == auto for l in loads), loads
    # both models went through ComfyUI's memory manager (load_models_gpu logs this once per model)
    log = server.log_text()
    assert "Requested to load PDFNet" in log and "Requested to load DepthAnythingV2" in log
    # progress: depth then segmentation, one image each, reported on the segment node
    steps = progress_of(result, "4")
    assert steps and steps[-1] == (2, 2), steps

    mask = read_png(files_of(result, "8")[0])
    assert mask.shape[:2] == SIZE
    assert_close_8bit(mask[..., 0], expected["mask"], "mask")
    rgba = read_png(files_of(result, "6")[0])
    assert rgba.shape == (*SIZE, 4), rgba.shape
    assert np.abs(rgba[..., 3].astype(int) - mask[..., 0].astype(int)).max() <= 1
    assert np.array_equal(rgba[..., :3], read_png(env.image))   # straight alpha: colours untouched


def test_second_run_loads_no_model(server, env):
    before = len(load_lines(server))
    # 1. the usual second run: another image, same models (ComfyUI reuses the loader outputs)
    result = run(server, workflow("remove_background.json", {("1", "image"): env.image2.name}))
    succeeded(result)
    assert load_lines(server)[before:] == []
    assert "4" in executed_nodes(result)
    # 2. loaders forced to run again (dtype auto -> the dtype auto means here: the same model): the
    #    shared cache answers them, nothing is read from disk
    forced = workflow("remove_background.json", {("2", "dtype"): auto_name("pdfnet"), ("3", "dtype"): auto_name("depth_anything"),
                                                   ("1", "image"): env.image.name})
    result = run(server, forced)
    succeeded(result)
    assert {"2", "3"} <= executed_nodes(result), executed_nodes(result)
    assert load_lines(server)[before:] == [], load_lines(server)[before:]
    log_tail = server.log_text()
    assert "Requested to load PDFNet" in log_tail   # from the first test only
    assert log_tail.count("Requested to load PDFNet") == 1, "the model was re-registered with the memory manager"


def test_external_depth_skips_the_depth_model(server, env, expected):
    result = run(server, workflow("remove_background_external_depth.json"))
    succeeded(result)
    ran = executed_nodes(result)
    assert "6" in ran and "5" not in ran, f"the depth loader ran although depth was wired: {sorted(ran)}"
    steps = progress_of(result, "6")
    assert steps and steps[-1] == (1, 1), steps   # segmentation only: no depth estimation step
    mask = read_png(files_of(result, "9")[0])
    assert_close_8bit(mask[..., 0], expected["mask_external"], "mask with external depth")
    cutout = read_png(files_of(result, "7")[0]).astype(np.float64)
    want = read_png(env.image).astype(np.float64) * expected["mask_external"][..., None]
    assert np.abs(cutout - want).max() <= 2.0   # the subject over black


def test_refine_and_composite(server, env):
    result = run(server, workflow("refine_composite.json"))
    succeeded(result)
    composite = read_png(files_of(result, "8")[0])
    rgba = read_png(files_of(result, "10")[0])
    inverted = read_png(files_of(result, "13")[0])[..., 0].astype(int)
    assert composite.shape == (*SIZE, 3) and rgba.shape == (*SIZE, 4)
    alpha = rgba[..., 3].astype(int)
    assert np.abs(alpha + inverted - 255).max() <= 1, "polarity output is not 1 - mask"
    # where the refined mask is empty the composite is the background colour (#00ff00)
    empty = alpha == 0
    if empty.any():
        assert np.abs(composite[empty].astype(int) - [0, 255, 0]).max() <= 1
    for node in ("5", "6"):
        assert progress_of(result, node), f"node {node} reported no progress"


def test_depth_estimate(server, env, expected):
    result = run(server, workflow("depth_estimate.json"))
    succeeded(result)
    depth = read_png(files_of(result, "4")[0])
    assert depth.shape == (*SIZE, 3)
    assert (depth[..., 0] == depth[..., 1]).all() and (depth[..., 1] == depth[..., 2]).all()
    assert_close_8bit(depth[..., 0], expected["depth"], "depth")
    assert depth.max() >= 254 and depth.min() <= 1   # per-image normalisation spans 0..1


def _rejected(result: dict) -> str:
    assert result["status"] == "rejected_http_400", result["status"]
    return json.dumps(result["node_errors"])


def test_missing_or_unsafe_model_names_are_rejected(server):
    known = workflow("remove_background.json", {("2", "model_name"): "PDFNet_Best.pth"})
    text = _rejected(run(server, known))
    assert "turn on 'download'" in text and "huggingface.co/Tennineee/PDFNet" in text
    assert f"models{os.sep}pdfnet" in text   # the folder to put it in
    text = _rejected(run(server, workflow("remove_background.json", {("2", "model_name"): "nope.pth"})))
    assert "not in the 'pdfnet' models folder" in text
    text = _rejected(run(server, workflow("remove_background.json", {("2", "model_name"): "../../x.pth"})))
    assert "'..'" in text
    text = _rejected(run(server, workflow("remove_background.json", {("4", "resolution"): 1000})))
    assert "multiple of 32" in text


def test_wrong_file_and_bad_depth_are_clear_errors(server, env):
    wrong = workflow("remove_background.json", {("2", "model_name"): env.dam.name})
    result = run(server, wrong)
    assert result["status"] == "error"
    message = result["error"]["exception_message"]
    assert result["error"]["node_type"] == "PDFNetModelLoader"
    assert "not a PDFNet checkpoint" in message and "Depth-Anything-V2" in message, message

    batch = workflow("remove_background_external_depth.json")
    batch["20"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 2}}
    batch["6"]["inputs"]["image"] = ["20", 0]
    result = run(server, batch)
    assert result["status"] == "error" and result["error"]["node_type"] == "PDFNetSegment"
    assert "image has 2 items and depth has 1: pass one depth per item of image" in result["error"]["exception_message"]

    small = workflow("remove_background_external_depth.json", {("2", "image"): env.small_depth.name})
    result = run(server, small)
    assert result["status"] == "error"
    assert "must have the size of its image" in result["error"]["exception_message"]


def test_cancel_a_run(server, env):
    wf = workflow("remove_background.json", {("4", "resolution"): 512})
    wf["20"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 12}}
    wf["4"]["inputs"]["image"] = ["20", 0]
    wf["5"]["inputs"]["image"] = ["20", 0]
    client = uuid.uuid4().hex
    ws = harness._WSListener(server.port, client)
    ws.start()
    ws.connected.wait(10)
    try:
        status, resp = server.queue_prompt(wf, client)
        assert status == 200, resp
        prompt_id = resp["prompt_id"]
        deadline = time.time() + 300
        while time.time() < deadline and not any(
                m.get("type") == "progress" and m["data"].get("node") == "4" for m in ws.messages):
            time.sleep(0.1)
        assert time.time() < deadline, "no progress from the segment node"
        t_cancel = time.time()
        code, _ = server.post_json("/interrupt", {"prompt_id": prompt_id})
        assert code == 200
        entry = None
        while time.time() < deadline:
            history = server.get_json(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
                entry = history[prompt_id]
                break
            time.sleep(0.2)
        stopped_after = time.time() - t_cancel
    finally:
        ws.stop()
    assert entry is not None
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    steps = [(m["data"]["value"], m["data"]["max"]) for m in ws.messages
             if m.get("type") == "progress" and m["data"].get("node") == "4"]
    assert steps[-1][0] < steps[-1][1] == 24, steps    # stopped part-way through 2 x 12 steps
    assert stopped_after < 60, stopped_after
    # the server is fine afterwards, and the cache is consistent: the same models run again
    # (loaders forced to re-execute) without a single read from disk
    loads = len(load_lines(server))
    succeeded(run(server, workflow("depth_estimate.json", {("1", "image"): env.image2.name})))
    again = workflow("remove_background.json", {("2", "dtype"): auto_name("pdfnet"), ("3", "dtype"): auto_name("depth_anything"),
                                                  ("4", "resolution"): 512, ("1", "image"): env.image2.name})
    succeeded(run(server, again))
    assert load_lines(server)[loads:] == [], load_lines(server)[loads:]
