"""Depth estimation node: IMAGE -> depth as a MASK and as a 3-channel IMAGE view."""
from __future__ import annotations

from comfy_api.latest import io

from . import host
from .adapters import DEPTH_NORMALISATIONS, estimate_depth_images
from .io_types import DepthAnythingModel


class PDFNetDepthEstimate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDFNetDepthEstimate",
            display_name="PDFNet Depth Estimate",
            category="PDFNet/depth",
            description="Relative depth from Depth-Anything-V2, computed as the official infer_image does, at each "
                        "image's size. Near = bright (1), far = dark (0).",
            inputs=[
                io.Image.Input("image", tooltip="Images to estimate depth for (any size, any batch: video frames too)"),
                DepthAnythingModel.Input("depth_model", tooltip="From Load Depth-Anything-V2 Model"),
                io.Combo.Input("normalization", options=list(DEPTH_NORMALISATIONS), default="per_image",
                               tooltip="per_image: each map spans 0..1 (what PDFNet expects). per_batch: one range for "
                                       "the whole batch, so the brightness of video frames does not flicker."),
                io.Int.Input("input_size", default=518, min=14, max=4088, step=14,
                             tooltip="Network resolution of the short side (multiple of 14). 518 is what "
                                     "Depth-Anything-V2 and PDFNet's training used; larger gives finer detail, slower."),
            ],
            outputs=[
                io.Mask.Output("depth", tooltip="Depth [batch, height, width] in 0..1, near = 1. Connect it to "
                                                "PDFNet Segment's depth input to reuse it."),
                io.Image.Output("depth_image", tooltip="The same depth as a gray 3-channel image, to view or save"),
            ],
        )

    @classmethod
    def execute(cls, image, depth_model, normalization, input_size) -> io.NodeOutput:
        # A runtime per execution: one residency call, batches sized to the free memory.
        depth = estimate_depth_images(image, depth_model, host.ComfyRuntime(), normalization=normalization,
                                      input_size=input_size)
        return io.NodeOutput(host.to_output(depth), host.to_output(depth[..., None].expand(-1, -1, -1, 3)))


NODES = [PDFNetDepthEstimate]
