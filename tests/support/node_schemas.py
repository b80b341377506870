"""The pack's node schemas (ids, display names, inputs, outputs, tooltips) read without ComfyUI.

Each node's own define_schema() runs against a small recording stand-in for comfy_api.latest's `io`
(every `io.<Type>.Input(id, **options)` and `.Output(...)` call is recorded as a dict) and a mock
folder_paths; afterwards the node modules and the stand-ins leave sys.modules again (and any real ones
are put back), while other modules imported on the way (pdfnet_core) stay, so they are never imported twice. So the locale files can be
checked against the schemas in CI, where ComfyUI is absent; tests/browser checks the same names in the
real frontend.
"""
from __future__ import annotations

import sys
import types
from unittest import mock


class _Type:
    def __init__(self, name: str) -> None:
        self.name = name

    def Input(self, id: str, *args, **options) -> dict:
        return {"id": id, "type": self.name, **options}

    def Output(self, id: str | None = None, *args, **options) -> dict:
        return {"id": id, "type": self.name, **options}

    def __getattr__(self, name: str) -> str:      # io.Hidden.prompt and the like
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{self.name}.{name}"


class _IO(types.ModuleType):
    def __getattr__(self, name: str) -> _Type:
        if name.startswith("__"):
            raise AttributeError(name)
        kind = _Type(name)
        setattr(self, name, kind)
        return kind


def _stand_ins() -> dict:
    io = _IO("comfy_api.latest.io")
    io.Schema = lambda **fields: fields
    io.NodeOutput = lambda *args, **kwargs: (args, kwargs)
    io.Custom = _Type
    io.ComfyNode = type("ComfyNode", (), {})
    latest = types.ModuleType("comfy_api.latest")
    latest.io = latest.IO = io
    latest.ui = types.SimpleNamespace()
    latest.ComfyExtension = type("ComfyExtension", (), {})
    return {"comfy_api": types.ModuleType("comfy_api"), "comfy_api.latest": latest, "folder_paths": mock.MagicMock()}


def node_schemas() -> dict[str, dict]:
    """{node_id: {"display_name", "description", "inputs": {id: tooltip|None}, "outputs": [(name, tooltip|None)]}}"""
    stand_ins = _stand_ins()

    def ours(name: str) -> bool:
        return name in stand_ins or name == "nodes" or name.startswith("nodes.")

    saved = {n: m for n, m in sys.modules.items() if ours(n)}
    try:
        for name in saved:
            del sys.modules[name]
        sys.modules.update(stand_ins)
        from nodes import extension

        out = {}
        for module in extension.NODE_MODULES:
            for node in module.NODES:
                schema = node.define_schema()
                out[schema["node_id"]] = {
                    "display_name": schema.get("display_name") or schema["node_id"],
                    "description": schema.get("description"),
                    "inputs": {i["id"]: i.get("tooltip") for i in schema.get("inputs", [])},
                    "outputs": [(o.get("display_name") or o.get("id") or o["type"], o.get("tooltip"))
                                for o in schema.get("outputs", [])],
                }
        return out
    finally:
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


def english_locale() -> dict:
    """The schemas in the frontend's nodeDefs.json format (what locales/en/nodeDefs.json holds)."""
    out = {}
    for node_id, s in node_schemas().items():
        entry: dict = {"display_name": s["display_name"]}
        if s["description"]:
            entry["description"] = s["description"]
        entry["inputs"] = {k: {"name": k, **({"tooltip": t} if t else {})} for k, t in s["inputs"].items()}
        if s["outputs"]:
            entry["outputs"] = {str(i): {"name": n, **({"tooltip": t} if t else {})}
                                for i, (n, t) in enumerate(s["outputs"])}
        out[node_id] = entry
    return out
