"""The typed description of a model family: what every layer needs to know about it, in one place.

A family (PDFNet, Depth-Anything-V2, BiRefNet, SegRefiner) describes itself once, in
``models/<family>/spec.py``, as a frozen ``FamilySpec``; ``registry.py`` lists the families.  The
loaders' checkpoint sniffing, the known files and their folders, the model cache's memory estimates,
the pipeline's input contract and the ComfyUI loader nodes all read the spec instead of keeping
tables of their own.  A loaded model travels as a ``LoadedModel``: the module and its spec.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .fingerprints import Fingerprint
from .precision import as_dtype
from .segment_options import Canvas

HF_ENDPOINT = "https://huggingface.co"
_SHA256 = re.compile(r"[0-9a-f]{64}")



# --------------------------------------------------------------------------------------------
# licences


@dataclass(frozen=True)
class Licence:
    """A licence a known file is published under, and whether it allows commercial use.

    ``commercial`` is what the licence text says, not legal advice; ``url`` where to read it.
    """

    name: str
    commercial: bool
    url: str

    @property
    def summary(self) -> str:
        """For lists and tooltips: "MIT, commercial use allowed"."""
        return f"{self.name}, {'commercial use allowed' if self.commercial else 'non-commercial use only'}"


# Every licence a known file names, once; an entry names one of these by its key.
LICENCES: dict[str, Licence] = {lic.name: lic for lic in (
    Licence("MIT", True, "https://opensource.org/license/mit"),
    Licence("Apache-2.0", True, "https://www.apache.org/licenses/LICENSE-2.0"),
    Licence("CC-BY-NC-4.0", False, "https://creativecommons.org/licenses/by-nc/4.0/"),
)}


# --------------------------------------------------------------------------------------------
# known files


@dataclass(frozen=True)
class ModelEntry:
    """One downloadable weight file.

    ``filename`` is the local name (and the registry key); ``hf_filename`` the path inside the hub
    repository (the same unless given).  ``variant`` is the size variant where a family has
    several (Depth-Anything ``vits``/``vitb``/``vitl``) and None where it has one.
    Several files may share one hub name (every BiRefNet repository holds ``model.safetensors``); the
    local name, which keys the registry, then says which it is.  ``train_hw`` is the (height, width)
    the weights were trained at, where it matters to the caller; ``patch_order`` is BiRefNet's
    patch-channel order, None where it is not known.  A file published only outside the hub has
    ``repo_id=""`` and ``manual_url`` (the publisher's page): it is never downloaded automatically,
    and the messages say where to get it and where to put it.  ``licence`` is a key of ``LICENCES``;
    ``licence_note`` what else a user should know (whose terms, what was not verified).
    ``approx_bytes``: the published file's size as far as known, for listings only (``size_bytes``,
    when given, is exact and checked after a download).
    """

    filename: str
    arch: str
    variant: str | None
    repo_id: str
    folder_key: str
    licence: str
    description: str
    hf_filename: str = ""
    revision: str = "main"
    size_bytes: int | None = None
    sha256: str | None = None
    train_hw: tuple[int, int] | None = None
    patch_order: str | None = None
    manual_url: str = ""
    # PDFNet's code revision ("v1"/"v2") the weights were trained with; read only when a copy of the
    # file has lost the entries that show it (models/pdfnet/revision.py).  Not the hub's ``revision``.
    pdfnet_revision: str | None = None
    licence_note: str = ""
    approx_bytes: int | None = None
    # (smallest, largest) network side of weights trained at many sizes (BiRefNet_dynamic); None: one size
    dynamic_sides: tuple[int, int] | None = None

    @property
    def on_hub(self) -> bool:
        return bool(self.repo_id)

    @property
    def terms(self) -> Licence:
        return LICENCES[self.licence]

    @property
    def commercial(self) -> bool:
        """Whether its licence allows commercial use."""
        return self.terms.commercial

    def licence_text(self) -> str:
        """The licence as listings and messages say it: "MIT, commercial use allowed (note)"."""
        return self.terms.summary + (f" ({self.licence_note})" if self.licence_note else "")

    def __post_init__(self) -> None:
        if self.licence not in LICENCES:
            raise ValueError(f"registry entry {self.filename!r}: licence {self.licence!r} is not one of "
                             f"{', '.join(LICENCES)} (add it to specs.LICENCES)")
        if bool(self.repo_id) == bool(self.manual_url):
            raise ValueError(f"registry entry {self.filename!r}: give either a hub repo_id or a manual_url")
        if not self.hf_filename:
            object.__setattr__(self, "hf_filename", self.filename)
        if "/" in self.filename or "\\" in self.filename:
            raise ValueError(f"registry entry {self.filename!r}: the local name must be a bare file name")
        if self.size_bytes is not None and self.size_bytes <= 0:
            raise ValueError(f"registry entry {self.filename!r}: size_bytes must be positive or None")
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"registry entry {self.filename!r}: sha256 must be 64 lowercase hex digits or None")
        if self.train_hw is not None and (len(self.train_hw) != 2 or min(self.train_hw) <= 0 or
                                          any(s % 32 for s in self.train_hw)):
            raise ValueError(f"registry entry {self.filename!r}: train_hw must be (height, width), multiples of 32")


def hf_url(entry: ModelEntry, endpoint: str = HF_ENDPOINT) -> str:
    """The direct download address of ``entry`` (off the hub: the publisher's page)."""
    if not entry.on_hub:
        return entry.manual_url
    return f"{endpoint.rstrip('/')}/{entry.repo_id}/resolve/{entry.revision}/{entry.hf_filename}"


# --------------------------------------------------------------------------------------------
# the family


@dataclass(frozen=True)
class LoaderOption:
    """A choice a loader takes beyond file, device and dtype (BiRefNet's patch order).

    ``resolve(choice, filename)`` turns the user's choice (e.g. "auto") into the value the loader
    is called with, so that the model cache keys on what was actually built.
    """

    name: str
    choices: tuple[str, ...]
    default: str
    resolve: Callable[[str, str | None], str]

    def value(self, choice: str, filename: str | None) -> str:
        if choice not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}; got {choice!r}")
        return self.resolve(choice, filename)


@dataclass(frozen=True)
class InputContract:
    """What a network expects of its input tensor."""

    size_multiple: int = 1                     # square side (segmenters) or patch size (ViT) multiple
    needs_depth: bool = False                  # segmenters: takes a depth map beside the image
    # Segmenters: the (height, width) the family's files are trained at where a file's entry says
    # nothing else, and the largest network side a request may ask for unless a file's facts allow
    # more (2048: twice the 1024 training size, and the size the HR BiRefNet files were trained at).
    train_hw: tuple[int, int] = (1024, 1024)
    max_side: int = 2048


# (model, normalised image [B,3,H,W], depth [B,1,H,W] or None) -> logits [B,1,H,W]
SegmentFn = Callable[[nn.Module, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
# (module) -> (train_hw, dynamic_sides) its loader recorded from its file's entry (None: the family's)
FileSizesFn = Callable[[nn.Module], "tuple[tuple[int, int] | None, tuple[int, int] | None]"]
# (height, width, variant) of the network input -> activation elements of one forward pass of one image
ActivationFn = Callable[[int, int, "str | None"], float]
# (height, width, variant, device, dtype) -> bytes one image needs on that device beyond ``activation``
# (which was measured on the CPU): buffers only another device's kernels allocate.
DeviceExtraFn = Callable[[int, int, "str | None", torch.device, torch.dtype], int]


# How the activation tables of the family specs were made (rerun the script after changing a model).
HOW_MEASURED = ("benchmarks/measure_activations.py: peak RSS minus RSS before one fp32 forward pass on "
                "the CPU, torch 2.14.1, 2026-12-02")


@dataclass(frozen=True, eq=False)
class MeasuredActivation:
    """An ``ActivationFn`` read off measurements: MiB per image in fp32 at square network sides.

    ``mib`` maps a variant (None: the family has one) to {side: MiB}, the peak memory of one forward
    pass minus what was resident before it, as ``benchmarks/measure_activations.py`` prints it.
    Between the measured sides the memory is linear in the pixel count (through zero below the
    smallest), beyond the largest it follows the slope of the last two points.  A variant that was
    not measured takes the largest of the measured ones.  ``how``: device, torch and date of the run.
    """

    mib: dict[str | None, dict[int, float]]
    how: str

    def __call__(self, h: int, w: int, variant: str | None) -> float:
        tables = [self.mib[variant]] if variant in self.mib else list(self.mib.values())
        return max(_interpolate(table, h * w) for table in tables) * 2**20 / 4


def _interpolate(table: dict[int, float], pixels: int) -> float:
    points = [(0, 0.0)] + sorted((side * side, mib) for side, mib in table.items())
    for (p0, m0), (p1, m1) in zip(points, points[1:]):
        if pixels <= p1:
            return m0 + (m1 - m0) * (pixels - p0) / (p1 - p0)
    (p0, m0), (p1, m1) = points[-2], points[-1]
    return m1 + (m1 - m0) * (pixels - p1) / (p1 - p0)


@dataclass(frozen=True)
class FamilySpec:
    """Everything the other layers know about one model family."""

    name: str                                  # registry name, e.g. "depth_anything"
    folder_key: str                            # models sub-folder / ComfyUI folder_paths key
    module_type: type[nn.Module]               # what its loader returns
    load: Callable[..., nn.Module]             # (source, *, device, dtype, **options) -> ready module
    fingerprints: tuple[Fingerprint, ...]      # the checkpoint layouts the loader reads (its LAYOUTS)
    activation: ActivationFn                   # measured or derived activation elements per image
    inputs: InputContract = field(default_factory=InputContract)
    files: tuple[ModelEntry, ...] = ()         # known downloadable files
    default_file: str | None = None            # used when a caller names no model
    variants: tuple[str, ...] = ()
    variant_of: Callable[[nn.Module], "str | None"] = lambda module: None
    describe: Callable[[nn.Module], str] | None = None
    options: tuple[LoaderOption, ...] = ()
    segment: SegmentFn | None = None           # how segment() runs it; None: not a segmenter
    # (network side, batch) of the largest call on a device (None: where the weights are) when the
    # family's own algorithm picks them (SegRefiner's batches of 256² patches); None: the caller says.
    work_size: Callable[[nn.Module, torch.device | None], tuple[int, int]] | None = None
    # Where 'auto' precision may pick a half type (if the device runs it well); empty: always fp32.
    auto_dtypes: tuple[torch.dtype, ...] = (torch.bfloat16,)
    # Activation bytes per image that a device other than the CPU adds (BiRefNet: torchvision's
    # deformable-convolution columns); None: the same everywhere.
    device_extra: DeviceExtraFn | None = None
    # Other ComfyUI model folders that hold this family's files too, listed and read after its own
    # (BiRefNet: core's "background_removal", where ComfyUI keeps its own BiRefNet files).
    shared_folders: tuple[str, ...] = ()
    # Segmenters: what a loaded module knows of its file's network sizes (``canvas``).
    file_sizes: FileSizesFn = lambda module: (None, None)

    def __post_init__(self) -> None:
        if not self.fingerprints or any(fp.label != self.label for fp in self.fingerprints):
            raise ValueError(f"family {self.name!r}: its checkpoint layouts must all name one model")

    @property
    def label(self) -> str:
        """For people: "Depth-Anything-V2" (the name its checkpoint layouts give the model)."""
        return self.fingerprints[0].label

    @property
    def wanted(self) -> str:
        """The phrase loader errors use: 'a PDFNet checkpoint'."""
        return self.fingerprints[0].wanted

    def option(self, name: str) -> LoaderOption:
        for opt in self.options:
            if opt.name == name:
                return opt
        raise KeyError(f"{self.label} has no loader option {name!r}")

    def activation_bytes(self, size: int | tuple[int, int], batch: int = 1, dtype: torch.dtype | str = torch.float32,
                         variant: str | None = None, device: torch.device | str | None = None) -> int:
        """Activation memory of one forward pass of ``batch`` images at network ``size``, in bytes.

        For a residency hook's ``memory_required``: linear in the batch and the element size.
        ``device``: where the pass runs; off the CPU the family's ``device_extra`` is added (None:
        the CPU estimate, as measured).
        """
        h, w = (size, size) if isinstance(size, int) else size
        if h <= 0 or w <= 0 or batch <= 0:
            raise ValueError(f"size and batch must be positive, got size={size!r}, batch={batch!r}")
        dt = as_dtype(dtype)
        total = int(math.ceil(self.activation(h, w, variant) * batch * dt.itemsize))
        if device is not None and self.device_extra is not None:
            total += int(self.device_extra(h, w, variant, torch.device(device), dt)) * batch
        return total

    def describe_module(self, module: nn.Module) -> str:
        return self.describe(module) if self.describe is not None else self.label

    def canvas(self, train_hw: tuple[int, int] | None = None, dynamic: tuple[int, int] | None = None) -> Canvas:
        """The network sizes of a file with these facts (a ModelEntry's ``train_hw``, ``dynamic_sides``;
        None: the family's): it may always ask up to the family's ``max_side``, and up to what it
        was trained at beyond that (BiRefNet_lite-2K: 2560, BiRefNet_dynamic: 2304)."""
        hw = train_hw or self.inputs.train_hw
        return Canvas(hw, max(self.inputs.max_side, *hw, *(dynamic or ())), dynamic, self.inputs.size_multiple)

    def entry_canvas(self, entry: ModelEntry) -> Canvas:
        return self.canvas(entry.train_hw, entry.dynamic_sides)

    def largest_side(self) -> int:
        """The largest network side any file of the family supports (widget and flag limits)."""
        return max([self.canvas().max_side] + [self.entry_canvas(e).max_side for e in self.files])


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model as it travels between layers (and through ComfyUI sockets): module + family."""

    module: nn.Module
    spec: FamilySpec

    @property
    def variant(self) -> str | None:
        return self.spec.variant_of(self.module)

    @property
    def dtype(self) -> torch.dtype:
        return parameter_placement(self.module)[1]

    @property
    def device(self) -> torch.device:
        return parameter_placement(self.module)[0]

    def activation_bytes(self, size: int | tuple[int, int], batch: int = 1,
                         device: torch.device | str | None = None) -> int:
        """The spec's estimate for this model's variant and dtype on ``device`` (default: where its
        weights are now)."""
        return self.spec.activation_bytes(size, batch, self.dtype, self.variant,
                                          self.device if device is None else device)

    def describe(self) -> str:
        return self.spec.describe_module(self.module)

    @property
    def canvas(self) -> Canvas:
        """The network sizes this model's file supports."""
        return self.spec.canvas(*self.spec.file_sizes(self.module))


# The two callbacks of the long-running functions (segment, estimate_depth, depth_prior):
# progress(done, total) after each batch (raising from it stops the work), and
# before_run(module, bytes_needed) before each forward pass, e.g. to make the model resident with
# that much memory to spare for activations (ComfyUI's memory manager).
Progress = Callable[[int, int], None]
BeforeRun = Callable[[nn.Module, int], None]


def parameter_placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where a model's weights are and in what precision (CPU float32 for a model without any)."""
    p = next(module.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
