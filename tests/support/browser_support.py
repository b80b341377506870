"""Running tests/browser/comfy_page.mjs (headless Chromium via playwright-core) from Python.

Nothing is downloaded here: Chromium is Debian's (/usr/bin/chromium or $CHROMIUM) and
playwright-core comes from the npm registry, installed outside the repository or in the ignored
.browser/ folder ($PW_DIR: the folder holding node_modules/playwright-core).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("comfy_page.mjs")
PW_CANDIDATES = [os.environ.get("PW_DIR", ""), str(ROOT / ".browser"), str(ROOT.parent / "pw")]


def chromium() -> str | None:
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def playwright_dir() -> str | None:
    for folder in PW_CANDIDATES:
        if folder and (Path(folder) / "node_modules" / "playwright-core" / "package.json").is_file():
            return folder
    return None


def missing_tools() -> str | None:
    """Why the browser cannot be driven here, or None when it can."""
    if not shutil.which("node"):
        return "node is not installed"
    if not chromium():
        return "Debian's chromium is not installed (apt-get install chromium)"
    if not playwright_dir():
        return f"playwright-core not found in {[p for p in PW_CANDIDATES if p]} (npm install playwright-core; set PW_DIR)"
    return None


def maker_ready() -> bool:
    """Whether the scripts that write shipped files through the real frontend (make_ui_workflows,
    make_blueprints) can run here: a browser and COMFY_DIR; the reason is printed when not."""
    why = missing_tools() or (None if os.environ.get("COMFY_DIR") else "COMFY_DIR is not set")
    if why:
        print(why, file=sys.stderr)
    return why is None


def run_jobs(url: str, jobs: list[dict], timeout: float = 900) -> dict:
    with tempfile.TemporaryDirectory(prefix="pdfnet-browser-") as tmp:
        spec = Path(tmp) / "jobs.json"
        spec.write_text(json.dumps({"url": url, "jobs": jobs}))
        env = dict(os.environ, PW_DIR=playwright_dir() or "", CHROMIUM=chromium() or "")
        proc = subprocess.run(["node", str(SCRIPT), str(spec)], capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=tmp)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"comfy_page.mjs failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


# The shipped UI workflows (workflows/<name>.json), each with its API twin workflows/api/<name>.json.
UI_WORKFLOWS = ("remove_background", "replace_background", "depth_and_mask", "batch_folder",
                "remove_background_external_depth", "generative_background", "refine_composite",
                "depth_estimate", "depth_anything_3", "hair_matting")

# Weights that are not this pack's (so not in the registry of pdfnet_core.families): where ComfyUI's own templates
# point for them.
OTHER_MODELS = {
    "v1-5-pruned-emaonly-fp16.safetensors": {
        "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
               "v1-5-pruned-emaonly-fp16.safetensors",
        "directory": "checkpoints"},
    # core's Depth Anything 3 (Apache-2.0), as its own blueprint "Image Depth Estimation (Depth Anything 3)" names it
    "depth_anything_3_mono_large.safetensors": {
        "url": "https://huggingface.co/Comfy-Org/Depth-Anything-3/resolve/main/geometry_estimation/"
               "depth_anything_3_mono_large.safetensors",
        "directory": "geometry_estimation"},
}
MODEL_INPUTS = ("model_name", "ckpt_name")


def models_of(api: dict) -> list[dict]:
    """`models` metadata ({name, url, directory}) for every weight file an API workflow names."""
    from pdfnet_core.families import lookup
    from pdfnet_core.specs import hf_url

    out = []
    for node in api.values():
        for key in MODEL_INPUTS:
            name = node["inputs"].get(key)
            if not isinstance(name, str) or any(m["name"] == name for m in out):
                continue
            entry = lookup(name)
            if entry is not None:
                out.append({"name": name, "url": hf_url(entry), "directory": entry.folder_key})
            elif name in OTHER_MODELS:
                out.append({"name": name, **OTHER_MODELS[name]})
    return out
