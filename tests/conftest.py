"""Shared test fixtures: where the reference facts live, and quiet, deterministic torch."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The pack root (pdfnet_core, nodes) and the shared test helpers in support/ import by name.
for folder in (ROOT, ROOT / "tests" / "support"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

REFERENCE_DIR = Path(os.environ.get("PDFNET_REFERENCE", ROOT.parent / "shared" / "reference"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.fail(f"reference facts not found at {REFERENCE_DIR}; set PDFNET_REFERENCE")
    return REFERENCE_DIR
