"""The pack's own socket types (one definition each, shared by every node that uses them)."""
from comfy_api.latest import io

# A loaded PDFNet (torch module held by pdfnet_core's model cache).
PDFNetModel = io.Custom("PDFNET_MODEL")
# A loaded Depth-Anything-V2 (S/B/L), used for PDFNet's depth prior and for depth maps.
DepthAnythingModel = io.Custom("DEPTH_ANYTHING_MODEL")
# A loaded BiRefNet (Swin-L or Swin-T); PDFNet Segment takes it in place of a PDFNet.
BiRefNetModel = io.Custom("BIREFNET_MODEL")
# A loaded SegRefiner (LR or HR checkpoint), for PDFNet SegRefine.
SegRefinerModel = io.Custom("SEGREFINER_MODEL")
