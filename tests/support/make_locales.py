"""locales/en/nodeDefs.json from the node schemas, and a report of what each translation lacks.

ComfyUI serves `locales/<lang>/nodeDefs.json` (and main.json) of every pack through `/i18n`; the
frontend shows a node's display name, input names and tooltips from the entry for the chosen language.
locales/en is the English source, written here from the schemas (tests/support/node_schemas.py); zh, ja
and ko are translations of it with the same keys, kept by hand. tests/unit/test_locales.py fails when
en no longer matches the schemas or a translation lacks (or has extra) keys: rerun this and translate
what it lists.

    .venv/bin/python tests/support/make_locales.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT)]

from node_schemas import english_locale  # noqa: E402

LOCALES = ROOT / "locales"
LANGUAGES = ("zh", "ja", "ko")


def keys(tree: dict, prefix: str = "") -> set[str]:
    """Every leaf of a nodeDefs tree as a dotted path (node.inputs.name.tooltip, ...)."""
    out = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out |= keys(value, path + ".") if isinstance(value, dict) else {path}
    return out


def main() -> int:
    en = english_locale()
    (LOCALES / "en").mkdir(parents=True, exist_ok=True)
    (LOCALES / "en" / "nodeDefs.json").write_text(json.dumps(en, indent=2, ensure_ascii=False) + "\n")
    missing = 0
    for lang in LANGUAGES:
        path = LOCALES / lang / "nodeDefs.json"
        have = keys(json.loads(path.read_text())) if path.is_file() else set()
        for key in sorted(keys(en) - have):
            print(f"{lang}: missing {key}")
            missing += 1
        for key in sorted(have - keys(en)):
            print(f"{lang}: not in the schemas any more: {key}")
            missing += 1
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
