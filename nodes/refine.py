"""Mask nodes: refinement and foreground colour estimation (pdfnet_core.ops.refine / .foreground)."""
from __future__ import annotations

from comfy_api.latest import io

from pdfnet_core import FOREGROUND_METHODS, GUIDES, KEEP_COMPONENT, TEMPORAL_METHODS, RefineConfig

from . import host
from .adapters import KEEP_OFF, TEMPORAL_OFF, estimate_foreground_images, refine_config, refine_masks


def _off_as_zero(value: float | None) -> float:
    # the widgets say "off" with 0 where RefineConfig says None (its defaults are the one source,
    # shared with the command line's refinement flags)
    return 0.0 if value is None else value


def _guides() -> list[str]:
    return list(GUIDES)


def _temporal_methods() -> list[str]:
    return [TEMPORAL_OFF, *TEMPORAL_METHODS]


def _keep_components() -> list[str]:
    return [KEEP_OFF, *KEEP_COMPONENT]


def _foreground_methods() -> list[str]:
    return list(FOREGROUND_METHODS)


class PDFNetRefineMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDFNetRefineMask",
            display_name="PDFNet Refine Mask",
            category="PDFNet/mask",
            description="Cleans a foreground mask (subject = 1). Steps run in this order, each off at 0: threshold, "
                        "remove islands, keep one component, fill holes, grow/shrink, guided filter, feather, temporal smoothing.",
            inputs=[
                io.Mask.Input("mask", tooltip="Foreground mask (subject = 1), e.g. from PDFNet Segment"),
                io.Image.Input("image", optional=True,
                               tooltip="The image the mask was made from; needed only by the guided filter"),
                io.Float.Input("threshold", default=_off_as_zero(RefineConfig.threshold_low), min=0.0, max=1.0, step=0.01,
                               tooltip="0 = off. Alone: hard threshold (1 where mask >= threshold, else 0). "
                                       "With threshold_high: a soft ramp from threshold (0) to threshold_high (1)."),
                io.Float.Input("threshold_high", default=_off_as_zero(RefineConfig.threshold_high), min=0.0, max=1.0, step=0.01, advanced=True,
                               tooltip="0 = hard threshold. Above threshold: top of the soft ramp."),
                io.Int.Input("remove_islands", default=RefineConfig.island_min_area, min=0, max=1 << 24,
                             tooltip="Remove foreground specks smaller than this many pixels (0 = off)"),
                io.Boolean.Input("fill_holes", default=RefineConfig.fill_holes,
                                 tooltip="Fill background holes enclosed by the subject"),
                io.Int.Input("hole_max_area", default=int(_off_as_zero(RefineConfig.hole_max_area)), min=0, max=1 << 24, advanced=True,
                             tooltip="Fill only holes up to this many pixels (0 = any size)"),
                io.Int.Input("grow", default=RefineConfig.grow_pixels, min=-512, max=512,
                             tooltip="Grow (positive) or shrink (negative) the mask by this many pixels"),
                io.Int.Input("guided_radius", default=RefineConfig.guided_radius, min=0, max=256,
                             tooltip="Guided filter radius in pixels (0 = off): snaps soft edges to the image's "
                                     "edges. Needs 'image'."),
                io.Float.Input("guided_eps", default=RefineConfig.guided_eps, min=1e-6, max=1.0, step=1e-4, advanced=True,
                               tooltip="Guided filter regularisation: smaller keeps finer edges, larger smooths more"),
                io.Combo.Input("guide", options=_guides(), default=RefineConfig.guide, advanced=True,
                               tooltip="color: separates edges of equal brightness; gray: cheaper"),
                io.Float.Input("feather", default=RefineConfig.feather_sigma, min=0.0, max=256.0, step=0.1,
                               tooltip="Gaussian feathering sigma in pixels (0 = off)"),
                io.Combo.Input("temporal", options=_temporal_methods(), default=TEMPORAL_OFF,
                               tooltip="Reduce flicker across the frames of a batch (the batch is a video): window = "
                                       "centred mean, ema = causal moving average"),
                io.Int.Input("temporal_radius", default=1, min=0, max=64, advanced=True,
                             tooltip="window: frames on each side averaged"),
                io.Float.Input("temporal_decay", default=0.5, min=0.0, max=0.99, step=0.01, advanced=True,
                               tooltip="ema: weight of the previous frame"),
                io.Combo.Input("keep_component", options=_keep_components(), default=KEEP_OFF, optional=True,
                               tooltip="Keep one subject only (runs after remove islands): largest = the biggest "
                                       "connected part, central = the part nearest the image centre. off = keep all."),
            ],
            outputs=[io.Mask.Output("mask", tooltip="Refined foreground mask (subject = 1)")],
        )

    @classmethod
    def execute(cls, mask, threshold, threshold_high, remove_islands, fill_holes, hole_max_area, grow,
                guided_radius, guided_eps, guide, feather, temporal, temporal_radius, temporal_decay,
                image=None, keep_component=KEEP_OFF) -> io.NodeOutput:
        config = refine_config(threshold=threshold, threshold_high=threshold_high, remove_islands=remove_islands,
                               fill_holes=fill_holes, hole_max_area=hole_max_area, grow=grow,
                               guided_radius=guided_radius, guided_eps=guided_eps, guide=guide, feather=feather,
                               temporal=temporal, temporal_radius=temporal_radius, temporal_decay=temporal_decay,
                               keep_component=keep_component)
        refined = refine_masks(mask, config, host.RUNTIME, image=image, device=host.load_device())
        return io.NodeOutput(host.to_output(refined))


class PDFNetEstimateForeground(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDFNetEstimateForeground",
            display_name="PDFNet Estimate Foreground Colour",
            category="PDFNet/mask",
            description="Removes the old background's colour from the subject's soft edges (hair, fur, glass), so a "
                        "composite over a new background has no halo.",
            inputs=[
                io.Image.Input("image", tooltip="The original image"),
                io.Mask.Input("mask", tooltip="Its foreground mask (subject = 1), same size"),
                io.Combo.Input("method", options=_foreground_methods(), default="multilevel",
                               tooltip="multilevel: Germer et al.'s multi-level solve (best on hair). blur_fusion: "
                                       "Forte & Pitie's blur-fusion (faster)."),
            ],
            outputs=[io.Image.Output("foreground", tooltip="The subject's own colours (RGB); composite it with the "
                                                           "same mask")],
        )

    @classmethod
    def execute(cls, image, mask, method) -> io.NodeOutput:
        return io.NodeOutput(host.to_output(estimate_foreground_images(image, mask, method, host.RUNTIME,
                                                                     device=host.load_device())))


NODES = [PDFNetRefineMask, PDFNetEstimateForeground]
