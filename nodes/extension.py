"""The pack's ComfyExtension: registers the model folders and the residency hook, lists the nodes."""
from __future__ import annotations

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from . import compare, composite, depth, host, loaders, matting, refine, segment, segrefiner

NODE_MODULES = (loaders, depth, segment, refine, matting, composite, compare, segrefiner)


class PDFNetExtension(ComfyExtension):
    @override
    async def on_load(self) -> None:
        # Here, not at import: ComfyUI has read extra_model_paths.yaml by now, and importing the
        # pack elsewhere (tests, tools) must not touch ComfyUI's globals.
        host.register_model_folders()
        host.install_residency_hook()

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [node for module in NODE_MODULES for node in module.NODES]
