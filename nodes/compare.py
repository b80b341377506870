"""Compare output node: the input and the cut-out saved as temp images for a before/after slider.

The slider is core's IMAGECOMPARE widget where the running ComfyUI has it (0.13+): the Nodes 2.0
renderer draws it itself, and web/compare.js draws the same widget on the classic canvas, which core
leaves blank. On an older ComfyUI the input does not exist and web/compare.js adds its own widget.
"""
from __future__ import annotations

from comfy_api.latest import io, ui

from pdfnet_core import check_image, check_mask, to_rgba

# Keys of the node's `ui` dict. Not "images": that key makes the frontend draw its own preview
# under the node, on top of the slider. web/compare.js reads exactly these keys.
BEFORE_KEY, AFTER_KEY = "pdfnet_before", "pdfnet_after"
VIEW_INPUT = "compare_view"
# None on a ComfyUI without core's slider widget (before 0.13)
_CORE_VIEW = getattr(io, "ImageCompare", None)


def _view_inputs() -> list:
    if _CORE_VIEW is None:
        return []
    # Optional: API workflows saved before the widget existed still validate without it.
    return [_CORE_VIEW.Input(VIEW_INPUT, optional=True,
                             tooltip="Move the pointer across the picture: left of it the input, right of it the "
                                     "result. Filled when the workflow runs.")]


class PDFNetCompare(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDFNetCompare",
            display_name="PDFNet Compare (Before/After)",
            category="PDFNet/preview",
            description="Shows the input and the result on one slider: move across the picture to reveal one or "
                        "the other. On the classic canvas transparent parts are drawn over a checkerboard. Saves "
                        "temporary previews only.",
            search_aliases=["image comparer", "before after", "preview cutout"],
            inputs=[
                io.Image.Input("image", tooltip="The input image (left of the slider)"),
                io.Image.Input("result", tooltip="The cut-out or composite (right of the slider). An RGBA image "
                                                 "(PDFNet To RGBA) shows its transparency."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional foreground mask (subject = 1, as PDFNet Segment gives). When "
                                      "connected, the result is shown with this mask as its alpha, so the removed "
                                      "background appears as the checkerboard."),
                *_view_inputs(),
            ],
            outputs=[],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, image, result, mask=None, compare_view=None) -> io.NodeOutput:
        image, result = check_image(image, "image", channels=(3, 4)), check_image(result, "result", channels=(3, 4))
        if mask is not None:
            # to_rgba checks that sizes and batches agree and says what to fix
            result = to_rgba(result[..., :3], check_mask(mask, single=True).to(result.device, result.dtype))
        # ui.PreviewImage is core's own temp saver (temp dir, random prefix, fast PNG): the files are
        # served by /view?type=temp exactly like a Preview Image node's.
        before = ui.PreviewImage(image.cpu(), cls=cls).as_dict()["images"]
        after = ui.PreviewImage(result.cpu(), cls=cls).as_dict()["images"]
        return io.NodeOutput(ui={BEFORE_KEY: before, AFTER_KEY: after})


NODES = [PDFNetCompare]
