"""Loader nodes: a file from a models folder -> a model held by the shared cache."""
from __future__ import annotations

from typing import ClassVar

from comfy_api.latest import io

from pdfnet_core import family

from . import host, model_files
from .io_types import BiRefNetModel, DepthAnythingModel, PDFNetModel, SegRefinerModel

_DTYPE_TOOLTIP = ("Precision of the weights. auto: bf16 where ComfyUI says the device runs it well, else fp32 "
                  "(always fp32 on a CPU). fp16 is fastest on older GPUs but can overflow.")
_DOWNLOAD_TOOLTIP = ("Off: only files already in the folder are used. On: a known file that is missing is "
                     "downloaded from the Hugging Face hub into the first '{key}' models folder (checked, "
                     "written atomically).")


def _loader_inputs(family_name: str, name_tooltip: str, dtype_tooltip: str = _DTYPE_TOOLTIP,
                   download: bool = True) -> list:
    key = family(family_name).folder_key
    inputs = [
        io.Combo.Input("model_name", options=model_files.list_models(key),
                       tooltip=f"{name_tooltip} {model_files.licence_tooltip(key)}"),
        io.Combo.Input("dtype", options=list(host.DTYPE_CHOICES), default="auto", tooltip=dtype_tooltip),
    ]
    if download:   # off for models that are not on the hub: the toggle could never work there
        inputs.append(io.Boolean.Input("download", default=False, tooltip=_DOWNLOAD_TOOLTIP.format(key=key)))
    return inputs


def _option_input(option, tooltip: str, optional: bool = False) -> io.Combo.Input:
    """The widget of a family's loader option: its name, choices and default as the spec has them.

    ``optional`` for an option added after workflows were saved: placed last, so they still load.
    """
    return io.Combo.Input(option.name, options=list(option.choices), default=option.default, optional=optional,
                          tooltip=tooltip)


def _commercial_input() -> io.Boolean.Input:
    """The licence switch: added after workflows were saved, so optional, last, and off by default."""
    return io.Boolean.Input("commercial_only", default=False, optional=True, tooltip=model_files.COMMERCIAL_TOOLTIP)


class _FileLoader(io.ComfyNode):
    """What every loader node does with its file; subclasses set FAMILY and their schema."""

    FAMILY: ClassVar[str]

    @classmethod
    def validate_inputs(cls, model_name, download=False, commercial_only=False):
        # Only the inputs named here are checked by us; the others (dtype, patch_order) keep
        # ComfyUI's own list checks, which naming them would switch off.
        return model_files.check_model_choice(cls.FAMILY, model_name, download, commercial_only)

    @classmethod
    def fingerprint_inputs(cls, model_name, **_):
        # size + mtime: a file replaced on disk makes the loader run again
        return model_files.file_fingerprint(cls.FAMILY, model_name)

    @classmethod
    def execute(cls, model_name, dtype, download=False, commercial_only=False) -> io.NodeOutput:
        return io.NodeOutput(model_files.load_model(cls.FAMILY, model_name, dtype, download, commercial_only))


_REVISION = family("pdfnet").option("revision")
_PATCH_ORDER = family("birefnet").option("patch_order")
_HR_PATCHES = family("segrefiner").option("hr_patches")


class PDFNetModelLoader(_FileLoader):
    FAMILY = "pdfnet"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDFNetModelLoader",
            display_name="Load PDFNet Model",
            category="PDFNet/loaders",
            description="Loads a PDFNet checkpoint from models/pdfnet. Loader nodes naming the same file share one "
                        "model, kept in ComfyUI's memory manager.",
            inputs=[
                *_loader_inputs(
                    "pdfnet",
                    "A PDFNet checkpoint in models/pdfnet (.pth or .safetensors). PDFNet_Best.pth: the paper's model "
                    "(DIS5K); PDF-Generally.pth: trained on more data, for general photos."),
                _option_input(
                    _REVISION, optional=True,
                    tooltip="Which official PDFNet code runs these weights. auto (default): decided from the file "
                            "itself and written to the log. The published PDFNet_Best.pth and PDF-Generally.pth, "
                            "and safetensors converted from them, run as v1; a file that shows neither runs as v2, "
                            "with a warning. v1: the first release (802b477), which saved the published weights: "
                            "soft boundaries, patch tiles weighted by how much edge they hold. v2: the current "
                            "official code (f4e218b): thresholded boundaries, tiles weighted 1 or 2. Same weights; "
                            "masks differ slightly (up to about 0.05 alpha on test weights)."),
                _commercial_input(),
            ],
            outputs=[PDFNetModel.Output("pdfnet_model", tooltip="PDFNet, for PDFNet Segment")],
        )

    @classmethod
    def execute(cls, model_name, dtype, download=False, revision=_REVISION.default,
                commercial_only=False) -> io.NodeOutput:
        return io.NodeOutput(model_files.load_model("pdfnet", model_name, dtype, download, commercial_only,
                                                    revision=revision))


class PDFNetDepthAnythingLoader(_FileLoader):
    FAMILY = "depth_anything"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDFNetDepthAnythingLoader",
            display_name="Load Depth-Anything-V2 Model",
            category="PDFNet/loaders",
            description="Loads a Depth-Anything-V2 checkpoint (Small, Base or Large; .pth or safetensors repacks) "
                        "from models/depthanything, for PDFNet's depth prior and for depth maps.",
            inputs=[*_loader_inputs(
                "depth_anything",
                "A Depth-Anything-V2 checkpoint in models/depthanything: depth_anything_v2_vits/vitb/vitl .pth, or "
                "the _fp16/_fp32 .safetensors repacks. Only Small (vits) allows commercial use. PDFNet was trained "
                "with all three sizes; the paper evaluated with Large."),
                _commercial_input()],
            outputs=[DepthAnythingModel.Output("depth_model", tooltip="Depth-Anything-V2, for PDFNet Segment "
                                                                      "and PDFNet Depth Estimate")],
        )


class PDFNetBiRefNetLoader(_FileLoader):
    FAMILY = "birefnet"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDFNetBiRefNetLoader",
            display_name="Load BiRefNet Model",
            category="PDFNet/loaders",
            description="Loads a BiRefNet checkpoint (Swin-L or Swin-T, detected from the file) from models/birefnet. "
                        "Connect it to PDFNet Segment in place of a PDFNet model to compare the two; BiRefNet needs "
                        "no depth. No code is downloaded: the pack has its own BiRefNet.",
            inputs=[
                *_loader_inputs(
                    "birefnet",
                    "A BiRefNet checkpoint in models/birefnet (.safetensors or .pth). The hub repositories all name "
                    "their file model.safetensors; here each is listed under its repository name (e.g. "
                    "BiRefNet_HR.safetensors = ZhengPeng7/BiRefNet_HR) and downloaded under that name. BiRefNet: "
                    "general use at 1024; _HR and _HR-matting: trained at 2048; _lite: the light Swin-T variant; "
                    "_dynamic: trained at 256-2304; ToonOut: anime; Lucida: glass, camouflage, text, glow; "
                    "RMBG-2.0: bring your own file. Files in core's models/background_removal are listed too."),
                _option_input(
                    _PATCH_ORDER,
                    tooltip="How BiRefNet splits the image into patches for its decoder. The official code changed "
                            "this order on 2024-11-05: weights released before were trained with the 'legacy' order, "
                            "later ones (BiRefNet_HR, _HR-matting, _dynamic) with the 'current' one, and the wrong "
                            "order gives visibly worse masks. auto: the order this pack's registry lists for the file "
                            "name ('current' for files it does not know)."),
                _commercial_input(),
            ],
            outputs=[BiRefNetModel.Output("birefnet_model", tooltip="BiRefNet, for PDFNet Segment's model input")],
        )

    @classmethod
    def execute(cls, model_name, dtype, download, patch_order=_PATCH_ORDER.default,
                commercial_only=False) -> io.NodeOutput:
        return io.NodeOutput(model_files.load_model("birefnet", model_name, dtype, download, commercial_only,
                                                    patch_order=patch_order))


class PDFNetSegRefinerLoader(_FileLoader):
    FAMILY = "segrefiner"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDFNetSegRefinerLoader",
            display_name="Load SegRefiner Model",
            category="PDFNet/loaders",
            description="Loads a SegRefiner checkpoint (the official mmcv .pth or a .safetensors conversion) from "
                        "models/segrefiner, for PDFNet SegRefine. The official weights are only on Google Drive: "
                        "download them by hand (see the model_name tooltip).",
            inputs=[*_loader_inputs(
                "segrefiner",
                "A SegRefiner checkpoint in models/segrefiner. segrefiner_hr_latest.pth (trained on ThinObject-5K + "
                "DIS-TR) for the 'hr' mode, segrefiner_lr_latest.pth (trained on LVIS) for the 'lr' mode. Not on "
                "the Hugging Face hub, so never downloaded automatically: get them from the links in the "
                "MengyuWang826/SegRefiner README (Google Drive) and keep their names.",
                dtype_tooltip="Precision of the weights. auto: fp32 (the sampler thresholds the network's confidences; "
                              "only fp32 was compared with the official code). fp16/bf16 save memory on a GPU.",
                download=False),
                _option_input(
                    _HR_PATCHES, optional=True,
                    tooltip="Precision of the 'hr' mode's full-resolution patches, the bulk of a large refinement "
                            "(the global pass that picks the patches keeps the model's precision). model: the "
                            "weights' own. bf16: 2.5x faster per patch on a CPU with native bf16 (AVX-512 BF16 / "
                            "AMX) and on recent GPUs; a patch's binary mask can differ from fp32 on pixels the "
                            "network is unsure of. fp16: for GPUs."),
                _commercial_input(),
            ],
            outputs=[SegRefinerModel.Output("segrefiner_model", tooltip="SegRefiner, for PDFNet SegRefine")],
        )

    @classmethod
    def validate_inputs(cls, model_name, commercial_only=False):
        return model_files.check_model_choice("segrefiner", model_name, commercial_only=commercial_only)

    @classmethod
    def execute(cls, model_name, dtype, hr_patches=_HR_PATCHES.default, commercial_only=False) -> io.NodeOutput:
        return io.NodeOutput(model_files.load_model("segrefiner", model_name, dtype, commercial_only=commercial_only,
                                                    hr_patches=hr_patches))


NODES = [PDFNetModelLoader, PDFNetDepthAnythingLoader, PDFNetBiRefNetLoader, PDFNetSegRefinerLoader]
