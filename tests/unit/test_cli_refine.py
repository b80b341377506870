"""``cutout`` does what the nodes do, as typed (``python -m pdfnet_core``'s entry point in a fresh
interpreter, every command line of the file in one): any known or given BiRefNet file through --model,
and the refinement flags of PDFNet Refine Mask with their defaults.  Synthetic weights, small photos."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pdfnet_core.ops.refine import fill_holes, grow_mask, threshold_mask
from pdfnet_core.weights import save_safetensors
from synthetic_birefnet import synthetic_state_dict

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(reference_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    (root / "birefnet").mkdir()
    # Swin-T under the name of a known legacy-order file; the same weights under an unknown name (a
    # hard link: another path, so the model cache loads it on its own)
    save_safetensors(synthetic_state_dict(reference_dir, "swin_v1_t"), root / "birefnet" / "BiRefNet_lite.safetensors",
                     "fp16")
    os.link(root / "birefnet" / "BiRefNet_lite.safetensors", root / "mine.safetensors")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    src = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (64, 96), "b.png": (80, 64)}.items():
        img = np.full((h, w, 3), 40, np.uint8)
        img[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = rng.integers(100, 255, (h // 2, w // 2, 3))
        Image.fromarray(img).save(src / name)
    return src


CLI_FLAGS = ("--size", "64", "--device", "cpu", "--dtype", "fp32", "--no-rgba", "--mask", "-q")

# Several command lines in one fresh interpreter, each run as ``python -m pdfnet_core ARGS`` runs it
# (runpy of the package's __main__ with that argv), with its exit status and stderr: one interpreter
# start and one model cache for all ten (starting torch is most of a run's time on a busy machine).
DRIVER = """
import contextlib, io, json, runpy, sys
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    sys.argv = ["pdfnet_core", *argv]
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_module("pdfnet_core", run_name="__main__", alter_sys=True)
            status = None
        except SystemExit as exc:
            status = exc.code
    results.append({"status": status, "stderr": err.getvalue()})
print("RESULTS " + json.dumps(results))
"""


def _env(models: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PDFNET_DOWNLOAD", "PDFNET_MODELS_DIR")}
    env.update(PDFNET_MODELS_DIR=str(models), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def _argv(*args) -> list[str]:
    return ["cutout", *map(str, args), *CLI_FLAGS]


def _mask(folder: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(folder / f"{name}_mask.png"))


BAD_FLAGS = [
    (["--model", "depth_anything_v2_vits.pth"], "not a segmentation model"),
    (["--model", "nosuch.pth"], "is not one of pdfnet, birefnet"),
    (["--model", "BiRefNet_lite.safetensors", "--weights", "x.pth"], "--weights goes with --model"),
    (["--threshold-high", "0.8"], "--threshold-high needs --threshold"),
    (["--threshold", "1.5"], "--threshold must be in 0..1"),
    (["--feather", "-1"], "--feather must not be negative"),
]


@pytest.fixture(scope="module")
def runs(models, photos, tmp_path_factory):
    """Every run the checks need, in one interpreter (DRIVER): {name: {"status", "stderr"}}."""
    out = tmp_path_factory.mktemp("runs")
    named = {
        "plain": _argv(photos, "--out", out / "plain", "--model", "BiRefNet_lite.safetensors"),
        # the same weights under a name the registry does not know: told 'legacy', and auto ('current')
        "legacy": _argv(photos, "--out", out / "legacy", "--model", models / "mine.safetensors",
                        "--patch-order", "legacy"),
        "auto": _argv(photos, "--out", out / "auto", "--model", "birefnet", "--weights", models / "mine.safetensors"),
        "refined": _argv(photos, "--out", out / "refined", "--model", "BiRefNet_lite.safetensors", "--threshold",
                         "0.5", "--grow=-2", "--fill-holes"),
    }
    named.update({f"bad{i}": _argv(photos, "--out", out / f"bad{i}", *args) for i, (args, _) in enumerate(BAD_FLAGS)})
    driver = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(list(named.values()))], cwd=ROOT,
                            env=_env(models), capture_output=True, text=True, timeout=600)
    line = next((x for x in driver.stdout.splitlines() if x.startswith("RESULTS ")), None)
    assert driver.returncode == 0 and line is not None, driver.stderr
    results = dict(zip(named, json.loads(line.removeprefix("RESULTS "))))
    assert results["plain"]["status"] == 0, results["plain"]["stderr"]
    return out, results


def test_a_known_birefnet_file_runs_without_a_depth_model(runs):
    mask = _mask(runs[0] / "plain", "a")
    assert mask.shape == (64, 96) and len(np.unique(mask)) > 2   # a soft mask at the source size


def test_a_given_file_runs_with_the_patch_order_it_is_told(runs):
    # the same weights under a name the registry does not know: auto is 'current', told 'legacy'
    # it gives the known file's masks exactly
    out, results = runs
    assert results["legacy"]["status"] == 0 and results["auto"]["status"] == 0, results
    assert np.array_equal(_mask(out / "legacy", "a"), _mask(out / "plain", "a"))
    assert not np.array_equal(_mask(out / "auto", "a"), _mask(out / "plain", "a"))


def test_refinement_flags_act_like_the_node_in_its_order(runs):
    out, results = runs
    assert results["refined"]["status"] == 0, results["refined"]["stderr"]
    refined, soft = _mask(out / "refined", "b"), _mask(out / "plain", "b")
    assert set(np.unique(refined)) <= {0, 255}
    expect = grow_mask(fill_holes(threshold_mask(torch.from_numpy(soft / 255.0).float()[None], 0.5)), -2)
    expect = expect[0].numpy() * 255
    # the same steps on the 8-bit copy of the soft mask: equal but where 8-bit rounding crosses 0.5
    assert np.mean(refined == expect) > 0.98 and not np.array_equal(refined, (soft >= 128) * 255)


@pytest.mark.parametrize("index", range(len(BAD_FLAGS)), ids=[args[-1] for args, _ in BAD_FLAGS])
def test_bad_model_and_refinement_flags_are_usage_errors_before_any_model_loads(runs, index):
    out, results = runs
    result, message = results[f"bad{index}"], BAD_FLAGS[index][1]
    assert result["status"] == 2 and message in result["stderr"], result
    assert not (out / f"bad{index}" / "a_mask.png").exists()
