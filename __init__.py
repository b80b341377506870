"""ComfyUI entry point of the PDFNet pack (V3 node API).

ComfyUI imports this file as a package and calls ``comfy_entrypoint``; nothing here imports
ComfyUI or torch at import time, so importing it elsewhere is harmless.  Plain-Python users import
``pdfnet_core`` directly and never touch this file.
"""
from __future__ import annotations

import importlib.util
import os
import sys

WEB_DIRECTORY = "./web"

_HERE = os.path.dirname(os.path.abspath(__file__))


def _expose_pdfnet_core() -> None:
    """Make this pack's ``pdfnet_core`` importable under its own name.

    pdfnet_core imports itself absolutely (``from pdfnet_core.ops.images import ...``) so it works as a
    plain library; inside ComfyUI the pack folder is not on sys.path.  The package is loaded from
    here by name rather than by putting the pack folder on sys.path, which would also expose this
    pack's ``nodes`` folder as a top-level ``nodes`` and shadow ComfyUI's own nodes module.
    """
    if "pdfnet_core" in sys.modules:
        return
    package_dir = os.path.join(_HERE, "pdfnet_core")
    spec = importlib.util.spec_from_file_location("pdfnet_core", os.path.join(package_dir, "__init__.py"),
                                                  submodule_search_locations=[package_dir])
    module = importlib.util.module_from_spec(spec)
    sys.modules["pdfnet_core"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["pdfnet_core"]
        raise


async def comfy_entrypoint():
    _expose_pdfnet_core()
    from .nodes.extension import PDFNetExtension

    return PDFNetExtension()
