"""The PDFNet family as the other layers see it."""
from __future__ import annotations

from ...registry import register_family
from ...specs import HOW_MEASURED, FamilySpec, InputContract, LoaderOption, MeasuredActivation, ModelEntry
from .loader import LAYOUTS, load_pdfnet
from .net import REVISIONS, SIZE_MULTIPLE, PDFNet

# Code repository Tennine2077/PDFNet is MIT; the weights have no separate licence we have verified.
_LICENCE = "MIT"
_NOTE = "the code repository Tennine2077/PDFNet's licence; the weights name no other"
_BYTES = 392 * 2**20   # both files, as the hub lists them (the 603-entry v1 layout)

# Code revisions (net.REVISIONS).  PDFNet_Best.pth: its 42 depth_decoder.* entries have the first
# revision's (802b477) shapes, which no later code can have saved (shared/reference/pdfnet/v1).
# PDF-Generally.pth was not inspected; v1 from indirect evidence: the author was still training it
# on 2025-03-25 (README) while models/ stayed v1 until 2025-10-05, and it is listed at the same
# 392 MiB as PDFNet_Best.pth, the size of the 603-entry v1 layout (561 entries alone: 377 MiB; the
# current depth head: 403 MiB).  A file that still has those entries is decided by them instead.
FILES = (
    ModelEntry("PDFNet_Best.pth", "pdfnet", None, "Tennineee/PDFNet", "pdfnet", _LICENCE,
               "PDFNet (Swin-B) trained on DIS5K DIS-TR: the paper's dichotomous segmentation model",
               pdfnet_revision="v1",
               licence_note=_NOTE, approx_bytes=_BYTES),
    ModelEntry("PDF-Generally.pth", "pdfnet", None, "Tennineee/PDFNet-General", "pdfnet", _LICENCE,
               "PDFNet (Swin-B) trained on DIS5K plus high-resolution salient object sets: general use",
               pdfnet_revision="v1",
               licence_note=_NOTE, approx_bytes=_BYTES),
)

for _entry in FILES:
    if _entry.pdfnet_revision not in (None, *REVISIONS):
        raise ValueError(f"registry entry {_entry.filename!r}: unknown PDFNet revision {_entry.pdfnet_revision!r}")


SPEC = register_family(FamilySpec(
    name="pdfnet",
    folder_key="pdfnet",
    module_type=PDFNet,
    load=load_pdfnet,
    fingerprints=LAYOUTS,
    activation=MeasuredActivation({None: {512: 56, 1024: 247}}, HOW_MEASURED),
    inputs=InputContract(size_multiple=SIZE_MULTIPLE, needs_depth=True),
    files=FILES,
    default_file="PDFNet_Best.pth",
    # "auto" is resolved by the loader from the file's own evidence, which is part of the file's
    # identity in the cache key, so the choice is passed through as it is.
    options=(LoaderOption("revision", ("auto", *REVISIONS), "auto", lambda choice, filename: choice),),
    segment=lambda model, image, depth: model(image, depth),
))
