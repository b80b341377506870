"""The pack's web extension and shipped UI workflows in the real ComfyUI frontend, in headless Chromium.

Runs when COMFY_DIR is set (see test_comfy_integration.py) and node, Debian's chromium and
playwright-core are available (tests/browser/support.py); skipped otherwise. The server and the
browser stay on loopback; the page refuses every other host.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from comfy_support import COMFY_DIR, PACK_NAME, ROOT, SIZE, Env, import_harness, serve

pytestmark = pytest.mark.comfy

if not COMFY_DIR:
    pytest.skip("COMFY_DIR is not set: no ComfyUI to run the browser tests against", allow_module_level=True)

from browser_support import UI_WORKFLOWS, missing_tools, run_jobs  # noqa: E402

_WHY = missing_tools()
if _WHY:
    pytest.skip(f"no browser to drive: {_WHY}", allow_module_level=True)

harness = import_harness()
SHOTS = ROOT / "out" / "browser"          # ignored by git (/out/)
EXTENSIONS = {"pdfnet.compare", "pdfnet.color"}
SYNTHETIC = {"PDFNetModelLoader": {"model_name": "synthetic_pdfnet.pth"},
             "PDFNetDepthAnythingLoader": {"model_name": "synthetic_dav2_vits_fp32.safetensors"},
             "PDFNetSegment": {"resolution": 256}}


@pytest.fixture(scope="module")
def env(tmp_path_factory, reference_dir) -> Env:
    return Env(tmp_path_factory.mktemp("browser_assets"), reference_dir)


@pytest.fixture(scope="module")
def server(env, tmp_path_factory):
    yield from serve(env, harness, tmp_path_factory.mktemp("browser_inputs"))


def test_every_node_has_a_help_page_served(server):
    nodes = server.pack_nodes(PACK_NAME)
    assert "PDFNetCompare" in nodes
    for node_id in nodes:
        assert (ROOT / "web" / "docs" / f"{node_id}.md").is_file(), f"web/docs/{node_id}.md is missing"
        text = server.get_bytes(f"/extensions/{PACK_NAME}/docs/{node_id}.md").decode()
        assert text.startswith("# "), (node_id, text[:80])
    served = server.pack_extensions(PACK_NAME)
    assert any(u.endswith("/compare.js") for u in served) and any(u.endswith("/color.js") for u in served), served


def test_ui_workflows_load_with_no_missing_node(server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    jobs = [{"mode": "check", "ui": str(ROOT / "workflows" / f"{n}.json"), "png": str(SHOTS / f"load_{n}.png")}
            for n in UI_WORKFLOWS]
    out = run_jobs(server.url, jobs)
    assert out["ok"], out
    for res in out["results"]:
        print(f"{Path(res['ui']).name}: {res['loaded']} nodes, missing={res['missing']}, screenshot {res['png']}")
        assert res["missing"] == [] and res["unbuilt"] == [], res
        assert res["loaded"] == res["in_file"], res
        assert EXTENSIONS <= set(res["extensions"]), res["extensions"]
        assert all(res["compare_widgets"]), res
        assert all(res["color_pickers"]), res
        assert all(v == "#12ab9f" for v in res["color_roundtrip"]), res["color_roundtrip"]
    print("extensions registered:", sorted(e for e in out["results"][0]["extensions"] if e.startswith("pdfnet.")))
    print("color widget types:", {Path(r["ui"]).stem: r["color_widget_types"] for r in out["results"]
                                   if r["color_widget_types"]})


def test_remove_background_runs_and_the_comparer_gets_both_images(server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    png = SHOTS / "remove_background_compare.png"
    out = run_jobs(server.url, [{"mode": "check", "ui": str(ROOT / "workflows" / "remove_background.json"),
                                 "png": str(png), "queue": True, "widgets": SYNTHETIC}])
    assert out["ok"], out
    res = out["results"][0]
    assert res["run"]["ok"], (res["run"], server.log_tail(40))
    (compare,) = res["compare"]
    h, w = SIZE
    assert compare["pairs"] == 1, compare
    assert compare["before"][0][:2] == [w, h] and compare["after"][0][:2] == [w, h], compare
    assert "type=temp" in compare["before"][0][2] and "type=temp" in compare["after"][0][2], compare
    assert compare["before"][0][2] != compare["after"][0][2]
    print(f"comparer received: {compare}")
    print(f"screenshot: {png}")
    assert png.is_file() and png.stat().st_size > 10_000
