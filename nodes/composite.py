"""Compositing nodes over pdfnet_core.ops.composite: over a colour or an image, to RGBA, mask polarity."""
from __future__ import annotations

from comfy_api.latest import io

from pdfnet_core import FIT_MODES, check_mask, composite_over_color, composite_over_image, to_rgba

from . import host
from .adapters import foreground_to_loadimage_mask, loadimage_mask_to_foreground, node_image


POLARITIES = {
    "foreground -> LoadImage/JoinImageWithAlpha mask": foreground_to_loadimage_mask,
    "LoadImage mask -> foreground": loadimage_mask_to_foreground,
}


class PDFNetComposite(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDFNetComposite",
            display_name="PDFNet Composite",
            category="PDFNet/compositing",
            description="foreground * mask + background * (1 - mask): the subject over a colour, or over an image "
                        "when 'background' is connected.",
            inputs=[
                io.Image.Input("foreground", tooltip="The subject: the original image, or better the output of PDFNet "
                                                     "Estimate Foreground Colour (no halo)"),
                io.Mask.Input("mask", tooltip="Foreground mask (subject = 1), same size as the foreground"),
                io.Color.Input("color", default="#ffffff",
                               tooltip="Background colour (used when 'background' is not connected, and as the "
                                       "letterbox colour of fit = contain)"),
                io.Combo.Input("fit", options=list(FIT_MODES), default="cover",
                               tooltip="How a background image of another size is fitted: cover = fill and crop, "
                                       "contain = fit inside and letterbox, stretch = resize ignoring aspect"),
                io.Image.Input("background", optional=True,
                               tooltip="Optional background image(s): one for all, or one per foreground"),
            ],
            outputs=[io.Image.Output("image", tooltip="The composite (RGB)")],
        )

    @classmethod
    def execute(cls, foreground, mask, color, fit, background=None) -> io.NodeOutput:
        fg, alpha = node_image(foreground, "foreground"), check_mask(mask, single=True)
        if background is None:
            out = composite_over_color(fg, alpha.to(fg.device), color)
        else:
            out = composite_over_image(fg, alpha.to(fg.device), node_image(background, "background"),
                                       fit=fit, fill=color)
        return io.NodeOutput(host.to_output(out))


class PDFNetToRGBA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDFNetToRGBA",
            display_name="PDFNet To RGBA",
            category="PDFNet/compositing",
            description="Packs an image and its foreground mask into a 4-channel RGBA image (straight alpha = mask). "
                        "Save Image writes it as a transparent PNG.",
            inputs=[
                io.Image.Input("image", tooltip="The subject's colours: the original image or the output of PDFNet "
                                                "Estimate Foreground Colour"),
                io.Mask.Input("mask", tooltip="Foreground mask (subject = 1): becomes the alpha channel as it is. "
                                              "Unlike JoinImageWithAlpha, no inversion."),
            ],
            outputs=[io.Image.Output("rgba", tooltip="RGBA image [batch, height, width, 4]. Most other nodes and VAE "
                                                     "Encode expect 3 channels and drop or reject the alpha.")],
        )

    @classmethod
    def execute(cls, image, mask) -> io.NodeOutput:
        image = node_image(image)
        return io.NodeOutput(host.to_output(to_rgba(image, check_mask(mask, single=True).to(image.device))))


class PDFNetMaskPolarity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDFNetMaskPolarity",
            display_name="PDFNet Mask Polarity",
            category="PDFNet/mask",
            description="This pack's masks are foreground = 1. Core LoadImage outputs MASK = 1 - alpha (transparent "
                        "= 1) and JoinImageWithAlpha sets alpha = 1 - mask. Converts between the two.",
            inputs=[
                io.Mask.Input("mask", tooltip="The mask to convert"),
                io.Combo.Input("direction", options=list(POLARITIES),
                               tooltip="foreground -> LoadImage/JoinImageWithAlpha mask: feed this pack's mask to "
                                       "JoinImageWithAlpha or compare it with a LoadImage mask. LoadImage mask -> "
                                       "foreground: use the alpha of a transparent PNG loaded by LoadImage here."),
            ],
            outputs=[io.Mask.Output("mask", tooltip="The converted mask")],
        )

    @classmethod
    def execute(cls, mask, direction) -> io.NodeOutput:
        convert = POLARITIES.get(direction)
        if convert is None:
            raise ValueError(f"direction must be one of {list(POLARITIES)}, got {direction!r}")
        return io.NodeOutput(host.to_output(convert(mask)))


NODES = [PDFNetComposite, PDFNetToRGBA, PDFNetMaskPolarity]
