"""SegRefiner node: IMAGE + coarse MASK -> refined binary MASK (pdfnet_core.refine_with_segrefiner)."""
from __future__ import annotations

from comfy_api.latest import io

from pdfnet_core import SEGREFINER_MODES

from . import host
from .adapters import segrefiner_images
from .io_types import SegRefinerModel


def _modes() -> list[str]:
    return list(SEGREFINER_MODES)


class PDFNetSegRefine(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDFNetSegRefine",
            display_name="PDFNet SegRefine (diffusion mask refinement)",
            category="PDFNet/mask",
            description="Refines a coarse mask (from PDFNet, BiRefNet, any segmenter or drawn by hand) with "
                        "SegRefiner (NeurIPS 2023), a discrete diffusion over the mask's pixels. The output is "
                        "binary (0 or 1): soft edges are lost. SLOW on a CPU: one UNet step at 256x256 takes about "
                        "2 to 4 s (float32), and hr refinement of a 1024x1024 image takes minutes.",
            search_aliases=["segrefiner", "refine mask", "mask refinement", "diffusion refine"],
            inputs=[
                io.Image.Input("image", tooltip="The image the mask was made from"),
                io.Mask.Input("mask", tooltip="Coarse foreground mask (subject = 1), same size as the image: one per "
                                              "image, or one for all images. Thresholded at 0.5 first, as the "
                                              "official code does. Empty and full masks are returned unchanged."),
                SegRefinerModel.Input("segrefiner_model", tooltip="From Load SegRefiner Model: the HR checkpoint for "
                                                                  "mode hr, the LR checkpoint for mode lr"),
                io.Combo.Input("mode", options=_modes(), default="hr",
                               tooltip="hr: a global pass at 256x256, then the least confident regions refined at "
                                       "full resolution in 256x256 patches (for high-resolution images; use "
                                       "segrefiner_hr_latest.pth). lr: the object's box refined at 256x256 (for "
                                       "small objects and instance masks; use segrefiner_lr_latest.pth). WARNING: "
                                       "on a CPU one UNet step at 256x256 takes 2 to 4 s; hr on a 1024x1024 image "
                                       "takes minutes, more on larger images."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of the diffusion's random draws; the same seed gives the same mask. "
                                     "Every image of a batch uses this seed."),
            ],
            outputs=[io.Mask.Output("mask", tooltip="Refined mask, binary (0 or 1), subject = 1, at the image's "
                                                    "size. Feather it (PDFNet Refine Mask) for soft edges.")],
        )

    @classmethod
    def execute(cls, image, mask, segrefiner_model, mode, seed) -> io.NodeOutput:
        # A runtime per execution: one residency call for all its images.
        refined = segrefiner_images(image, mask, segrefiner_model, mode, seed, host.ComfyRuntime())
        return io.NodeOutput(host.to_output(refined))


NODES = [PDFNetSegRefine]
