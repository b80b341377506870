"""The pack's web extension and shipped UI workflows in the real ComfyUI frontend, in headless Chromium.

Runs when COMFY_DIR is set (see test_comfy_integration.py) and node, Debian's chromium and
playwright-core are available (tests/browser/support.py); skipped otherwise. The server and the
browser stay on loopback; the page refuses every other host.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
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
        # core's slider widget on this server (ComfyUI 0.33); the pack's own only where core has none
        assert all(w == "imagecompare" for w in res["compare_widgets"]), res
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


# ------------------------------------------------------------------------------------------------
# Both renderers: the classic LiteGraph canvas and Nodes 2.0 (Comfy.VueNodes.Enabled, DOM nodes).
# Tooltips off: one would cover the picture where the pointer stops.
RENDERERS = {"classic": False, "nodes2": True}
ORANGE = (200, 120, 60)      # the disk of the test image (comfy_support.Env)
TEAL = (0x12, 0xAB, 0x9F)


def _settings(vue: bool) -> dict:
    return {"Comfy.VueNodes.Enabled": vue, "Comfy.EnableTooltips": False}


def _rgb(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def _near(img: np.ndarray, colour, tol: int = 30) -> int:
    return int((np.abs(img - np.array(colour)).max(-1) <= tol).sum())


def _view_rgb(server, url: str) -> np.ndarray:
    """A preview the comparer was given, as the page fetched it, over mid-grey where transparent."""
    from PIL import Image

    with Image.open(io.BytesIO(server.get_bytes(url.removeprefix("/api")))) as im:
        rgba = np.asarray(im.convert("RGBA")).astype(float)
    alpha = rgba[..., 3:] / 255
    return rgba[..., :3] * alpha + 128 * (1 - alpha)


@pytest.mark.parametrize("renderer", RENDERERS)
def test_compare_slider_shows_the_result(server, renderer):
    """Run remove_background from the UI, then look at the comparer: before the run no picture; with the
    pointer at the picture's right edge the input fills it (the test image's orange disk); at its left
    edge the result does, so the two views differ wherever the result differs from the input."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    shots = {k: str(SHOTS / f"compare_{renderer}_{k}.png") for k in ("empty", "left", "right")}
    out = run_jobs(server.url, [{"mode": "slider", "ui": str(ROOT / "workflows" / "remove_background.json"),
                                 "widgets": SYNTHETIC, "settings": _settings(RENDERERS[renderer]), "shots": shots}])
    assert out["ok"], out
    res = out["results"][0]
    assert res["vue"] is RENDERERS[renderer], res
    assert res["run"]["ok"], (res["run"], server.log_tail(40))
    # one widget for both renderers: core's IMAGECOMPARE, given the two previews' URLs
    assert res["loaded"]["widget"] == "imagecompare", res["loaded"]
    value = res["loaded"]["value"]
    assert len(value["beforeImages"]) == len(value["afterImages"]) == 1, value
    empty, left, right = (_rgb(shots[k]) for k in ("empty", "left", "right"))
    assert empty.shape == left.shape == right.shape
    assert _near(empty, ORANGE) < 50, "a picture before the run"
    assert _near(right, ORANGE) > 2000, f"the input is not visible: {_near(right, ORANGE)} orange pixels"
    # where the result's pixels differ from the input's, the two views must too (the renderers draw a
    # transparent result over different backdrops: a checkerboard, or the node's dark surface)
    diff = np.abs(left - right).max(-1)
    before, after = (_view_rgb(server, value[k][0]) for k in ("beforeImages", "afterImages"))
    result_differs = (np.abs(before - after).max(-1) > 40).mean()
    print(f"{renderer}: {_near(right, ORANGE)} orange px with the input shown; the two views differ by "
          f"{diff.mean():.1f}/255 on average, by more than 16 on {(diff > 16).mean():.1%} of the node; the result "
          f"differs from the input on {result_differs:.1%} of its pixels; shots {shots}")
    if result_differs > 0.05:
        assert diff.mean() > 10 and (diff > 16).mean() > 0.2, "the result is not drawn where it differs from the input"


@pytest.mark.parametrize("renderer", RENDERERS)
def test_colour_picker_draws_and_opens(server, renderer):
    SHOTS.mkdir(parents=True, exist_ok=True)
    png = SHOTS / f"colour_{renderer}.png"
    out = run_jobs(server.url, [{"mode": "picker", "ui": str(ROOT / "workflows" / "replace_background.json"),
                                 "widgets": {"PDFNetComposite": {"color": "#12ab9f"}}, "png": str(png),
                                 "settings": _settings(RENDERERS[renderer])}])
    assert out["ok"], out
    res = out["results"][0]
    assert res["vue"] is RENDERERS[renderer], res
    # the colour is drawn on the node (core's colour widget shows a swatch on both renderers)
    assert _near(_rgb(png), TEAL, tol=12) > 30, f"no swatch of #12ab9f in {png}"
    # a real click on "pick colour…" opens the browser's colour dialog (an <input type=color>)
    assert res["click"]["found"] and res["click"]["opened"] == 1, res["click"]


def test_template_browser_lists_the_workflows_with_thumbnails(server):
    listed = json.loads(server.get_bytes("/workflow_templates"))
    assert sorted(listed[PACK_NAME]) == sorted(UI_WORKFLOWS), listed
    for name in UI_WORKFLOWS:
        assert server.get_bytes(f"/api/workflow_templates/{PACK_NAME}/{name}.jpg")[:3] == b"\xff\xd8\xff", name
    SHOTS.mkdir(parents=True, exist_ok=True)
    png = SHOTS / "templates.png"
    out = run_jobs(server.url, [{"mode": "templates", "pack": PACK_NAME, "png": str(png)}])
    assert out["ok"], out
    res = out["results"][0]
    assert res["category"], "no category for the pack in the template browser"
    cards = [c for c in res["cards"] if c["alt"] in UI_WORKFLOWS]
    # the cards in view have loaded their thumbnails (the rest load when scrolled to)
    assert len(cards) >= 3 and all(c["w"] == c["h"] == 512 for c in cards), res["cards"]
    print(f"template cards with thumbnails: {sorted(c['alt'] for c in cards)}; screenshot {png}")


def test_blueprints_are_served_and_one_runs_in_the_frontend(server):
    listed = json.loads(server.get_bytes("/global_subgraphs"))
    ours = sorted(e["name"] for e in listed.values() if e["info"]["node_pack"] == f"custom_nodes.{PACK_NAME}")
    assert ours == sorted(p.stem for p in (ROOT / "subgraphs").glob("*.json")), listed
    SHOTS.mkdir(parents=True, exist_ok=True)
    jobs = [{"mode": "run_blueprint", "name": "Replace Background (PDFNet)", "png": str(SHOTS / f"blueprint_{tag}.png"),
             "inputs": {"image": "example.png", "background": "background.png"}, "widgets": SYNTHETIC,
             "settings": {"Comfy.VueNodes.Enabled": vue}} for tag, vue in (("classic", False), ("nodes2", True))]
    out = run_jobs(server.url, jobs)
    assert out["ok"], out
    for res in out["results"]:
        assert res.get("title") == "Replace Background (PDFNet)", res
        assert res["inputs"] == ["image", "background"] and res["outputs"] == ["image"], res
        assert {"model_name", "fit"} <= set(res["promoted"]), res["promoted"]
        assert {"pdfnet_model", "depth_model", "fit"} <= set(res["labels"]), res["labels"]   # not model_name twice
        assert res["run"]["ok"], (res["run"], server.log_tail(40))
        assert res["shown"] == [{"type": "PreviewImage", "images": 1}], res["shown"]


def test_node_names_in_chinese_with_the_locale_set(server):
    i18n = json.loads(server.get_bytes("/i18n"))
    zh = json.loads((ROOT / "locales" / "zh" / "nodeDefs.json").read_text(encoding="utf-8"))
    assert i18n["zh"]["nodeDefs"]["PDFNetSegment"] == zh["PDFNetSegment"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    png = SHOTS / "locale_zh.png"
    types = ["PDFNetSegment", "PDFNetModelLoader", "PDFNetCompare"]
    out = run_jobs(server.url, [{"mode": "locale", "types": types, "png": str(png), "settings": {"Comfy.Locale": "zh"}},
                                {"mode": "locale", "types": types, "settings": {"Comfy.Locale": "en"}}])
    assert out["ok"], out
    chinese, english = out["results"]
    for t in types:
        assert chinese["titles"][t] == zh[t]["display_name"], (t, chinese["titles"])
    assert chinese["inputs"]["PDFNetSegment"][0] == zh["PDFNetSegment"]["inputs"]["image"]["name"], chinese["inputs"]
    assert english["titles"]["PDFNetSegment"] == "PDFNet Segment (Remove Background)", english["titles"]
    print(f"zh titles: {chinese['titles']}; screenshot {png}")
