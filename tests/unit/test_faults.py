"""ISSUE 12: faults and bad input. No output lost, overwritten, truncated or kept when wrong; one
bad file never ends a batch; bad set-up fails before any model is loaded.  The CLI tests stand in
for the models (``load_models`` and ``segment`` are replaced): what is under test is file handling."""
from __future__ import annotations

import gc
import io
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pdfnet_core.pipeline
from pdfnet_core import cli
from pdfnet_core.batch import stages
from pdfnet_core.batch.config import MAX_PIXELS_ENV
from pdfnet_core.batch.imageio import write_image
from pdfnet_core.batch.manifest import MANIFEST_NAME
from pdfnet_core.atomic_files import TEMP_PREFIX, TEMP_SUFFIX

ROOT = Path(__file__).resolve().parents[2]


class Models:
    def __init__(self):
        self.loaded = 0
        self.fail: dict[tuple[int, int], BaseException] = {}   # image size -> exception to raise


@pytest.fixture()
def models(monkeypatch):
    state = Models()

    def load_models(cfg):
        state.loaded += 1
        return stages.CutoutModels(object(), None)

    def segment(images, depth=None, model=None, **kwargs):
        for image in images:
            size = tuple(image.shape[:2])
            if size in state.fail:
                raise state.fail[size]
        return [image[..., 0].clone() for image in images]  # the red channel as alpha: each output shows its source

    monkeypatch.setattr(stages, "load_models", load_models)
    monkeypatch.setattr(pdfnet_core.pipeline, "segment", segment)
    return state


def _photo(path: Path, h: int, w: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _cutout(*args) -> int:
    return cli.main(["cutout", *map(str, args), "--foreground", "none"])


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------------------------
# 1. outputs


def test_truncated_empty_resized_or_stale_outputs_are_redone(models, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    for i, name in enumerate("abcde"):
        _photo(src / f"{name}.png", 20, 30, i)
    assert _cutout(src, "--out", out) == 0
    good = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "a.png").write_bytes(good["a.png"][: len(good["a.png"]) // 2])     # truncated
    (out / "b.png").write_bytes(b"")                                           # 0 bytes
    future = time.time() + 100
    os.utime(src / "c.png", (future, future))                                 # source newer than output
    Image.new("RGBA", (5, 5)).save(out / "d.png")                              # another image's output
    capsys.readouterr()
    assert _cutout(src, "--out", out) == 0
    text = capsys.readouterr().out
    assert "skipping 1 file(s) already done" in text and "done: 4 written" in text
    for name in "abcd":
        assert (out / f"{name}.png").read_bytes() == good[f"{name}.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_concurrent_writers_of_one_name_never_leave_a_corrupt_file(monkeypatch, tmp_path):
    """Writer B runs to the end while writer A is half-way through its file: with a shared temporary
    name B used to rename A's half file into place; with private temporary files both finish."""
    target = tmp_path / "a.png"
    a = torch.rand(40, 40, 4, generator=torch.Generator().manual_seed(1))
    b = torch.rand(40, 40, 4, generator=torch.Generator().manual_seed(2))
    real_save = Image.Image.save
    nested = {"left": 1}

    def save(self, fp, format=None, **kwargs):
        buf = io.BytesIO()
        real_save(self, buf, format=format, **kwargs)
        data = buf.getvalue()
        fh = open(fp, "wb") if isinstance(fp, (str, os.PathLike)) else fp
        fh.write(data[: len(data) // 2])
        fh.flush()
        if nested["left"]:
            nested["left"] -= 1
            write_image(b, target)
        fh.write(data[len(data) // 2:])
        if fh is not fp:
            fh.close()

    monkeypatch.setattr(Image.Image, "save", save)
    write_image(a, target)
    monkeypatch.undo()
    assert _decodes(target)
    got = np.asarray(Image.open(target))
    assert any(np.array_equal(got, (t.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()) for t in (a, b))
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_a_writer_killed_mid_write_leaves_no_final_file_and_the_old_one_intact(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    script = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(ROOT)!r})
        from PIL import Image
        from pathlib import Path
        from pdfnet_core.batch.imageio import write_image
        def save(self, fp, format=None, **kw):
            fp = open(fp, "wb") if isinstance(fp, (str, Path)) else fp
            fp.write(b"\\x89PNG\\r\\n\\x1a\\n half a file")
            fp.flush()
            print("writing", flush=True)
            time.sleep(60)
        Image.Image.save = save
        write_image(torch.rand(8, 8, 3), Path(sys.argv[1]))
    """)
    for name, before in (("new.png", None), ("old.png", b"")):
        target = out / name
        if before is not None:
            Image.new("RGB", (4, 4), "red").save(target)
            before = target.read_bytes()
        proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "writing"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
        if before is None:
            assert not target.exists()
        else:
            assert target.read_bytes() == before
    left = [p.name for p in out.iterdir() if p.name not in ("old.png",)]
    assert all(n.startswith(TEMP_PREFIX) and n.endswith(TEMP_SUFFIX) for n in left)


def test_a_250_byte_input_name_works_and_long_output_names_are_shortened(models, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    name = "n" * 246 + ".png"
    assert len(name.encode()) == 250
    _photo(src / name, 12, 16)
    assert _cutout(src / name, "--out", out, "--mask", "--background", "#ffffff") == 0
    names = sorted(p.name for p in out.iterdir() if p.name != MANIFEST_NAME)
    assert "n" * 246 + ".png" in names and "n" * 246 + "_mask.png" in names and len(names) == 3
    comp = next(n for n in names if n.endswith("_composite.png"))  # 260 bytes in full: shortened
    assert len(comp.encode()) <= 255 and "~" in comp
    assert _decodes(out / comp)


def test_inputs_that_share_an_output_name_get_distinct_files(models, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    _photo(src / "a.jpg", 10, 10, 1)
    _photo(src / "a.png", 11, 11, 2)
    _photo(tmp_path / "x" / "photo.png", 12, 12, 3)
    _photo(tmp_path / "y" / "photo.png", 13, 13, 4)
    _photo(src / "solo.png", 14, 14, 5)
    assert _cutout(src, tmp_path / "x", tmp_path / "y", "--out", out) == 0
    text = capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir() if p.name != MANIFEST_NAME)
    assert len(names) == 5 and "solo.png" in names and "a_jpg.png" in names and "a_png.png" in names
    assert Image.open(out / "a_jpg.png").size == (10, 10) and Image.open(out / "a_png.png").size == (11, 11)
    photos = [n for n in names if n.startswith("photo_png_")]
    assert len(photos) == 2 and {Image.open(out / n).size for n in photos} == {(12, 12), (13, 13)}
    assert text.count("shares its output name") == 4
    # the rule is stable: a second run finds everything done
    assert _cutout(src, tmp_path / "x", tmp_path / "y", "--out", out) == 0
    assert "skipping 5 file(s) already done" in capsys.readouterr().out


def test_a_symlink_in_out_that_points_outside_is_refused_for_that_file_only(models, tmp_path, capsys):
    src, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    _photo(src / "a.png", 10, 10)
    _photo(src / "b.png", 10, 10, 1)
    out.mkdir()
    elsewhere.mkdir()
    (out / "a.png").symlink_to(elsewhere / "victim.png")
    assert _cutout(src, "--out", out) == 1
    text = capsys.readouterr().out
    assert "a.png: FAILED: refusing to write" in text and "outside the output folder" in text
    assert _decodes(out / "b.png")
    assert not (elsewhere / "victim.png").exists() and (out / "a.png").is_symlink()


# --------------------------------------------------------------------------------------------
# 2. a batch survives any one file


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG that claims w x h pixels but holds almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def test_every_per_file_failure_is_one_line_and_the_batch_goes_on(models, tmp_path, capsys, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    _photo(src / "a_good.png", 10, 10)
    good = _photo(tmp_path / "whole.png", 40, 40)
    (src / "b_truncated.png").write_bytes(good.read_bytes()[:200])
    _png_header_only(src / "c_bomb.png", 12_000, 12_000)           # 144 MP, under PIL's own refusal
    _photo(src / "d_cpu_oom.png", 11, 11)
    _photo(src / "e_cpu_oom2.png", 12, 12)
    _photo(src / "f_gpu_oom.png", 13, 13)
    _photo(src / "g_good.png", 14, 14)
    models.fail = {(11, 11): MemoryError(),
                   (12, 12): RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough "
                                          "memory: you tried to allocate 9663676416 bytes."),
                   (13, 13): torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")}
    collected = []
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(1) or real_collect(*a))
    assert _cutout(src, "--out", out) == 1
    text = capsys.readouterr().out
    for name in ("b_truncated", "c_bomb", "d_cpu_oom", "e_cpu_oom2", "f_gpu_oom"):
        assert sum(f"{name}.png: FAILED:" in line for line in text.splitlines()) == 1, name
    assert "c_bomb.png: FAILED: 12000x12000 (144,000,000 pixels) is above the pixel budget" in text
    assert text.count("out of memory") >= 3
    assert "done: 2 written, 0 skipped, 5 failed" in text and "failed (5):" in text
    assert _decodes(out / "a_good.png") and _decodes(out / "g_good.png")
    assert len(collected) >= 3  # memory released after each out-of-memory failure


def test_pixel_budget_is_settable_and_checked_from_the_header(models, tmp_path, capsys, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    _photo(src / "big.png", 20, 20)
    _photo(src / "small.png", 10, 10)
    assert _cutout(src, "--out", out, "--max-pixels", "300") == 1
    assert "big.png: FAILED: 20x20 (400 pixels) is above the pixel budget of 300 pixels" in capsys.readouterr().out
    assert not (out / "big.png").exists() and (out / "small.png").exists()
    monkeypatch.setenv(MAX_PIXELS_ENV, "500")
    assert _cutout(src, "--out", out) == 0


def test_a_wrong_size_depth_map_fails_that_file_naming_it(models, tmp_path, capsys):
    src, out, depth = tmp_path / "in", tmp_path / "out", tmp_path / "depth"
    _photo(src / "a.png", 20, 20)
    _photo(src / "b.png", 16, 16)
    _photo(depth / "a.png", 8, 8)
    _photo(depth / "b.png", 16, 16)
    assert _cutout(src, "--out", out, "--depth-dir", depth) == 1
    text = capsys.readouterr().out
    assert f"a.png: FAILED: the depth map {depth / 'a.png'} is 8x8 but the image is 20x20" in text
    assert _decodes(out / "b.png")


# --------------------------------------------------------------------------------------------
# 3. check before work; exit statuses


@pytest.mark.parametrize("case", ["out_is_file", "out_under_file", "bad_colour", "bad_background_image",
                                  "no_depth_dir", "bad_size", "bad_env_budget"])
def test_set_up_errors_exit_2_before_any_model_is_loaded(case, models, tmp_path, capsys, monkeypatch):
    src = _photo(tmp_path / "a.png", 10, 10)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    args = {"out_is_file": ["--out", notes],
            "out_under_file": ["--out", notes / "sub"],
            "bad_colour": ["--out", tmp_path / "o", "--background", "#12"],
            "bad_background_image": ["--out", tmp_path / "o", "--background-image", notes],
            "no_depth_dir": ["--out", tmp_path / "o", "--depth-dir", tmp_path / "nowhere"],
            "bad_size": ["--out", tmp_path / "o", "--size", "33"],
            "bad_env_budget": ["--out", tmp_path / "o"]}[case]
    if case == "bad_env_budget":
        monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    assert _cutout(src, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert models.loaded == 0


def test_an_unwritable_out_folder_is_a_set_up_error(models, tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop writing (see the file-as-folder case)")
        assert _cutout(_photo(tmp_path / "a.png", 10, 10), "--out", out) == 2
        assert "not a writable folder" in capsys.readouterr().err and models.loaded == 0
    finally:
        out.chmod(0o700)


def test_an_unexpected_exception_is_exit_3_with_a_traceback(models, tmp_path, capsys):
    models.fail = {(10, 10): KeyError("a bug")}
    assert _cutout(_photo(tmp_path / "a.png", 10, 10), "--out", tmp_path / "o") == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "exit status 3" in err


def test_exit_statuses_are_documented():
    text = cli._parser().format_help()
    for line in ("0  every input", "1  some inputs failed", "2  usage", "3  unexpected"):
        assert line in text
    readme = (ROOT / "README.md").read_text()
    assert "--max-pixels" in readme and "exit status" in readme.lower()


# --------------------------------------------------------------------------------------------
# 4. models


def test_checkpoint_errors_name_the_file(tmp_path):
    from pdfnet_core.models.pdfnet.loader import load_pdfnet
    from pdfnet_core.weights import CheckpointError

    path = tmp_path / "not_a_pdfnet.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError) as info:
        load_pdfnet(path)
    assert str(path) in str(info.value) and "not" in str(info.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_checkpoint_truncated_on_disk_after_loading_does_not_crash(suffix, tmp_path):
    script = textwrap.dedent(f"""
        import os, sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from safetensors.torch import save_file
        from pdfnet_core.weights import read_state_dict
        path = sys.argv[1]
        state = {{"w": torch.randn(2_000_000)}}
        save_file(state, path) if path.endswith(".safetensors") else torch.save(state, path)
        loaded = read_state_dict(path)
        os.truncate(path, 16)
        print(float(loaded["w"].sum()) == float(state["w"].sum()))
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"w{suffix}")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"killed by signal {-proc.returncode}" if proc.returncode < 0 else proc.stderr
    assert proc.stdout.strip() == "True"


def test_a_download_killed_mid_way_is_cleaned_up_by_the_next(tmp_path, monkeypatch):
    import huggingface_hub

    from pdfnet_core.atomic_files import STALE_AGE
    from pdfnet_core.download import ensure_model_file
    from pdfnet_core.families import lookup

    entry = lookup("PDFNet_Best.pth")
    folder = tmp_path / "pdfnet"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    killed = folder / f".PDFNet_Best.pth.{dead_pid}.abc123.download"          # its process is gone
    (killed / ".cache").mkdir(parents=True)
    (killed / "PDFNet_Best.pth.partial").write_bytes(b"half")
    old = folder / ".PDFNet_Best.pth.xyz.download"                            # an older layout, a day old
    old.mkdir()
    os.utime(old, (time.time() - STALE_AGE - 10,) * 2)
    live = folder / f".PDFNet_Best.pth.{os.getppid()}.live.download"           # another download running
    live.mkdir()

    def fake(repo_id, filename, revision=None, local_dir=None, **kw):
        path = Path(local_dir) / filename
        path.write_bytes(b"x" * (entry.size_bytes or 10))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setattr("pdfnet_core.download._verify_download", lambda *a: None)  # the payload is fake
    target = ensure_model_file(entry, folder, allow_download=True)
    assert target.exists()
    assert not killed.exists() and not old.exists() and live.exists()


# --------------------------------------------------------------------------------------------
# 5. library input


def test_float_images_outside_0_1_are_an_error_that_says_so():
    from pdfnet_core.ops.images import to_rgb_list

    arr = np.random.default_rng(0).integers(0, 256, (6, 7, 3)).astype(np.float32)
    for image in (arr, torch.from_numpy(arr), torch.from_numpy(arr)[None]):
        with pytest.raises(ValueError, match="must be in 0..1.*0..255"):
            to_rgb_list(image)
    slight = np.clip(arr / 255, 0, 1) * 1.02 - 0.01  # resampling overshoot is clipped, as before
    assert float(to_rgb_list(slight)[0].max()) <= 1.0


def test_integer_tensors_are_scaled_like_numpy_arrays():
    from pdfnet_core.ops.images import to_rgb_list

    u8 = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    expected = to_rgb_list(u8)[0]
    assert torch.equal(to_rgb_list(torch.from_numpy(u8))[0], expected)
    assert torch.equal(to_rgb_list(torch.from_numpy(u8)[None])[0], expected)
    mask = u8[..., :1] > 128
    assert torch.equal(to_rgb_list(torch.from_numpy(mask))[0], to_rgb_list(mask)[0])
    with pytest.raises(ValueError, match="unsupported array dtype"):
        to_rgb_list(torch.zeros(4, 4, 3, dtype=torch.int32))


def test_empty_inputs_give_no_masks_with_or_without_a_depth_model(monkeypatch):
    import pdfnet_core.defaults

    def no_default(*a, **k):
        raise AssertionError("no model may be loaded for no images")

    monkeypatch.setattr(pdfnet_core.defaults, "default_model", no_default)
    segment = pdfnet_core.pipeline.segment
    empty_batch = torch.zeros(0, 8, 8, 3)
    assert segment([]) == [] and segment(empty_batch) == []
    assert segment([], depth=[]) == [] and segment(empty_batch, depth=torch.zeros(0, 8, 8)) == []


# --------------------------------------------------------------------------------------------
# 6. ComfyUI lists


def test_loaders_never_list_staging_folders_or_partial_files():
    from nodes.model_files import model_choices

    present = ["PDFNet_Best.pth", ".PDFNet_Best.pth.123.abc.download/PDFNet_Best.pth",
               ".PDFNet_Best.pth.123.abc.download/PDFNet_Best.pth.partial",
               ".PDFNet_Best.pth.123.abc.download/.cache/huggingface/download/x.incomplete",
               "mine.safetensors.partial", ".pdfnet-abc.partial", "mine.pth"]
    assert [c for c in model_choices(present, "pdfnet") if "." + c.rsplit(".", 1)[-1] in (".pth", ".safetensors")
            and c in present] == ["mine.pth", "PDFNet_Best.pth"]
