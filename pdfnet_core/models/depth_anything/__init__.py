"""Depth-Anything-V2 (DINOv2 ViT + DPT head): net, loader for every published layout, spec."""
from .loader import load_depth_anything
from .net import DepthAnythingConfig, DepthAnythingV2
from .spec import SPEC  # registers the family

__all__ = ["load_depth_anything", "DepthAnythingConfig", "DepthAnythingV2", "SPEC"]
