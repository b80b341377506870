"""``python -m pdfnet_core models``, as typed: the known files with licence, size and presence."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _models(models_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PDFNET_DOWNLOAD", "PDFNET_MODELS_DIR")}
    env.update(PDFNET_MODELS_DIR=str(models_dir), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "pdfnet_core", "models", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _row(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(name + " "))


def test_models_lists_licence_size_and_what_is_on_disk(tmp_path):
    (tmp_path / "birefnet").mkdir()
    (tmp_path / "birefnet" / "BiRefNet_lite.safetensors").write_bytes(b"\0" * 3 * 2**20)
    proc = _models(tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    lite = _row(out, "BiRefNet_lite.safetensors").split()
    assert lite[1:5] == ["BiRefNet", "3", "MiB", "yes"]                        # the size on disk, exact
    assert out.count("MIT, commercial use allowed") > 10
    assert _row(out, "BiRefNet_HR.safetensors").split()[1:4] == ["BiRefNet", "~844", "MiB"]   # published, approx
    vitl = _row(out, "depth_anything_v2_vitl.pth")
    assert " no " in vitl and vitl.endswith("CC-BY-NC-4.0, non-commercial use only")
    assert "no (bring your own)" in _row(out, "RMBG-2.0.safetensors")
    assert "no (bring your own)" in _row(out, "segrefiner_hr_latest.pth")
    for name in ("birefnet_finetuned_toonout.pth", "lucida.safetensors", "PDFNet_Best.pth"):
        assert _row(out, name)
    assert f"models folder: {tmp_path}" in out
    assert "RMBG-2.0.safetensors: RMBG-2.0 (BRIA; BiRefNet Swin-L)" in out and "briaai/RMBG-2.0" in out


def test_models_commercial_only_leaves_out_the_non_commercial_files(tmp_path):
    proc = _models(tmp_path, "--commercial-only", "--models-dir", str(tmp_path / "other"))
    assert proc.returncode == 0, proc.stderr
    assert "non-commercial" not in proc.stdout and "RMBG-2.0" not in proc.stdout
    assert "depth_anything_v2_vitb" not in proc.stdout and _row(proc.stdout, "depth_anything_v2_vits.pth")
    assert f"models folder: {tmp_path / 'other'}" in proc.stdout
