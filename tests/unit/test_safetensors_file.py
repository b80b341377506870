"""The streaming .safetensors reader: the library's files read back exactly, damage named, no double memory."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pdfnet_core.safetensors_file import SafetensorsFormatError, read_metadata, read_tensors
from pdfnet_core.weights import CheckpointError, read_state_dict

ROOT = Path(__file__).resolve().parents[2]


def test_every_dtype_and_shape_written_by_the_library_reads_back_bit_exactly(tmp_path):
    state = {
        "f32": torch.randn(3, 5),
        "bf16": torch.randn(7, 2, 3).to(torch.bfloat16),
        "f16": torch.randn(4).half(),
        "i64": torch.arange(-5, 6),
        "u8": torch.randint(0, 255, (2, 2, 2), dtype=torch.uint8),
        "flag": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "w.safetensors"
    save_file(state, str(path), metadata={"pdfnet_revision": "v1"})
    back = read_tensors(path)
    assert set(back) == set(state)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape, name
        assert torch.equal(back[name], tensor), name
    assert read_metadata(path) == {"pdfnet_revision": "v1"}


@pytest.mark.parametrize("cut", [4, 40, -3])
def test_a_truncated_file_is_refused_with_the_download_advice(tmp_path, cut):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.randn(100), "b": torch.randn(50)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(SafetensorsFormatError):
        read_tensors(path)
    with pytest.raises(CheckpointError, match="delete it and fetch it again"):
        read_state_dict(path)


def test_a_header_that_lies_about_sizes_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    header = b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    with pytest.raises(SafetensorsFormatError, match="12 bytes for shape"):
        read_tensors(path)


def test_reading_costs_the_weights_once_in_resident_memory(tmp_path):
    """The library's mapping plus a copy held the weights twice at the peak; this reader does not."""
    path = tmp_path / "big.safetensors"
    save_file({f"w{i}": torch.randn(16, 2**20) for i in range(8)}, str(path))  # 512 MiB
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from pdfnet_core.safetensors_file import read_tensors
        def peak_kib():  # VmHWM: this process image's own peak (ru_maxrss inherits the parent's)
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
        torch.randn(1)
        before = peak_kib()
        state = read_tensors(sys.argv[1])
        print((peak_kib() - before) / 2**10)
    """)
    # a fresh process that only reads: its peak before reading is torch and nothing else
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    grown_mib = float(proc.stdout.strip())
    assert 512 * 0.95 < grown_mib < 512 * 1.25, f"reading 512 MiB of weights raised peak RSS by {grown_mib:.0f} MiB"
