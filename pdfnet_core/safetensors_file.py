"""Reading .safetensors files straight into memory the process owns, one tensor at a time.

``safetensors.torch.load_file`` maps the file and the loaders then had to copy every tensor out of
the mapping (a tensor backed by a mapping of a file that is replaced or truncated later kills the
process with SIGBUS).  Mapped pages count as resident memory, so for a moment the weights were in
memory twice.  The format is simple (an 8-byte little-endian header length, a JSON header of
``name -> {dtype, shape, data_offsets}`` and one flat byte buffer), so each tensor is read with
``readinto`` into its own allocation instead: resident memory grows by the weights once.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

# The header's dtype names (the format's own spelling) for the dtypes torch has.
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_MAX_HEADER = 100 * 2**20  # the format's own limit


class SafetensorsFormatError(ValueError):
    """The file is not a complete, well-formed .safetensors file (the message says what is wrong)."""


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """The parsed JSON header and the offset where the tensor bytes begin."""
    with open(path, "rb") as fh:
        return _header(fh, os.fstat(fh.fileno()).st_size)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header's ``__metadata__`` strings ({} when there are none)."""
    header, _ = read_header(path)
    return dict(header.get("__metadata__") or {})


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of the file, in CPU memory this process owns (nothing stays mapped)."""
    if sys.byteorder != "little":  # the format is little-endian; let the library swap bytes
        return {k: v.clone() for k, v in load_file(str(path), device="cpu").items()}
    path = Path(path)
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        header, start = _header(fh, size)
        entries = sorted((_entry(name, info, start, size) for name, info in header.items()
                          if name != "__metadata__"), key=lambda e: e[0])
        tensors: dict[str, torch.Tensor] = {}
        for offset, name, dtype, shape, nbytes in entries:
            raw = torch.empty(nbytes, dtype=torch.uint8)
            fh.seek(offset)
            view = memoryview(raw.numpy())
            got = 0
            while got < nbytes:  # readinto may return short counts on some filesystems
                n = fh.readinto(view[got:])
                if not n:
                    raise SafetensorsFormatError(f"the file ends inside tensor {name!r} (truncated)")
                got += n
            tensors[name] = raw.view(dtype).reshape(shape) if nbytes else torch.empty(shape, dtype=dtype)
        return tensors


def _header(fh, size: int) -> tuple[dict, int]:
    prefix = fh.read(8)
    if len(prefix) < 8:
        raise SafetensorsFormatError(f"the file is {size} bytes, too short for a header")
    length = int.from_bytes(prefix, "little")
    if length > _MAX_HEADER or 8 + length > size:
        raise SafetensorsFormatError(f"the header claims {length} bytes but the file has {size - 8} after "
                                     "its length (truncated, or not a .safetensors file)")
    try:
        header = json.loads(fh.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsFormatError(f"the header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise SafetensorsFormatError("the header is not a JSON object")
    return header, 8 + length


def _entry(name: str, info, start: int, size: int) -> tuple[int, str, torch.dtype, list[int], int]:
    try:
        dtype = _DTYPES[info["dtype"]]
        shape = [int(d) for d in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SafetensorsFormatError(f"tensor {name!r} has a malformed or unsupported header entry "
                                     f"{info!r}") from exc
    numel = 1
    for d in shape:
        numel *= d
    nbytes = numel * dtype.itemsize
    if end - begin != nbytes or begin < 0 or any(d < 0 for d in shape):
        raise SafetensorsFormatError(f"tensor {name!r}: {end - begin} bytes for shape {shape} of {info['dtype']}")
    if start + end > size:
        raise SafetensorsFormatError(f"the file ends inside tensor {name!r} (truncated)")
    return start + begin, name, dtype, shape, nbytes
