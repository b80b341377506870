"""locales/: the English source matches the node schemas, and zh, ja and ko translate every entry of it.

The schemas are read from the node classes without ComfyUI (tests/support/node_schemas.py); the real
frontend showing a translated title is checked in tests/browser/test_browser.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from make_locales import LANGUAGES, keys
from node_schemas import english_locale, node_schemas

ROOT = Path(__file__).resolve().parents[2]


def _load(lang: str) -> dict:
    return json.loads((ROOT / "locales" / lang / "nodeDefs.json").read_text(encoding="utf-8"))


def test_the_schema_reader_sees_every_node_and_input():
    schemas = node_schemas()
    assert {"PDFNetSegment", "PDFNetCompare", "PDFNetModelLoader"} <= set(schemas)
    segment = schemas["PDFNetSegment"]
    assert {"image", "pdfnet_model", "depth_model", "depth", "resolution"} <= set(segment["inputs"])
    assert [name for name, _ in segment["outputs"]] == ["mask", "cutout"]
    assert segment["inputs"]["image"], "tooltips are read"


def test_english_source_matches_the_schemas():
    # run tests/support/make_locales.py after changing a node's inputs, names or tooltips
    assert _load("en") == english_locale()


@pytest.mark.parametrize("lang", LANGUAGES)
def test_translation_has_every_entry_of_the_english_source(lang):
    en, tr = _load("en"), _load(lang)
    assert keys(tr) == keys(en), {"missing": sorted(keys(en) - keys(tr))[:20], "extra": sorted(keys(tr) - keys(en))[:20]}
    for node_id, entry in tr.items():
        assert entry["display_name"].strip() and entry["display_name"] != en[node_id]["display_name"], (lang, node_id)
        for name, value in entry["inputs"].items():
            assert value["name"].strip(), (lang, node_id, name)
            if "tooltip" in value:
                assert value["tooltip"].strip() and value["tooltip"] != en[node_id]["inputs"][name]["tooltip"], \
                    (lang, node_id, name)
