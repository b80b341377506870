"""Recognising a checkpoint by its key names: every layout this pack reads, and a few it refuses.

One table for all of them, so that a loader handed the wrong file can say what the file *is*
("this is not a PDFNet checkpoint: the file looks like a Depth-Anything-V2 checkpoint") without
knowing the other families.  A family's loader names the layouts it reads (``LAYOUTS``); its spec
lists the same tuple.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Fingerprint:
    """A layout of checkpoint keys: a file matches when, for every prefix, some key starts with it.

    ``label`` is the model's name for people ("Depth-Anything-V2"); ``description`` what a file of
    this layout is, as error messages say it.
    """

    name: str
    label: str
    description: str
    prefixes: tuple[str, ...]

    def matches(self, keys: Sequence[str]) -> bool:
        return all(any(k.startswith(p) for k in keys) for p in self.prefixes)

    @property
    def wanted(self) -> str:
        """The phrase loader errors use: 'a PDFNet checkpoint'."""
        return f"a {self.label} checkpoint"


PDFNET = Fingerprint("pdfnet", "PDFNet", "a PDFNet checkpoint (Swin-B encoder + FSE decoder)",
                     ("encoder.absolute_pos_embed", "decoder.FSE_mix."))
DEPTH_ANYTHING = Fingerprint("depth_anything", "Depth-Anything-V2", "a Depth-Anything-V2 checkpoint (official layout)",
                             ("pretrained.patch_embed.", "depth_head."))
DEPTH_ANYTHING_HF = Fingerprint("depth_anything_hf", "Depth-Anything-V2",
                                "a Depth-Anything-V2 checkpoint (transformers layout)",
                                ("backbone.embeddings.", "neck.", "head."))
BIREFNET = Fingerprint("birefnet", "BiRefNet", "a BiRefNet checkpoint (Swin backbone 'bb.' + decoder)",
                       ("bb.patch_embed.", "decoder."))
SEGREFINER = Fingerprint("segrefiner", "SegRefiner", "a SegRefiner checkpoint (diffusion UNet 'denoise_model.')",
                         ("denoise_model.",))

# Checkpoints of models outside the pack, recognised only to say what a wrongly chosen file is.
FOREIGN = (
    Fingerprint("stable_diffusion", "Stable Diffusion", "a Stable Diffusion / ComfyUI diffusion checkpoint",
                ("model.diffusion_model.",)),
    Fingerprint("vae", "VAE", "a VAE checkpoint", ("encoder.down.", "decoder.up.")),
    Fingerprint("clip_text", "CLIP", "a CLIP text encoder", ("text_model.",)),
)

# In matching order: the first that matches names the file.
FINGERPRINTS: tuple[Fingerprint, ...] = (PDFNET, DEPTH_ANYTHING, DEPTH_ANYTHING_HF, BIREFNET, SEGREFINER, *FOREIGN)


def identify(keys: Iterable[str]) -> Fingerprint | None:
    """The first known layout whose fingerprint matches these checkpoint keys, or None."""
    keys = list(keys)
    return next((fp for fp in FINGERPRINTS if fp.matches(keys)), None)


def describe(keys: Iterable[str]) -> str:
    """What a checkpoint looks like, from its key names: a known layout, or its top-level names."""
    keys = list(keys)
    fp = identify(keys)
    if fp is not None:
        return fp.description
    roots = sorted({k.split(".")[0] for k in keys})
    return (f"an unknown model ({len(keys)} tensors; top-level names: "
            f"{', '.join(roots[:8])}{', ...' if len(roots) > 8 else ''})")
