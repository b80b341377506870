"""``python -m pdfnet_core train`` and ``evaluate`` end to end, as a new user types them.

Each test runs the command in a fresh interpreter (``sys.executable -m pdfnet_core``, from the
repository root) on a generated DIS5K-layout folder (ROOT/im/*.jpg, ROOT/gt/*.png, no depth/), with
the default models found through ``PDFNET_MODELS_DIR`` (``pdfnet/PDFNet_Best.pth``,
``depthanything/depth_anything_v2_vits.pth``, synthetic weights).  The images have no depth maps, so
both commands must load the default Depth-Anything-V2 from that folder: the path that once died on
``cannot import name 'DEFAULTS'``.

Kept small for two shared CPU cores: one training and one validation image of 64x64, a tiny PDFNet
for training (the released Swin-B takes minutes per update on a CPU), the full-size synthetic
PDFNet only where ``evaluate`` needs the default file, which it builds at the released size.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pdfnet_core.models.common.swin import SwinConfig
from pdfnet_core.models.pdfnet.net import PDFNet, PDFNetConfig
from pdfnet_core.train.config import to_dict
from pdfnet_core.train.synthetic import write_synthetic_dis
from synthetic_dam2 import key_shapes, synth_state_dict
from synthetic_pdfnet import synthetic_tensor

ROOT = Path(__file__).resolve().parents[2]
PDFNET_FILE = Path("pdfnet") / "PDFNet_Best.pth"
DEPTH_FILE = Path("depthanything") / "depth_anything_v2_vits.pth"
# The smallest PDFNet the training code builds (as in test_train.py).
TINY = PDFNetConfig(emb=16, swin=SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4,
                                            ape=True, pretrain_img_size=64))
TIMEOUT = 300


class Command:
    """``python -m pdfnet_core ARGS`` started now, from the repository root, in a fresh interpreter, with
    ``PDFNET_MODELS_DIR=models``; ``result()`` waits for it.  Output goes to files (no pipe to fill)."""

    def __init__(self, args: list, models: Path, logs: Path):
        env = {k: v for k, v in os.environ.items() if k not in ("PDFNET_DOWNLOAD", "PDFNET_MODELS_DIR")}
        # One thread: on shared cores a second OpenMP thread waiting for a busy core makes a tiny model's
        # training step 40x slower (0.5 s -> 21 s measured), as test_train.py's one_thread fixture notes.
        env.update(PDFNET_MODELS_DIR=str(models), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1")
        logs.mkdir(parents=True)
        self.stdout_path, self.stderr_path = logs / "stdout.txt", logs / "stderr.txt"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "pdfnet_core", *map(str, args)], cwd=ROOT, env=env,
                                         stdout=out, stderr=err, text=True)
        self._result: subprocess.CompletedProcess | None = None

    def result(self) -> subprocess.CompletedProcess:
        if self._result is None:
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._result = subprocess.CompletedProcess(self.proc.args, self.proc.returncode,
                                                       self.stdout_path.read_text(), self.stderr_path.read_text())
        return self._result


def _explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


@pytest.fixture(autouse=True)
def one_thread():
    """The checks run in this process (a depth prior, a forward pass) on one thread too: the commands
    run beside them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# fixtures: weights and data, written once for the module


def _released_size_pdfnet(reference_dir: Path) -> dict[str, torch.Tensor]:
    """The released checkpoint's 561 entries (reference keys.json) with synthetic_pdfnet's scales, drawn in
    float32 from one generator: 6x faster than its float64 per-key draws, and nothing here needs its exact
    numbers, only a network of the released size that computes finite masks."""
    keys = json.loads((reference_dir / "pdfnet" / "keys.json").read_text())
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in ((k, v["shape"]) for k, v in keys.items()):
        if key.endswith("relative_position_index") or key.startswith("IntegrityPriorLoss."):
            state[key] = synthetic_tensor(key, shape)                   # the constants, exactly
            continue
        z = torch.randn(shape, generator=g)
        if key.endswith(("relative_position_bias_table", "absolute_pos_embed")):
            state[key] = z.mul_(0.5)
        elif len(shape) == 1:
            state[key] = z.mul_(0.1).add_(1.0) if key.endswith(".weight") else z.mul_(0.05)
        else:
            gain = 4.0 if key.startswith("decoder.Bside.") else 1.0
            state[key] = z.mul_(gain / math.sqrt(math.prod(shape[1:])))
    return state


@pytest.fixture(scope="module")
def weights(reference_dir, tmp_path_factory) -> dict[str, Path]:
    """The synthetic default files at their released sizes, and a tiny PDFNet checkpoint to fine-tune."""
    folder = tmp_path_factory.mktemp("weights")
    files = {"full": folder / "PDFNet_Best.pth", "depth": folder / "depth_anything_v2_vits.pth",
             "tiny": folder / "PDFNet_tiny.pth"}
    torch.save(_released_size_pdfnet(reference_dir), files["full"])
    torch.save(synth_state_dict(key_shapes(reference_dir, "vits")), files["depth"])
    # the synthetic recipe on the tiny model's shapes; the window index is a constant of its 4x4 window
    shapes = PDFNet(TINY).state_dict()
    torch.save({k: v if k.endswith("relative_position_index") else synthetic_tensor(k, list(v.shape))
                for k, v in shapes.items()}, files["tiny"])
    return files


def _models_dir(root: Path, weights: dict[str, Path], pdfnet: str, depth: bool) -> Path:
    """A fresh PDFNET_MODELS_DIR: PDFNet ``pdfnet`` ("full" or "tiny"), and the vits depth model or none."""
    root.mkdir(parents=True)
    _link_or_copy(weights[pdfnet], root / PDFNET_FILE)
    if depth:
        _link_or_copy(weights["depth"], root / DEPTH_FILE)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """DATA/TR and DATA/VD in the DIS5K layout, one 64x64 image each, without depth maps."""
    root = tmp_path_factory.mktemp("data")
    write_synthetic_dis(root / "TR", 1, (64, 64), seed=1, with_depth=False)
    write_synthetic_dis(root / "VD", 1, (64, 64), seed=2, with_depth=False)
    assert not (root / "TR" / "depth").exists() and not (root / "VD" / "depth").exists()
    return root


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps({"model": to_dict(TINY)}))
    return path


def _train_args(data: Path, out: Path, init: Path, config: Path) -> list:
    return ["train", data / "TR", "--val", data / "VD", "--out", out, "--size", "64", "--max-steps", "2",
            "--init", init, "--config", config, "--no-progress", "--workers", "0", "--device", "cpu"]


def _evaluate_args(preds: Path, data: Path) -> list:
    return ["evaluate", preds, data, "--subsets", "VD", "--model", "pdfnet", "--size", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(weights, data, tiny_config, tmp_path_factory):
    """The four commands, started together (one thread each: the two cores work for all of them); each
    test waits for its own.  ``models``/``out`` name its models folder and output folder."""
    root = tmp_path_factory.mktemp("runs")
    setups = {   # name: (models folder, output folder, arguments)
        "train": (_models_dir(root / "models_tiny", weights, "tiny", depth=True), root / "train_run", _train_args),
        "evaluate": (_models_dir(root / "models_full", weights, "full", depth=True), root / "preds", None),
        "train_no_depth_model": (_models_dir(root / "models_tiny_only", weights, "tiny", depth=False),
                                 root / "train_run_no_depth_model", _train_args),
        "evaluate_no_models": (root / "models_empty", root / "preds_no_models", None),
    }
    setups["evaluate_no_models"][0].mkdir()
    started = {}
    for name, (models, out, train_args) in setups.items():
        args = train_args(data, out, models / PDFNET_FILE, tiny_config) if train_args else _evaluate_args(out, data)
        started[name] = Command(args, models, root / "logs" / name)
        started[name].models, started[name].out = models, out
    yield started
    for command in started.values():
        if command.proc.poll() is None:
            command.proc.kill()
            command.proc.wait()


# --------------------------------------------------------------------------------------------
# train


def test_train_fills_the_depth_cache_with_the_default_depth_model(runs, data):
    pytest.importorskip("timm")            # train needs it before anything else
    run = runs["train"]
    proc, models, out = run.result(), run.models, run.out
    assert proc.returncode == 0, _explain(proc)
    assert "Traceback" not in proc.stderr, _explain(proc)
    assert "loading the depth model for images without depth maps" in proc.stdout

    # the depth maps computed by the default Depth-Anything-V2, one per image of each set, at the image size
    cached = sorted(out.joinpath("depth_cache").rglob("*.png"))
    assert len(cached) == 2, _explain(proc)
    assert sorted(p.stem for p in cached) == sorted(p.stem for p in (data / "TR" / "im").iterdir()) + \
        sorted(p.stem for p in (data / "VD" / "im").iterdir())
    for path in cached:
        depth = np.asarray(Image.open(path))
        assert depth.shape == (64, 64) and depth.dtype == np.uint8
        assert depth.max() > depth.min()          # a real prediction, not a blank placeholder
    # ... and it is the prior of the models folder's Depth-Anything-V2 (up to one 8-bit step of rounding)
    from pdfnet_core import depth_prior, load_depth_anything
    from pdfnet_core.train.data import read_gray, read_rgb

    image = next((data / "VD" / "im").iterdir())
    want = depth_prior([read_rgb(image).permute(1, 2, 0)], load_depth_anything(models / DEPTH_FILE))[0]
    got = read_gray(next(p for p in cached if p.stem == image.stem and p.parent.name.startswith("VD")))[0]
    assert got.shape == want.shape and (got - want).abs().max() <= 1 / 255 + 1e-6

    # logs: two updates, one validation at the end
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [int(r["update"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    val = list(csv.DictReader((out / "val_log.csv").open()))
    assert len(val) == 1 and "max_f" in val[0]
    assert json.loads((out / "config.json").read_text())["models_dir"] is None    # found through the environment
    checkpoint = torch.load(out / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    assert "model" in checkpoint

    # the saved model loads back with the public loader and runs
    from pdfnet_core import load_pdfnet

    model = load_pdfnet(out / "model.pth", config=TINY)
    assert model.config.revision == "v2"
    with torch.no_grad():
        alpha = model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 1, 64, 64))
    assert alpha.shape[-2:] == (64, 64) and torch.isfinite(alpha).all()


def test_train_without_the_default_depth_model_names_its_folder(runs):
    pytest.importorskip("timm")
    run = runs["train_no_depth_model"]
    proc = run.result()
    assert proc.returncode == 2, _explain(proc)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, _explain(proc)
    assert "error:" in proc.stderr and DEPTH_FILE.name in proc.stderr, _explain(proc)
    assert str(run.models / DEPTH_FILE.parent) in proc.stderr, _explain(proc)
    assert not (run.out / "model.pth").exists()


# --------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_runs_the_default_pdfnet_and_writes_the_metrics(runs, data):
    pytest.importorskip("py_sod_metrics")
    proc, preds = runs["evaluate"].result(), runs["evaluate"].out
    assert proc.returncode == 0, _explain(proc)
    assert "Traceback" not in proc.stderr, _explain(proc)

    written = sorted((preds / "pdfnet" / "VD").glob("*.png"))
    assert [p.stem for p in written] == sorted(p.stem for p in (data / "VD" / "im").iterdir())
    for path in written:
        mask = Image.open(path)
        assert mask.mode == "L" and mask.size == (64, 64)
    assert not list(preds.rglob("*.partial"))

    rows = list(csv.DictReader((preds / "metrics.csv").open()))
    assert [(r["pipeline"], r["subset"], r["images"]) for r in rows] == [("pdfnet", "VD", "1")]
    scores = {k: float(v) for k, v in rows[0].items() if k not in ("pipeline", "subset", "images")}
    assert scores and all(np.isfinite(v) for v in scores.values())
    table = (preds / "metrics.md").read_text().splitlines()
    assert len(table) == 3 and table[2].startswith("| pdfnet | VD | 1 |")
    assert (preds / "pr_curve.png").is_file() and (preds / "f_curve.png").is_file()


def test_evaluate_with_an_empty_models_folder_names_the_missing_file(runs):
    """A first run with nothing installed: the segmenter is the first file wanted (the depth model
    after it); the error says which file and which folder, with no traceback and nothing written."""
    pytest.importorskip("py_sod_metrics")
    run = runs["evaluate_no_models"]
    proc = run.result()
    assert proc.returncode == 2, _explain(proc)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, _explain(proc)
    assert "error:" in proc.stderr and PDFNET_FILE.name in proc.stderr, _explain(proc)
    assert str(run.models / PDFNET_FILE.parent) in proc.stderr, _explain(proc)
    assert not (run.out / "metrics.csv").exists() and not list(run.out.rglob("*.png"))
