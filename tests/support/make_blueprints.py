"""subgraphs/*.json: the pack's subgraph blueprints, written by the real ComfyUI frontend.

ComfyUI (0.33) serves `custom_nodes/<pack>/subgraphs/*.json` as subgraph blueprints: the node library
lists each under "Subgraph Blueprints/PDFNet" by its file name. Each one here is made from a small API
workflow (BODIES): the frontend loads it, turns every node but the image inputs and previews into one
subgraph with its own "Convert to Subgraph", and the subgraph node is written as the frontend
publishes a blueprint, with the widgets a user changes most shown on it. tests/comfy/test_blueprints.py
runs the same bodies in a real server, and tests/browser/test_browser.py runs the blueprint files.

    COMFY_DIR=... COMFY_PYTHON=... .venv/bin/python tests/support/make_blueprints.py
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT)]

from comfy_support import PACK_NAME, import_harness, write_test_inputs  # noqa: E402
from browser_support import maker_ready, models_of, run_jobs  # noqa: E402

# Nodes that stay outside the subgraph: their links become the blueprint's inputs and outputs.
KEEP = ["LoadImage", "PreviewImage", "MaskPreview"]
CATEGORY = "PDFNet"
_LOADERS = {
    "m": {"class_type": "PDFNetModelLoader", "inputs": {"model_name": "PDFNet_Best.pth", "dtype": "auto", "download": False}},
    "d": {"class_type": "PDFNetDepthAnythingLoader",
          "inputs": {"model_name": "depth_anything_v2_vits.pth", "dtype": "auto", "download": False}},
    "s": {"class_type": "PDFNetSegment", "inputs": {"image": ["in", 0], "pdfnet_model": ["m", 0], "depth_model": ["d", 0],
                                                    "resolution": 1024, "resize": "squash", "tta": False}},
}
_IN = {"in": {"class_type": "LoadImage", "inputs": {"image": "example.png"}}}
# [class_type, widget, label shown on the blueprint's node]
_MODELS = [["PDFNetModelLoader", "model_name", "pdfnet_model"], ["PDFNetDepthAnythingLoader", "model_name", "depth_model"]]

BLUEPRINTS = {
    "Remove Background (PDFNet)": {
        "description": "Removes the background with PDFNet (depth-guided): the subject over a plain colour, and its mask "
                       "(subject = 1).",
        "body": {**_IN, **_LOADERS,
                 "c": {"class_type": "PDFNetComposite", "inputs": {"foreground": ["in", 0], "mask": ["s", 0],
                                                                   "color": "#ffffff", "fit": "cover"}},
                 "o": {"class_type": "PreviewImage", "inputs": {"images": ["c", 0]}},
                 "om": {"class_type": "MaskPreview", "inputs": {"mask": ["s", 0]}}},
        "promote": [*_MODELS, ["PDFNetSegment", "resolution"], ["PDFNetComposite", "color"]],
    },
    "Replace Background (PDFNet)": {
        "description": "Puts the subject on another picture: PDFNet mask, the subject's own colours at the edges "
                       "(foreground estimation), composited over the background (cover, contain or stretch).",
        "body": {**_IN, **_LOADERS,
                 "bg": {"class_type": "LoadImage", "inputs": {"image": "background.png"}},
                 "f": {"class_type": "PDFNetEstimateForeground", "inputs": {"image": ["in", 0], "mask": ["s", 0],
                                                                            "method": "multilevel"}},
                 "c": {"class_type": "PDFNetComposite", "inputs": {"foreground": ["f", 0], "mask": ["s", 0],
                                                                   "color": "#ffffff", "fit": "cover",
                                                                   "background": ["bg", 0]}},
                 "o": {"class_type": "PreviewImage", "inputs": {"images": ["c", 0]}}},
        "promote": [*_MODELS, ["PDFNetComposite", "fit"]],
    },
    "RGBA Cut-out (PDFNet)": {
        "description": "The subject as an RGBA image (transparent background, the subject's own colours at the edges) "
                       "and its mask. Save Image writes it as a transparent PNG.",
        "body": {**_IN, **_LOADERS,
                 "f": {"class_type": "PDFNetEstimateForeground", "inputs": {"image": ["in", 0], "mask": ["s", 0],
                                                                            "method": "multilevel"}},
                 "r": {"class_type": "PDFNetToRGBA", "inputs": {"image": ["f", 0], "mask": ["s", 0]}},
                 "o": {"class_type": "PreviewImage", "inputs": {"images": ["r", 0]}},
                 "om": {"class_type": "MaskPreview", "inputs": {"mask": ["s", 0]}}},
        "promote": [*_MODELS, ["PDFNetSegment", "resolution"]],
    },
    "Cut Out and Crop for 3D (PDFNet)": {
        "description": "For image-to-3D models: the subject cut out with PDFNet, centred on a square canvas with a "
                       "margin, over black (core's TripoSplat Preprocess Image does the crop).",
        "body": {**_IN, **_LOADERS,
                 "p": {"class_type": "TripoSplatPreprocessImage", "inputs": {"image": ["in", 0], "mask": ["s", 0],
                                                                             "erode_radius": 1, "size": 1024}},
                 "o": {"class_type": "PreviewImage", "inputs": {"images": ["p", 0]}}},
        "promote": [*_MODELS, ["TripoSplatPreprocessImage", "size"]],
    },
}


def api_body(name: str) -> dict:
    """The blueprint's nodes as an API workflow with numeric ids (what /prompt and loadApiJson take)."""
    body = BLUEPRINTS[name]["body"]
    ids = {key: str(i) for i, key in enumerate(body, 1)}
    out = {}
    for key, node in body.items():
        inputs = {k: [ids[v[0]], v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
        out[ids[key]] = {"class_type": node["class_type"], "inputs": inputs}
    return out


def main() -> int:
    if not maker_ready():
        return 2
    harness = import_harness()
    (ROOT / "subgraphs").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, harness.ComfyServer(
            comfy_dir=os.environ["COMFY_DIR"], python=os.environ.get("COMFY_PYTHON") or None,
            packs=[(str(ROOT), PACK_NAME)]) as srv:
        write_test_inputs(srv, Path(tmp))
        jobs = []
        for name, spec in BLUEPRINTS.items():
            body = Path(tmp) / f"{len(jobs)}.json"
            body.write_text(json.dumps(api_body(name)))
            jobs.append({"mode": "blueprint", "api": str(body), "out": str(ROOT / "subgraphs" / f"{name}.json"),
                         "name": name, "description": spec["description"], "category": CATEGORY, "keep": KEEP,
                         "promote": spec["promote"],
                         # per loader, the file it names and where to download it (the missing-models dialog)
                         "models": {n["class_type"]: models_of({"0": n}) for n in api_body(name).values()
                                    if models_of({"0": n})}})
        result = run_jobs(srv.url, jobs)
        print(json.dumps(result, indent=2))
        return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
