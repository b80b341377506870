"""The pack's own socket types (one definition each, shared by every node that uses them)."""
from comfy_api.latest import io

# A loaded PDFNet (torch module held by pdfnet_core's model cache).
PDFNetModel = io.Custom("PDFNET_MODEL")
# A loaded Depth-Anything-V2 (S/B/L), used for PDFNet's depth prior and for depth maps.
DepthAnythingModel = io.Custom("DEPTH_ANYTHING_MODEL")
