"""benchmarks/gpu_check.sh runs as it is on a lent GPU machine: checked here as a CPU dry run.

The lent machine has no network and its own python with torch; it gets the checkout plus the
carried .gpu_reference/ folder, and only what is written under $OUT comes back (at most 8 files).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402
import gpu_check_fixtures  # noqa: E402

# what runs on the lent machine (prepare_gpu_check.sh and the fixture copy run on the development one)
RUN_TIME_FILES = [BENCH / "gpu_check.sh", BENCH / "gpu_check.py", BENCH / "gpu_check_fixtures.py"]


@pytest.mark.parametrize("path", RUN_TIME_FILES, ids=lambda p: p.name)
def test_run_time_files_need_nothing_beside_the_checkout(path):
    text = path.read_text()
    for banned in (".venv", "pip install", "pip download", "../shared", "shared/reference", "huggingface.co",
                   "http://", "https://"):
        assert banned not in text, f"{path.name} mentions {banned!r}"


def test_gitignore_keeps_the_fixture_copy_and_the_output_out_of_git():
    lines = (ROOT / ".gitignore").read_text().splitlines()
    assert "/.gpu_reference/" in lines and "/gpu_out/" in lines


def test_prepared_fixtures_are_every_file_the_check_reads_and_small(reference_dir, tmp_path):
    manifest = gpu_check_fixtures.prepare(reference_dir, tmp_path / "ref")
    assert set(manifest["files"]) == set(gpu_check_fixtures.FIXTURES)
    assert manifest["bytes"] < 32 * 2**20
    assert gpu_check_fixtures.verify(tmp_path / "ref") == []
    (tmp_path / "ref" / "pdfnet" / "case256" / "logits.npy").write_bytes(b"torn")
    assert gpu_check_fixtures.verify(tmp_path / "ref") == ["pdfnet/case256/logits.npy: size or sha256 differs "
                                                           "from the manifest"]


def test_report_marks_killed_sections_and_tf32_left_off(tmp_path):
    work = tmp_path / "work"
    (work / "sections").mkdir(parents=True)
    (work / "meta.json").write_text(json.dumps({"device": "cuda", "cuda": True, "quick": False,
                                                "sections": ["env", "throughput", "compile"]}))
    defaults = {"matmul": False, "cudnn": True, "float32_matmul_precision": "highest"}
    sections = {
        "env": {"status": "run", "tf32": defaults,
                "rows": [{"name": "TF32 defaults", "value": "", "ok": None, "goal": None, "numbers": defaults}]},
        "throughput": {"status": "run", "tf32": {**defaults, "cudnn": False},
                       "rows": [{"name": "x", "value": "", "ok": None, "goal": "segment_b8",
                                 "numbers": {"images_per_s": 75.0}}]},
        "compile": {"status": "running", "tf32": defaults, "rows": []},
    }
    for name, data in sections.items():
        data.update(section=name, reason="", seconds=1.0, peak_vram_gib=None)
        (work / "sections" / f"{name}.json").write_text(json.dumps(data))
    (work / "shell.tsv").write_text("env\t30\t2.0\t0\nthroughput\t100\t50.0\t0\ncompile\t150\t155.0\t124\n")
    report, text, rc = gpu_check.build_report(work, json.loads((work / "meta.json").read_text()))
    assert report["sections"]["compile"]["status"] == "timed out"
    assert report["tf32_problems"] and rc == 1          # throughput ran with cuDNN TF32 off
    goals = {g["key"]: g for g in report["goals"]}
    assert goals["segment_b8"]["met"] is True and goals["node"]["measured_images_per_s"] is None
    assert "TF32 NOT RESTORED" in text and "MET" in text


def test_quick_cpu_dry_run_writes_every_section_under_out(reference_dir, tmp_path):
    ref = tmp_path / "ref"
    gpu_check_fixtures.prepare(reference_dir, ref)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "GPU_CHECK_CACHE")}
    env.update(OUT=str(out), PYTHON=sys.executable)
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--device", "cpu", "--quick", "--reference", str(ref)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    seconds = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    # only the three files come back from a lent machine's $OUT (at most 8 files allowed)
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.txt"]
    report = json.loads((out / "gpu_check.json").read_text())
    text = (out / "gpu_check.txt").read_text()
    assert "skipped: no CUDA" in (out / "gpu_check.log").read_text()

    sections = report["sections"]
    assert list(sections) == list(gpu_check.SECTIONS)
    for name, data in sections.items():
        assert data["status"] in ("run", "skipped"), (name, data["status"], data["reason"])
        assert f"== {name}" in text
    assert {n for n, d in sections.items() if d["status"] == "skipped"} == set(gpu_check.CUDA_ONLY)
    assert all(sections[n]["reason"] == "no CUDA" for n in gpu_check.CUDA_ONLY)
    for name in ("env", "parity", "agreement", "throughput", "node", "matting"):
        assert sections[name]["rows"], name
        assert sections[name].get("wall_s") is not None and sections[name].get("limit_s"), name

    parity = {r["name"]: r for r in sections["parity"]["rows"]}
    checks = [r for r in parity.values() if r["ok"] is not None]
    assert len(checks) >= 5 and all(r["ok"] for r in checks), checks
    assert "PDFNet v2 256² logits" in parity and parity["TF32 restored"]["ok"] is True
    assert not report["tf32_problems"]
    agreement = [r["name"] for r in sections["agreement"]["rows"]]
    assert any("fp16 vs fp32" in n for n in agreement) and any("bf16 vs fp32" in n for n in agreement)
    speeds = [r for r in sections["throughput"]["rows"] if "images_per_s" in r["numbers"]]
    assert {r["name"].split(" 64²")[0] for r in speeds} == {"PDFNet model alone", "segment() PDFNet + DAv2-S"}
    matting = {r["name"]: r for r in sections["matting"]["rows"]}
    assert matting["matte 128x96 alpha vs the CPU's"]["ok"] is True and "matte 128x96 end to end" in matting
    node = {r["name"]: r for r in sections["node"]["rows"]}
    assert node["weight uploads per run"]["numbers"]["per_run"] == [0, 0]   # on the CPU nothing moves
    assert [g["key"] for g in report["goals"]] == [g.key for g in gpu_check.GOALS]
    assert all(g["met"] is None for g in report["goals"])                  # no verdict off an H100
    assert "goal >= 60" in text and "result: all checks passed" in text
    print(f"quick CPU dry run: {seconds:.0f} s")


def test_sync_counting_names_where_each_sync_came_from(monkeypatch):
    """The syncs section's counter, without CUDA: torch reports each sync as a warning raised from C++."""
    import types
    import warnings

    import torch

    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def synchronizing_op():
        warnings.warn_explicit("called a synchronizing CUDA operation", UserWarning, "c10/cuda/CUDAFunctions.cpp", 1)

    def fn():
        for _ in range(3):
            synchronizing_op()
        warnings.warn("something else")   # not a sync
        synchronizing_op()

    count, where = gpu_check._count_syncs(types.SimpleNamespace(sync=lambda: None), fn)
    assert count == 4 and modes == ["warn", 0]
    assert len(where) == 1 and where[0][1] == 4
    assert where[0][0].startswith(f"{Path(__file__).resolve().relative_to(ROOT)}:") and "synchronizing_op" in where[0][0]
