"""Segmentation node: IMAGE -> foreground MASK with PDFNet (+ depth model or depth map) or BiRefNet."""
from __future__ import annotations

from comfy_api.latest import io

from pdfnet_core import AUTO_SIZE, FAMILIES, RESIZE_MODES, SegmentOptions, premultiply

from . import host
from .adapters import segment_images, segmenter_of
from .io_types import BiRefNetModel, DepthAnythingModel, PDFNetModel

# The segmentation models the node accepts; each family's spec says how it is run.
SEGMENTER_TYPES = [PDFNetModel, BiRefNetModel]

_UNWIRED = object()   # an optional input that is not connected is absent from the call

# The resolution widget: 0 is the loaded file's own size (its training size; a dynamic file: the
# image's own); else a square side from MIN_RESOLUTION up to what the largest known file supports
# (a file's own limit is checked when it runs).
AUTO_RESOLUTION = AUTO_SIZE
MIN_RESOLUTION = 256
MAX_RESOLUTION = max(spec.largest_side() for spec in FAMILIES.values() if spec.segment is not None)


def _options(resolution: int, resize: str, tta: bool, second_pass: bool = True,
             boundary_tiles: bool = False) -> SegmentOptions:
    return SegmentOptions(size=resolution, resize=resize, tta=tta, second_pass=second_pass,
                          boundary_tiles=boundary_tiles)


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
                io.Int.Input("resolution", default=SegmentOptions.size, min=AUTO_RESOLUTION, max=MAX_RESOLUTION, step=32,
                             tooltip="Network resolution. 0 (auto): the model file's own size: PDFNet and most "
                                     "BiRefNet models 1024x1024, the HR BiRefNet variants (BiRefNet_HR, _HR-matting) "
                                     "2048x2048, BiRefNet_lite-2K 2560x1440, BiRefNet_dynamic the image's own size "
                                     f"(multiples of 32, 256 to 2304). Else a square side, a multiple of 32 from "
                                     f"{MIN_RESOLUTION} to what the file supports (up to {MAX_RESOLUTION}). The mask "
                                     "is always returned at the source size."),
                io.Combo.Input("resize", options=list(RESIZE_MODES), default=SegmentOptions.resize,
                               tooltip="squash: stretch to the network size, as in training (best on most images). pad: "
                                       "keep the aspect ratio inside it, better for very wide or tall images."),
                io.Boolean.Input("tta", default=SegmentOptions.tta,
                                 tooltip="Test-time augmentation: 6 passes (flip x 3 scales) averaged, as in the "
                                         "paper's evaluation. Slightly cleaner edges, 6x slower."),
                io.Boolean.Input("second_pass", default=SegmentOptions.second_pass, optional=True,
                                 tooltip="Segment the subject's crop again at full network resolution where that "
                                         "gives it at least 1.5x the network pixels (a small subject in a large "
                                         "photo), and blend it in without a seam. Costs nothing when the subject "
                                         "fills the frame or the photo is no larger than 'resolution'."),
                io.Boolean.Input("boundary_tiles", default=SegmentOptions.boundary_tiles, optional=True, advanced=True,
                                 tooltip="For a subject over twice 'resolution' across (a 4000 px subject): run the "
                                         "model again on full-resolution tiles along its edge. One model run per "
                                         "tile: slow, for the finest edges of very large photos."),
                io.Mask.Input("region", optional=True,
                              tooltip="Optional: where the subject is (any mask, e.g. a rough hand-drawn one; its "
                                      "box is used). Only that box is segmented (with some context around it); the "
                                      "mask is 0 outside it. One mask for all images, or one per image."),
                io.BoundingBox.Input("region_box", optional=True, socketless=False, force_input=True,
                                     tooltip="Optional: where the subject is, as a box (x, y, width, height) from "
                                             "another node. Use either this or 'region'."),
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
        if resolution != AUTO_RESOLUTION and not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
            return (f"resolution must be 0 (auto: the model file's own size) or between {MIN_RESOLUTION} and "
                    f"{MAX_RESOLUTION}, got {resolution}")
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
    def execute(cls, image, pdfnet_model, resolution, resize, tta, depth_model=None, depth=None, second_pass=True,
                boundary_tiles=False, region=None, region_box=None) -> io.NodeOutput:
        # A runtime per execution: one residency call for its models, batches sized to the free memory.
        options = _options(resolution, resize, tta, second_pass, boundary_tiles)
        masks = segment_images(image, pdfnet_model, options, host.ComfyRuntime(), depth_model=depth_model, depth=depth,
                               region=region, region_box=region_box)
        cutout = premultiply(image[..., :3].to(masks.device, masks.dtype), masks)
        return io.NodeOutput(host.to_output(masks), host.to_output(cutout))


NODES = [PDFNetSegment]
