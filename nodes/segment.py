"""Segmentation node: IMAGE -> foreground MASK with PDFNet (+ depth model or depth map) or BiRefNet."""
from __future__ import annotations

from comfy_api.latest import io

from pdfnet_core import RESIZE_MODES, SegmentOptions, premultiply

from . import host
from .adapters import segment_images, segmenter_of
from .io_types import BiRefNetModel, DepthAnythingModel, PDFNetModel

# The segmentation models the node accepts; each family's spec says how it is run.
SEGMENTER_TYPES = [PDFNetModel, BiRefNetModel]

_UNWIRED = object()   # an optional input that is not connected is absent from the call


def _options(resolution: int, resize: str, tta: bool) -> SegmentOptions:
    return SegmentOptions(size=resolution, resize=resize, tta=tta)


class PDFNetSegment(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDFNetSegment",
            display_name="PDFNet Segment (Remove Background)",
            category="PDFNet/segmentation",
            description="High-precision foreground mask with PDFNet or BiRefNet. PDFNet's depth comes from the "
                        "depth map if 'depth' is connected (the depth model is then not run), else from the depth "
                        "model. BiRefNet uses no depth: both depth inputs are ignored (and not run).",
            search_aliases=["remove background", "background removal", "matting", "dichotomous segmentation"],
            inputs=[
                io.Image.Input("image", tooltip="Images to segment (any size; a batch is processed in chunks)"),
                # The id stays 'pdfnet_model' (saved workflows link to it); the socket takes either model.
                io.MultiType.Input(
                    "pdfnet_model", types=SEGMENTER_TYPES,
                    tooltip="From Load PDFNet Model, or from Load BiRefNet Model (switch models by changing the "
                            "loader). BiRefNet needs no depth and ignores the depth inputs."),
                DepthAnythingModel.Input(
                    "depth_model", optional=True, lazy=True,
                    tooltip="From Load Depth-Anything-V2 Model: computes the depth prior PDFNet was trained with. "
                            "Not run (not even loaded) when 'depth' is connected or the model is a BiRefNet."),
                io.Mask.Input(
                    "depth", optional=True, lazy=True,
                    tooltip="Optional depth maps, one per image at the image's size, larger = nearer (e.g. the depth "
                            "output of PDFNet Depth Estimate). Replaces the depth model. Ignored by BiRefNet."),
                io.Int.Input("resolution", default=1024, min=256, max=2048, step=32,
                             tooltip="Network resolution (a multiple of 32). PDFNet and most BiRefNet models were "
                                     "trained at 1024; the HR BiRefNet variants (BiRefNet_HR, _HR-matting) at 2048, "
                                     "so set 2048 for them. The mask is always returned at the source size."),
                io.Combo.Input("resize", options=list(RESIZE_MODES), default="squash",
                               tooltip="squash: stretch to a square, as in training (best on most images). pad: keep "
                                       "the aspect ratio inside the square, better for very wide or tall images."),
                io.Boolean.Input("tta", default=False,
                                 tooltip="Test-time augmentation: 6 passes (flip x 3 scales) averaged, as in the "
                                         "paper's evaluation. Slightly cleaner edges, 6x slower."),
            ],
            outputs=[
                io.Mask.Output("mask", tooltip="Foreground mask, subject = 1, at the source size. Core LoadImage masks "
                                               "and JoinImageWithAlpha use the opposite (1 = transparent): convert with "
                                               "PDFNet Mask Polarity."),
                io.Image.Output("cutout", tooltip="The image multiplied by the mask (the subject over black, RGB). "
                                                  "For transparency use PDFNet To RGBA."),
            ],
        )

    @classmethod
    def validate_inputs(cls, resolution=None):
        # Only what the widget cannot enforce (a typed-in or API value off the step of 32); listing
        # few inputs here keeps ComfyUI's own range and list checks for the others.
        if resolution is None:
            return True
        if not 256 <= resolution <= 2048:
            return f"resolution must be between 256 and 2048, got {resolution}"
        try:
            _options(resolution, "squash", False).validate()
        except ValueError as exc:
            return f"resolution: {exc}"
        return True

    @classmethod
    def check_lazy_status(cls, pdfnet_model=None, depth_model=_UNWIRED, depth=_UNWIRED, **_):
        # A lazy input that is connected but not yet computed arrives as None; one that is not
        # connected does not arrive at all.  A model without depth (BiRefNet) needs neither; for
        # PDFNet a connected depth wins, so the depth model (and its loader node) only runs when no
        # depth is connected.
        if pdfnet_model is not None and not segmenter_of(pdfnet_model).spec.inputs.needs_depth:
            return []
        if depth is not _UNWIRED:
            return ["depth"] if depth is None else []
        if depth_model is not _UNWIRED and depth_model is None:
            return ["depth_model"]
        return []

    @classmethod
    def execute(cls, image, pdfnet_model, resolution, resize, tta, depth_model=None, depth=None) -> io.NodeOutput:
        # A runtime per execution: one residency call for its models, batches sized to the free memory.
        masks = segment_images(image, pdfnet_model, _options(resolution, resize, tta), host.ComfyRuntime(),
                               depth_model=depth_model, depth=depth)
        cutout = premultiply(image[..., :3].to(masks.device, masks.dtype), masks)
        return io.NodeOutput(host.to_output(masks), host.to_output(cutout))


NODES = [PDFNetSegment]
