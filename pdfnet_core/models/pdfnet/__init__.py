"""PDFNet (CVPR 2026): RGB, pseudo-depth and an 8x8 grid of full-resolution patches fused into one mask.

net.py the module tree (official parameter names), tail.py the streamed full-resolution tail,
loader.py the released checkpoints as they are, spec.py what the other layers need to know.
"""
from .loader import load_pdfnet
from .net import PDFNet, PDFNetConfig, PDFNetOutput
from .spec import SPEC  # registers the family

__all__ = ["load_pdfnet", "PDFNet", "PDFNetConfig", "PDFNetOutput", "SPEC"]
