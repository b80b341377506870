"""BiRefNet and SegRefiner inside a REAL ComfyUI server (see test_comfy_integration.py for the setup).

Its own server, with synthetic weights in models/birefnet (Swin-T, the light variant: CPU time) and
models/segrefiner (the NARROW UNet of the reference folder), so these tests stay independent of the
order of the main integration module.  Skipped without COMFY_DIR, like that module.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import comfy_support as base
from comfy_support import COMFY_DIR

if not COMFY_DIR:
    pytest.skip("COMFY_DIR is not set: no ComfyUI to run the integration tests against "
                "(see ../shared/comfy/README.md)", allow_module_level=True)

# the response helpers of the main module (importing it is cheap once COMFY_DIR is set)
from comfy_support import files_of, read_png, succeeded  # noqa: E402
from test_comfy_integration import assert_close_8bit, progress_of, rgb_of, run  # noqa: E402

harness = base.import_harness()

pytestmark = pytest.mark.comfy

BIREFNET_FILE = "synthetic_birefnet_swin_t.safetensors"   # unknown to the registry: patch order 'current'
SEGREFINER_FILE = "synthetic_segrefiner_narrow.pth"
SMALL = (48, 64)          # (H, W) of the SegRefiner image: hr mode still runs its 256² global pass
MATTE = (1024, 1280)      # (H, W) of the matting photo: 6 tiles of 512² (and 2 on the half-size level)
SEED = 11


class Assets:
    def __init__(self, tmp: Path, reference_dir: Path) -> None:
        from safetensors.torch import save_file
        from synthetic_birefnet import synthetic_state_dict as birefnet_state
        from synthetic_segrefiner import synthetic_state_dict as segrefiner_state

        self.env = base.Env(tmp, reference_dir)   # the PDFNet/Depth-Anything weights and the test images
        self.birefnet = tmp / BIREFNET_FILE
        save_file(birefnet_state(reference_dir, "swin_v1_t"), str(self.birefnet))
        self.segrefiner = tmp / SEGREFINER_FILE
        # the official mmcv layout, optimizer included (the loader drops it)
        torch.save({"meta": {"epoch": 1}, "state_dict": segrefiner_state(reference_dir, narrow=True),
                    "optimizer": {"state": {}, "param_groups": []}}, self.segrefiner)
        h, w = SMALL
        yy, xx = np.mgrid[0:h, 0:w]
        disk = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (h / 3) ** 2
        img = np.where(disk[..., None], [200, 120, 60], [40, 60, 80]).astype(np.uint8)
        self.small = base.Env._png(tmp / "small.png", img)
        # a coarse mask: the disk shifted by 3 px, so there is something to refine
        coarse = ((yy - h / 2 - 3) ** 2 + (xx - w / 2) ** 2 < (h / 3) ** 2).astype(np.uint8) * 255
        self.coarse = base.Env._png(tmp / "small_coarse.png", np.repeat(coarse[..., None], 3, -1))
        # a photo for matting: a disk with thin strands over a gradient, and the mask a segmenter at
        # 1/8 of its size would give (the strands gone, the rim blurred)
        h, w = MATTE
        yy, xx = np.mgrid[0:h, 0:w] + 0.5
        alpha = np.clip(300 - np.hypot(yy - h / 2, xx - w / 2) + 0.5, 0, 1)
        angles, radii = np.linspace(0, 2 * np.pi, 48, endpoint=False)[:, None], np.arange(302, 322)[None]
        self.strands = ((h / 2 + radii * np.sin(angles)).astype(int), (w / 2 + radii * np.cos(angles)).astype(int))
        alpha[self.strands] = 1.0                 # 48 strands, 1 px wide, 20 px long
        fg, bg = np.array([200, 120, 60]), np.stack([40 + 80 * xx / w, 60 + 0 * xx, 140 - 60 * yy / h], -1)
        self.photo = base.Env._png(tmp / "matte_photo.png", (alpha[..., None] * fg + (1 - alpha[..., None]) * bg
                                                            + 0.5).astype(np.uint8))
        low = alpha.reshape(h // 8, 8, w // 8, 8).mean((1, 3))
        low = np.clip((low - 0.5) * 2.5 + 0.5, 0, 1).repeat(8, 0).repeat(8, 1)
        self.photo_mask = base.Env._png(tmp / "matte_mask.png", (np.repeat(low[..., None], 3, -1) * 255 + 0.5)
                                        .astype(np.uint8))


@pytest.fixture(scope="module")
def assets(tmp_path_factory, reference_dir) -> Assets:
    return Assets(tmp_path_factory.mktemp("comfy_extra"), reference_dir)


@pytest.fixture(scope="module")
def server(assets):
    env = assets.env
    srv = harness.ComfyServer(
        comfy_dir=base.COMFY_DIR, python=os.environ.get("COMFY_PYTHON") or None,
        packs=[(str(base.ROOT), base.PACK_NAME)],
        models={"pdfnet": [str(env.pdfnet)], "depthanything": [str(env.dam)],
                "birefnet": [str(assets.birefnet)], "segrefiner": [str(assets.segrefiner)]})
    srv.start(timeout=300)
    for path in (env.image, assets.small, assets.coarse, assets.photo, assets.photo_mask):
        srv.put_input(str(path), path.name)
    try:
        yield srv
    finally:
        srv.stop()


def compare_workflow() -> dict:
    wf = base.workflow("compare_pdfnet_birefnet.json")
    for node in wf.values():
        if node["class_type"] == "PDFNetBiRefNetLoader":
            node["inputs"]["model_name"] = BIREFNET_FILE
    return wf


def segrefine_workflow(mode: str = "hr", model_name: str = SEGREFINER_FILE) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "small.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "small_coarse.png"}},
        "3": {"class_type": "ImageToMask", "inputs": {"image": ["2", 0], "channel": "red"}},
        "4": {"class_type": "PDFNetSegRefinerLoader", "inputs": {"model_name": model_name, "dtype": "auto"}},
        "5": {"class_type": "PDFNetSegRefine", "inputs": {"image": ["1", 0], "mask": ["3", 0],
                                                          "segrefiner_model": ["4", 0], "mode": mode, "seed": SEED}},
        "6": {"class_type": "MaskToImage", "inputs": {"mask": ["5", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "pdfnet/segrefine"}},
    }


def matting_workflow() -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "matte_photo.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "matte_mask.png"}},
        "3": {"class_type": "ImageToMask", "inputs": {"image": ["2", 0], "channel": "red"}},
        "4": {"class_type": "PDFNetMatting", "inputs": {
            "image": ["1", 0], "mask": ["3", 0], "network_size": MATTE[1] // 8, "band": 1.5, "fine_hair": 1.0,
            "edge_shift": 0, "despill": "none", "despill_color": "#00FF00", "despill_strength": 1.0,
            "foreground": "multilevel"}},
        "5": {"class_type": "MaskToImage", "inputs": {"mask": ["4", 0]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "pdfnet/alpha"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["4", 1], "filename_prefix": "pdfnet/foreground"}},
    }


# --------------------------------------------------------------------------------------------


def test_new_nodes_and_types_are_listed(server):
    nodes = server.pack_nodes(base.PACK_NAME)
    assert {"PDFNetBiRefNetLoader", "PDFNetSegRefinerLoader", "PDFNetSegRefine"} <= set(nodes), sorted(nodes)
    assert not base.pack_import_failures(server), server.import_failures()
    assert nodes["PDFNetBiRefNetLoader"]["output"] == ["BIREFNET_MODEL"]
    assert nodes["PDFNetSegRefinerLoader"]["output"] == ["SEGREFINER_MODEL"]
    # one socket, its old id, both model types
    seg = nodes["PDFNetSegment"]["input"]["required"]["pdfnet_model"]
    assert seg[0] == "PDFNET_MODEL,BIREFNET_MODEL", seg
    assert "BiRefNet" in seg[1]["tooltip"]
    assert "2048" in nodes["PDFNetSegment"]["input"]["required"]["resolution"][1]["tooltip"]
    bi = nodes["PDFNetBiRefNetLoader"]["input"]["required"]
    assert BIREFNET_FILE in bi["model_name"][1]["options"] and "BiRefNet_HR.safetensors" in bi["model_name"][1]["options"]
    assert bi["patch_order"][1]["options"] == ["auto", "legacy", "current"]
    assert "2024-11-05" in bi["patch_order"][1]["tooltip"]
    sr = nodes["PDFNetSegRefinerLoader"]["input"]["required"]
    assert "download" not in sr, "a Google-Drive-only model must not offer a download toggle"
    hr_patches = nodes["PDFNetSegRefinerLoader"]["input"]["optional"]["hr_patches"]
    assert hr_patches[1]["options"] == ["model", "bf16", "fp16"] and hr_patches[1]["default"] == "model"
    assert sr["model_name"][1]["options"] == [SEGREFINER_FILE, "segrefiner_lr_latest.pth", "segrefiner_hr_latest.pth"]
    refine = nodes["PDFNetSegRefine"]["input"]["required"]
    assert refine["segrefiner_model"][0] == "SEGREFINER_MODEL" and refine["mode"][1]["options"] == ["lr", "hr"]
    assert "2 to 4 s" in refine["mode"][1]["tooltip"] and "binary" in nodes["PDFNetSegRefine"]["description"]
    for node_id in ("PDFNetBiRefNetLoader", "PDFNetSegRefinerLoader", "PDFNetSegRefine"):
        for name, spec in nodes[node_id]["input"]["required"].items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_compare_pdfnet_and_birefnet_side_by_side(server, assets):
    from pdfnet_core import load_birefnet, segment

    env = assets.env
    result = run(server, compare_workflow())
    succeeded(result)
    h, w = base.SIZE
    stitched = read_png(files_of(result, "10")[0])
    assert stitched.shape[:2] == (h, 2 * w), stitched.shape   # PDFNet left, BiRefNet right, source size each
    cutouts = read_png(files_of(result, "12")[0])
    assert cutouts.shape == (h, 2 * w, 3)
    # the BiRefNet half is what pdfnet_core computes for this file, at the source size
    image = torch.from_numpy(rgb_of(env.image))[None]
    want = segment(image, None, load_birefnet(assets.birefnet, dtype=base.auto_dtype_of("birefnet")),
                   size=base.RESOLUTION)[0].numpy()
    assert_close_8bit(stitched[:, w:, 0], want, "BiRefNet mask")
    assert progress_of(result, "6")[-1] == (1, 1)   # BiRefNet: no depth step
    assert progress_of(result, "5")[-1] == (2, 2)   # PDFNet: depth + segmentation
    log = server.log_text()
    assert f"BiRefNet swin_v1_t (current patch order) from {BIREFNET_FILE}" in log
    # the BiRefNet segment node did not pull a depth model: only PDFNet's node has one wired
    assert log.count("Requested to load DepthAnythingV2") == 1


def test_birefnet_patch_order_is_part_of_the_model(server, assets):
    wf = compare_workflow()
    wf = {k: v for k, v in wf.items() if k in ("1", "4", "6", "8")}
    wf["20"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "pdfnet/legacy"}}
    wf["4"]["inputs"]["patch_order"] = "legacy"
    result = run(server, wf)
    succeeded(result)
    assert "BiRefNet swin_v1_t (legacy patch order)" in server.log_text()
    assert read_png(files_of(result, "20")[0]).shape[:2] == base.SIZE


def test_segrefine_hr_on_a_small_image(server, assets):
    from pdfnet_core.models.segrefiner.refiner import refine_with_segrefiner
    from pdfnet_core.models.segrefiner.loader import load_segrefiner

    result = run(server, segrefine_workflow("hr"))
    succeeded(result)
    refined = read_png(files_of(result, "7")[0])[..., 0]
    assert refined.shape == SMALL and set(np.unique(refined)) <= {0, 255}   # binary
    image = torch.from_numpy(rgb_of(assets.small))
    coarse = torch.from_numpy(rgb_of(assets.coarse)[..., 0])
    calls = []
    want = refine_with_segrefiner(load_segrefiner(assets.segrefiner), image, coarse, mode="hr", seed=SEED,
                                  progress=lambda done, total: calls.append((done, total)))
    # the node's bar moves after every UNet call: the global steps, then the patches HR picked
    bar = progress_of(result, "5")
    assert len(bar) >= 2 and bar[-1] == calls[-1] and calls[-1][0] == calls[-1][1] > 1, (bar, calls)
    assert [done for done, _ in bar] == sorted(done for done, _ in bar)
    # same seed, same CPU: the same states (a pixel may flip where a confidence sits on a threshold)
    assert np.mean((refined > 127) != (want.numpy() > 0.5)) < 0.01
    assert "SegRefiner (UNet width 32)" in server.log_text()


def test_segrefine_batch_mismatch_is_a_clear_error(server):
    wf = segrefine_workflow("lr")
    wf["20"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 3}}
    wf["21"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 2}}
    wf["5"]["inputs"]["image"] = ["20", 0]
    wf["3"]["inputs"]["image"] = ["21", 0]
    result = run(server, wf)
    assert result["status"] == "error" and result["error"]["node_type"] == "PDFNetSegRefine"
    assert "image has 3 items and mask has 2: pass one mask per item of image" in result["error"]["exception_message"]


def test_missing_segrefiner_file_names_the_manual_url_and_folder(server):
    result = run(server, segrefine_workflow("hr", "segrefiner_hr_latest.pth"))
    assert result["status"] == "rejected_http_400", result["status"]
    text = json.dumps(result["node_errors"])
    assert "https://drive.google.com/file/d/143kerk4WOerGZMqR-cAETb7rOcoQ0CQ_" in text
    assert f"models{os.sep}segrefiner" in text and "download it by hand" in text
    assert "turn on" not in text


def test_matting_node_moves_its_bar_tile_by_tile_and_gives_the_librarys_alpha(server, assets):
    from pdfnet_core import matte, matting_steps
    from nodes.adapters import matting_config

    wf = matting_workflow()
    result = run(server, wf)
    succeeded(result)
    alpha = read_png(files_of(result, "6")[0])[..., 0]
    colours = read_png(files_of(result, "7")[0])
    assert alpha.shape == MATTE and colours.shape == (*MATTE, 3)
    config = matting_config(**{k: v for k, v in wf["4"]["inputs"].items() if k not in ("image", "mask")})
    steps = matting_steps(*MATTE, config)
    assert steps == 2 + 6 + 6                    # half-size level, full level, colours: 512² tiles
    bar = progress_of(result, "4")
    assert bar[-1] == (steps, steps) and len(bar) >= 3, bar   # the bar moved within the one image
    assert [done for done, _ in bar] == sorted(done for done, _ in bar)
    image = torch.from_numpy(rgb_of(assets.photo))[None]
    mask = torch.from_numpy(rgb_of(assets.photo_mask)[..., 0])[None]
    want, want_fg = matte(image, mask, config)
    assert_close_8bit(alpha, want[0].numpy(), "matted alpha")
    assert np.abs(colours - want_fg[0].numpy() * 255).mean() < 1.0
    given = rgb_of(assets.photo_mask)[..., 0]
    assert given[assets.strands].mean() < 0.2 < alpha[assets.strands].mean() / 255 - 0.2   # strands found again
