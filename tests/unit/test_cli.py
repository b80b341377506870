"""The batch cut-out command on a temporary folder of generated images, with synthetic weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pdfnet_core.cli import main
from synthetic_dam2 import key_shapes, synth_state_dict
from synthetic_pdfnet import synthetic_state_dict


@pytest.fixture(scope="module")
def weights(reference_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    pdfnet, depth = folder / "pdfnet.pth", folder / "dav2_vits.pth"
    torch.save(synthetic_state_dict(reference_dir), pdfnet)
    torch.save(synth_state_dict(key_shapes(reference_dir, "vits")), depth)
    return pdfnet, depth


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 30, np.uint8)
    img[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = rng.integers(120, 255, 3)
    return img


@pytest.fixture()
def photos(tmp_path):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(_photo(48, 64, 0)).save(src / "a.jpg")
    Image.fromarray(_photo(40, 40, 1)).convert("L").save(src / "gray.png")
    rgba = Image.fromarray(_photo(32, 50, 2)).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(src / "rgba.png")
    Image.fromarray((np.arange(36 * 36, dtype=np.uint16).reshape(36, 36) * 40)).save(src / "deep16.png")
    Image.fromarray(_photo(30, 30, 3)).convert("CMYK").save(src / "cmyk.jpg")
    Image.fromarray(_photo(1, 1, 4)).save(src / "tiny.png")
    Image.fromarray(_photo(50, 30, 5)).save(src / "sub" / "nested.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (src / "notes.txt").write_text("not an image")
    return src


def _run(weights, *args):
    pdfnet, depth = weights
    return main(["cutout", *map(str, args), "--weights", str(pdfnet), "--depth-weights", str(depth),
                 "--size", "64", "--foreground", "blur_fusion"])


def test_cutout_folder_skips_done_files_and_reports_broken_ones(weights, photos, tmp_path, capsys):
    out = tmp_path / "out"
    status = _run(weights, photos, "--out", out, "--mask", "--background", "#00ff00")
    text = capsys.readouterr().out
    assert status == 1  # an unreadable file, and one too small for the depth model
    assert "broken.png: FAILED: not a readable image" in text
    assert "tiny.png: FAILED:" in text and "at least 14x14" in text
    assert "done: 5 written, 0 skipped, 2 failed" in text
    for name, (h, w) in {"a": (48, 64), "gray": (40, 40), "rgba": (32, 50), "deep16": (36, 36),
                         "cmyk": (30, 30)}.items():
        cut = Image.open(out / f"{name}.png")
        assert cut.mode == "RGBA" and cut.size == (w, h)
        mask = np.asarray(Image.open(out / f"{name}_mask.png"))
        assert mask.shape == (h, w)
        assert np.array_equal(np.asarray(cut)[..., 3], mask)  # the cut-out's alpha is the mask
        comp = np.asarray(Image.open(out / f"{name}_composite.png").convert("RGB")).astype(int)
        where_bg = mask == 0
        if where_bg.any():
            assert np.all(comp[where_bg] == [0, 255, 0])
    assert not (out / "sub").exists()  # not recursive
    assert not list(out.rglob("*.partial"))

    mtime = (out / "a.png").stat().st_mtime_ns
    status = _run(weights, photos, "--out", out, "--mask", "--background", "#00ff00")
    text = capsys.readouterr().out
    assert "skipping 5 file(s) already done" in text and (out / "a.png").stat().st_mtime_ns == mtime
    _run(weights, photos / "a.jpg", "--out", out, "--mask", "--background", "#00ff00", "--overwrite")
    assert (out / "a.png").stat().st_mtime_ns != mtime


def test_recursive_keeps_the_folder_structure_and_webp(weights, tmp_path):
    src = tmp_path / "album"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(_photo(40, 40, 6)).save(src / "top.png")
    Image.fromarray(_photo(50, 30, 5)).save(src / "sub" / "nested.png")
    out = tmp_path / "out"
    assert _run(weights, src, "--out", out, "--recursive", "--format", "webp") == 0
    nested = Image.open(out / "sub" / "nested.webp")
    assert nested.mode == "RGBA" and nested.size == (30, 50)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.webp")) == ["sub/nested.webp", "top.webp"]


def test_external_depth_folder_replaces_the_depth_model(weights, photos, tmp_path, capsys):
    depth_dir = tmp_path / "depth"
    depth_dir.mkdir()
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))).save(depth_dir / "a.png")
    out = tmp_path / "out"
    pdfnet, _ = weights
    status = main(["cutout", str(photos / "a.jpg"), str(photos / "gray.png"), "--out", str(out), "--weights", str(pdfnet),
                   "--depth-dir", str(depth_dir), "--size", "64", "--foreground", "none"])
    text = capsys.readouterr().out
    assert status == 1 and (out / "a.png").exists()
    assert "gray.png: FAILED: no depth map named gray.*" in text


def test_missing_weights_without_download_say_where_to_put_them(photos, tmp_path, capsys):
    status = main(["cutout", str(photos / "a.jpg"), "--out", str(tmp_path / "out"), "--models-dir", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert status == 2
    assert "PDFNet_Best.pth" in err and str(tmp_path / "m" / "pdfnet") in err and "huggingface.co" in err


def test_convert_writes_a_loadable_half_precision_file(weights, tmp_path, capsys):
    pdfnet, _ = weights
    target = tmp_path / "pdfnet_fp16.safetensors"
    assert main(["convert", str(pdfnet), str(target), "--dtype", "fp16"]) == 0
    from pdfnet_core.models.pdfnet.loader import load_pdfnet
    from safetensors.torch import load_file

    stored = load_file(str(target))
    assert len(stored) == 561 and stored["decoder.Bside.0.weight"].dtype == torch.float16
    assert load_pdfnet(target) is not None
