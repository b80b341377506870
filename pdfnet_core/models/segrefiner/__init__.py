"""SegRefiner (NeurIPS 2023): the diffusion UNet, its discrete-diffusion sampler, the LR/HR modes, loader, spec."""
from .loader import load_segrefiner
from .refiner import SegRefiner, refine_with_segrefiner
from .spec import SPEC  # registers the family

__all__ = ["load_segrefiner", "SegRefiner", "refine_with_segrefiner", "SPEC"]
