"""BiRefNet (Swin-L / Swin-T) on the shared Swin: net, deformable convolution, loader, spec."""
from .loader import load_birefnet
from .net import BiRefNet, BiRefNetConfig
from .spec import SPEC  # registers the family

__all__ = ["load_birefnet", "BiRefNet", "BiRefNetConfig", "SPEC"]
