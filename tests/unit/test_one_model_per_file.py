"""One weight file at one dtype on one device is one model in the process, whichever path asked first.

Every path that loads a model goes through ``pdfnet_core.load_cached``: the default models of the
library, the batch engine behind ``cutout``, the ComfyUI loader nodes, training's depth model and
``evaluate``'s pipelines.  Here each asks for the same Depth-Anything-V2 file, in two orders.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pdfnet_core
import pdfnet_core.cache
from nodes import host
from nodes import model_files as mf
from pdfnet_core.batch import stages
from pdfnet_core.batch.config import CutoutConfig
from pdfnet_core.cache import ModelCache
from pdfnet_core.defaults import default_model
from pdfnet_core.train.config import TrainConfig
from pdfnet_core.train.evaluate import PipelineModels
from pdfnet_core.train.loop import _load_depth_model
from synthetic_dam2 import key_shapes, synth_state_dict
from test_nodes import comfy  # noqa: F401  (the ComfyUI stand-ins, a fixture)

DEPTH = "depth_anything_v2_vits.pth"


@pytest.fixture()
def models_dir(comfy, reference_dir, monkeypatch) -> Path:  # noqa: F811
    """ComfyUI's models folder (the stand-in's) is also $PDFNET_MODELS_DIR, holding one depth file."""
    host.register_model_folders()
    root = Path(comfy.folder_paths.models_dir)
    (root / "depthanything").mkdir(parents=True)
    torch.save(synth_state_dict(key_shapes(reference_dir, "vits")), root / "depthanything" / DEPTH)
    monkeypatch.setenv("PDFNET_MODELS_DIR", str(root))
    monkeypatch.setattr(pdfnet_core.cache, "_DEFAULT_CACHE", ModelCache(budget_bytes=1 << 34))
    return root


PATHS = {
    "library default": lambda root: default_model("depth_anything").module,
    "cutout (batch engine)": lambda root: stages.load_depth_model(
        CutoutConfig(inputs=("x.png",), out=root / "out", device="cpu", models_dir=root)).module,
    "ComfyUI loader node": lambda root: mf.load_model("depth_anything", DEPTH, "fp32").module,
    "train's depth model": lambda root: _load_depth_model(TrainConfig(train_dirs=(root,), out_dir=root, models_dir=root),
                                                          torch.device("cpu")).module,
    "evaluate's pipelines": lambda root: PipelineModels(models_dir=root).get("depth_anything").module,
}


@pytest.mark.parametrize("first", ["ComfyUI loader node", "cutout (batch engine)"])
def test_every_path_gets_the_same_model_from_one_load(models_dir, first):
    order = [first] + [name for name in PATHS if name != first]
    models = {name: PATHS[name](models_dir) for name in order}
    assert len({id(m) for m in models.values()}) == 1, {n: id(m) for n, m in models.items()}
    stats = pdfnet_core.default_cache().stats()
    assert stats.loads == 1 and stats.hits == len(PATHS) - 1
