"""What ComfyUI's frontend finds in the pack without running it: template thumbnails beside the shipped
workflows, the subgraph blueprints, and the registry metadata in pyproject.toml. Served and run by a real
ComfyUI in tests/browser/test_browser.py and tests/comfy/test_da3_and_blueprints.py."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from make_blueprints import BLUEPRINTS, CATEGORY, KEEP, api_body
from node_schemas import node_schemas

ROOT = Path(__file__).resolve().parents[2]
BLUEPRINT_FILES = sorted((ROOT / "subgraphs").glob("*.json"))


def test_every_shipped_workflow_has_a_thumbnail():
    for wf in sorted((ROOT / "workflows").glob("*.json")):
        thumb = wf.with_suffix(".jpg")      # the frontend asks for <name>.jpg
        assert thumb.is_file(), f"{thumb.name} is missing: run tests/support/make_thumbnails.py"
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and im.size == (512, 512), (thumb.name, im.format, im.size)
            assert len(np.unique(np.asarray(im.convert("L")))) > 20, f"{thumb.name} is blank"


def test_the_blueprint_files_are_the_blueprints_listed():
    assert [p.stem for p in BLUEPRINT_FILES] == sorted(BLUEPRINTS)


@pytest.mark.parametrize("path", BLUEPRINT_FILES, ids=lambda p: p.stem)
def test_blueprint_is_one_subgraph_node_built_from_its_body(path):
    bp = json.loads(path.read_text())
    (node,) = bp["nodes"]
    (subgraph,) = bp["definitions"]["subgraphs"]
    assert node["type"] == subgraph["id"] and subgraph["name"] == path.stem
    assert subgraph["category"] == CATEGORY and subgraph["description"] == BLUEPRINTS[path.stem]["description"]
    body = api_body(path.stem)
    inner = sorted(n["class_type"] for n in body.values() if n["class_type"] not in KEEP)
    assert sorted(n["type"] for n in subgraph["nodes"]) == inner
    # the blueprint's sockets are the links that crossed the subgraph's border
    images_in = sum(n["class_type"] == "LoadImage" for n in body.values())
    views = sum(n["class_type"] in ("PreviewImage", "MaskPreview") for n in body.values())
    assert len(node["inputs"]) == images_in and len(node["outputs"]) == views
    # every promoted widget is a widget input of the inner node it names
    by_id = {str(n["id"]): n for n in subgraph["nodes"]}
    for node_id, widget in node["properties"]["proxyWidgets"]:
        assert widget in {i["name"] for i in by_id[node_id]["inputs"] if "widget" in i}, (node_id, widget)
    # loaders say where their default files come from, for the frontend's missing-models dialog
    for n in subgraph["nodes"]:
        if n["type"] in ("PDFNetModelLoader", "PDFNetDepthAnythingLoader"):
            (model,) = n["properties"]["models"]
            assert model["url"].startswith("https://huggingface.co/") and model["name"] == n["widgets_values"][0]


def test_blueprints_use_only_this_pack_and_core_nodes_that_exist():
    ours = set(node_schemas())
    core = {"TripoSplatPreprocessImage", "LoadImage", "PreviewImage", "MaskPreview"}
    for spec in BLUEPRINTS.values():
        for node in spec["body"].values():
            assert node["class_type"] in ours | core, node["class_type"]


def test_registry_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy, project = meta["tool"]["comfy"], meta["project"]
    repo = project["urls"]["Repository"].removeprefix("https://github.com/")
    for key, (max_w, max_h) in {"Icon": (800, 400), "Banner": (None, None)}.items():
        url = comfy[key]
        prefix = f"https://raw.githubusercontent.com/{repo}/main/"
        assert url.startswith(prefix), (key, url)
        path = ROOT / url.removeprefix(prefix)
        assert path.is_file(), f"{key} points at {path}, which is not in the repository"
        with Image.open(path) as im:
            if max_w:
                assert im.width <= max_w and im.height <= max_h, (key, im.size)
            else:
                assert abs(im.width / im.height - 21 / 9) < 0.1, (key, im.size)   # the registry's banner shape
    # comfy-cli's rule for version specs: [operator]major.minor.patch, comma-separated
    assert all(re.fullmatch(r"(==|>=|<=|!=|~=|>|<)?\s*\d+\.\d+\.\d+", part.strip())
               for part in comfy["requires-comfyui"].split(","))
    os_values = [c for c in project["classifiers"] if c.startswith("Operating System :: ")]
    gpu_values = [c for c in project["classifiers"] if c.startswith("Environment :: ")]
    assert os_values and all(c.split(" :: ")[1] in {"Microsoft", "POSIX", "MacOS", "OS Independent"} for c in os_values)
    assert gpu_values and set(gpu_values) <= {"Environment :: GPU :: NVIDIA CUDA", "Environment :: GPU :: AMD ROCm",
                                              "Environment :: GPU :: Intel Arc", "Environment :: NPU :: Huawei Ascend",
                                              "Environment :: GPU :: Apple Metal"}
    assert {"subgraphs", "locales", "workflows", "web"} <= set(comfy["includes"])
