"""The matting node: alpha and foreground colours from an image and its mask (pdfnet_core.ops.matting)."""
from __future__ import annotations

from comfy_api.latest import io

from pdfnet_core import DESPILL_CHOICES, EDGE_SHIFT_MAX, MATTING_FOREGROUND, DespillConfig, TrimapConfig

from . import host
from .adapters import matte_images, matting_config

_TRIMAP, _DESPILL = TrimapConfig(), DespillConfig()


class PDFNetMatting(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDFNetMatting",
            display_name="PDFNet Matting",
            category="PDFNet/mask",
            description="Recovers the soft edges a segmenter loses at its working resolution (hair, fur, veils): "
                        "closed-form matting in a band around the mask's edge, then the subject's own colours, "
                        "optionally without a green/blue screen's spill.",
            inputs=[
                io.Image.Input("image", tooltip="The photo the mask was made from"),
                io.Mask.Input("mask", tooltip="Its foreground mask (subject = 1), same size, e.g. from PDFNet Segment"),
                io.Int.Input("network_size", default=1024, min=0, max=8192, step=32,
                             tooltip="Side the mask was made at (PDFNet Segment's size). The unknown band is scaled "
                                     "by photo size / this. 0: the mask was made at the photo's own size."),
                io.Float.Input("band", default=_TRIMAP.band, min=0.0, max=32.0, step=0.5,
                               tooltip="Half-width of the band solved by matting, in network pixels. Mask values "
                                       "the segmenter was unsure of are always in the band."),
                io.Float.Input("fine_hair", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Widen the band outwards (up to 3x) to catch strands the mask lost entirely"),
                io.Int.Input("edge_shift", default=0, min=-EDGE_SHIFT_MAX, max=EDGE_SHIFT_MAX,
                             tooltip="Choke (negative) or expand (positive) the final alpha edge by this many pixels"),
                io.Combo.Input("despill", options=[*DESPILL_CHOICES, "color"], default="none",
                               tooltip="Remove a keyed background's colour cast from the subject: auto reads the key "
                                       "from the background (does nothing on a non-coloured one); color uses "
                                       "despill_color"),
                io.String.Input("despill_color", default="#00FF00", advanced=True,
                                tooltip="The key colour ('#RRGGBB') when despill is 'color'"),
                io.Float.Input("despill_strength", default=_DESPILL.strength, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of the spill removed at the edge (inside the subject only a faint "
                                       "cast is removed, so the subject's own colours stay)"),
                io.Combo.Input("foreground", options=list(MATTING_FOREGROUND), default="multilevel", advanced=True,
                               tooltip="How the subject's colours are estimated with the new alpha: multilevel "
                                       "(best on hair), blur_fusion (faster), none (the photo's colours)"),
            ],
            outputs=[io.Mask.Output("alpha", tooltip="The matted alpha (subject = 1)"),
                     io.Image.Output("foreground", tooltip="The subject's own colours (RGB); composite it with "
                                                           "this alpha")],
        )

    @classmethod
    def execute(cls, image, mask, network_size, band, fine_hair, edge_shift, despill, despill_color,
                despill_strength, foreground) -> io.NodeOutput:
        config = matting_config(network_size=network_size, band=band, fine_hair=fine_hair, edge_shift=edge_shift,
                                despill=despill, despill_color=despill_color, despill_strength=despill_strength,
                                foreground=foreground)
        alpha, fg = matte_images(image, mask, config, host.RUNTIME, host.load_device())
        return io.NodeOutput(host.to_output(alpha), host.to_output(fg))


NODES = [PDFNetMatting]
