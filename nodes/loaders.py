"""Loader nodes: a file from a models folder -> a model held by the shared cache."""
from __future__ import annotations

from comfy_api.latest import io

from . import comfy_models as cm
from .io_types import DepthAnythingModel, PDFNetModel

_DTYPE_TOOLTIP = ("Precision of the weights. auto: bf16 where ComfyUI says the device runs it well, else fp32 "
                  "(always fp32 on a CPU). fp16 is fastest on older GPUs but can overflow.")
_DOWNLOAD_TOOLTIP = ("Off: only files already in the folder are used. On: a known file that is missing is "
                     "downloaded from the Hugging Face hub into the first '{key}' models folder (checked, "
                     "written atomically).")


def _loader_inputs(arch_name: str, name_tooltip: str) -> list:
    key = cm.ARCHS[arch_name].folder_key
    return [
        io.Combo.Input("model_name", options=cm.list_models(key), tooltip=name_tooltip),
        io.Combo.Input("dtype", options=list(cm.DTYPE_CHOICES), default="auto", tooltip=_DTYPE_TOOLTIP),
        io.Boolean.Input("download", default=False, tooltip=_DOWNLOAD_TOOLTIP.format(key=key)),
    ]


class PDFNetModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDFNetModelLoader",
            display_name="Load PDFNet Model",
            category="PDFNet/loaders",
            description="Loads a PDFNet checkpoint from models/pdfnet. Loader nodes naming the same file share one "
                        "model, kept in ComfyUI's memory manager.",
            inputs=_loader_inputs(
                "pdfnet",
                "A PDFNet checkpoint in models/pdfnet (.pth or .safetensors). PDFNet_Best.pth: the paper's model "
                "(DIS5K); PDF-Generally.pth: trained on more data, for general photos."),
            outputs=[PDFNetModel.Output("pdfnet_model", tooltip="PDFNet, for PDFNet Segment")],
        )

    @classmethod
    def validate_inputs(cls, model_name, download=False):
        return cm.check_model_choice("pdfnet", model_name, download)

    @classmethod
    def fingerprint_inputs(cls, model_name, dtype, download):
        return cm.file_fingerprint("pdfnet", model_name)

    @classmethod
    def execute(cls, model_name, dtype, download) -> io.NodeOutput:
        return io.NodeOutput(cm.load_model("pdfnet", model_name, dtype, download))


class PDFNetDepthAnythingLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDFNetDepthAnythingLoader",
            display_name="Load Depth-Anything-V2 Model",
            category="PDFNet/loaders",
            description="Loads a Depth-Anything-V2 checkpoint (Small, Base or Large; .pth or safetensors repacks) "
                        "from models/depthanything, for PDFNet's depth prior and for depth maps.",
            inputs=_loader_inputs(
                "depth_anything",
                "A Depth-Anything-V2 checkpoint in models/depthanything: depth_anything_v2_vits/vitb/vitl .pth, or "
                "the _fp16/_fp32 .safetensors repacks. Licence: Small (vits) is Apache-2.0; Base (vitb) and Large "
                "(vitl) are CC-BY-NC-4.0, non-commercial use only. PDFNet was trained with all three sizes; the "
                "paper evaluated with Large."),
            outputs=[DepthAnythingModel.Output("depth_model", tooltip="Depth-Anything-V2, for PDFNet Segment "
                                                                      "and PDFNet Depth Estimate")],
        )

    @classmethod
    def validate_inputs(cls, model_name, download=False):
        return cm.check_model_choice("depth_anything", model_name, download)

    @classmethod
    def fingerprint_inputs(cls, model_name, dtype, download):
        return cm.file_fingerprint("depth_anything", model_name)

    @classmethod
    def execute(cls, model_name, dtype, download) -> io.NodeOutput:
        return io.NodeOutput(cm.load_model("depth_anything", model_name, dtype, download))


NODES = [PDFNetModelLoader, PDFNetDepthAnythingLoader]
