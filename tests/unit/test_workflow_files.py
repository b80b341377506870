"""The shipped workflow files, without ComfyUI: each UI workflow (as the frontend saved it) matches its
API twin and names its weights in `models` with download URLs. Loading and running them in a real
ComfyUI and browser is in test_workflows.py and test_browser.py."""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
from browser_support import UI_WORKFLOWS, models_of  # noqa: E402


def _ui(name: str) -> dict:
    return json.loads((ROOT / "workflows" / f"{name}.json").read_text())


def test_ui_workflows_match_their_api_twins():
    for name in UI_WORKFLOWS:
        ui = _ui(name)
        api = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
        assert ui["version"] == 0.4, (name, ui.get("version"))
        assert sorted(n["type"] for n in ui["nodes"]) == sorted(n["class_type"] for n in api.values()), name
        assert ui.get("models") == models_of(api), name
        for m in ui["models"]:
            assert m["url"].startswith("https://huggingface.co/") and "/resolve/main/" in m["url"], m


def test_every_ui_workflow_is_listed():
    assert {p.stem for p in (ROOT / "workflows").glob("*.json")} == set(UI_WORKFLOWS)
