"""Regenerate workflows/<name>.json (UI format) from workflows/api/<name>.json with the real frontend.

The UI format is not written by hand: each API workflow is loaded by the ComfyUI frontend's own
loader (app.loadApiJson) in headless Chromium, laid out, and saved with app.graph.serialize(),
exactly what the frontend writes when a user saves. `models` metadata is added from
pdfnet_core.families. A screenshot of each goes to docs/images/workflow_<name>.png for the README.

    COMFY_DIR=... COMFY_PYTHON=... .venv/bin/python tests/support/make_ui_workflows.py [NAME ...]
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(HERE.parent), str(ROOT)]

from comfy_support import PACK_NAME, import_harness, write_test_inputs  # noqa: E402
from browser_support import UI_WORKFLOWS, maker_ready, models_of, run_jobs  # noqa: E402

MAX_PNG_BYTES = 300_000


def shrink_png(path: Path) -> None:
    """Screenshots of a graph have few colours: a 256-colour palette keeps them small and sharp."""
    from PIL import Image

    with Image.open(path) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    if path.stat().st_size > MAX_PNG_BYTES:
        with Image.open(path) as im:
            im.resize((im.width * 3 // 4, im.height * 3 // 4)).save(path, optimize=True)


def main() -> int:
    if not maker_ready():
        return 2
    harness = import_harness()
    images = ROOT / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, harness.ComfyServer(
            comfy_dir=os.environ["COMFY_DIR"], python=os.environ.get("COMFY_PYTHON") or None,
            packs=[(str(ROOT), PACK_NAME)]) as srv:
        write_test_inputs(srv, Path(tmp))
        jobs = []
        for name in sys.argv[1:] or UI_WORKFLOWS:
            api_path = ROOT / "workflows" / "api" / f"{name}.json"
            jobs.append({"mode": "export", "api": str(api_path), "ui_out": str(ROOT / "workflows" / f"{name}.json"),
                         "png": str(images / f"workflow_{name}.png"),
                         "models": models_of(json.loads(api_path.read_text()))})
        result = run_jobs(srv.url, jobs)
        print(json.dumps(result, indent=2))
        for job in jobs:
            shrink_png(Path(job["png"]))
            print(job["png"], Path(job["png"]).stat().st_size, "bytes")
        return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
