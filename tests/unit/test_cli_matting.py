"""``cutout --mask-dir --alpha matting --despill green --mask`` end to end, as typed (a subprocess)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _scene(size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red disk with a strand on a green screen; its true alpha and a low-resolution mask."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    alpha = np.clip(14 - np.hypot(yy - 40, xx - 32) + 0.5, 0, 1)
    alpha[22:27, 31] = 1.0
    fg = np.array([0.9, 0.2, 0.1]) + 0.25 * np.array([-0.5, 1.0, -0.5]) * (alpha < 1)[..., None]   # green spill
    image = alpha[..., None] * np.clip(fg, 0, 1) + (1 - alpha[..., None]) * np.array([0.1, 0.75, 0.2])
    small = alpha.reshape(size // 4, 4, size // 4, 4).mean((1, 3))
    mask = np.kron(np.clip((small - 0.5) * 2.5 + 0.5, 0, 1), np.ones((4, 4)))
    return (image * 255 + 0.5).astype(np.uint8), alpha, (mask * 255 + 0.5).astype(np.uint8)


def test_mask_dir_matting_despill_and_mask_output(tmp_path):
    photos, masks, out = tmp_path / "photos", tmp_path / "masks", tmp_path / "out"
    photos.mkdir()
    masks.mkdir()
    image, alpha, mask = _scene()
    Image.fromarray(image).save(photos / "subject.jpg", quality=98)
    Image.fromarray(mask).save(masks / "subject.png")
    Image.fromarray(image).save(photos / "lonely.png")          # no mask of that name: fails alone
    cmd = [sys.executable, "-m", "pdfnet_core", "cutout", str(photos), "--out", str(out), "--mask-dir", str(masks),
           "--alpha", "matting", "--despill", "green", "--mask", "--size", "32", "--models-dir", str(tmp_path / "none")]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr + run.stdout            # one input had no mask
    assert "no mask named lonely.*" in run.stdout + run.stderr
    written = np.asarray(Image.open(out / "subject_mask.png"), np.float64) / 255
    rgba = np.asarray(Image.open(out / "subject.png"), np.float64) / 255
    assert np.allclose(written, rgba[..., 3], atol=1 / 255)          # --mask writes the final alpha
    given = mask / 255.0
    assert np.abs(written - alpha).sum() < 0.7 * np.abs(given - alpha).sum()   # matting beat the given mask
    rim = (written > 0.2) & (written < 0.95)
    green = rgba[..., 1] - (rgba[..., 0] + rgba[..., 2]) / 2
    assert green[rim].mean() < 0.0                                    # the green cast is gone from the edge



def test_usage_errors_name_the_flag(tmp_path, capsys):
    from pdfnet_core.cli import main   # in-process: these fail before any work

    (tmp_path / "photos").mkdir()
    base = ["cutout", str(tmp_path / "photos"), "--out", str(tmp_path / "out")]
    try:
        main([*base, "--despill", "purple"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "despill key 'purple'" in capsys.readouterr().err
    assert main([*base, "--mask-dir", str(tmp_path / "nowhere"), "--alpha", "matting"]) == 2
    assert "--mask-dir" in capsys.readouterr().err


def test_the_matting_band_scales_from_the_side_each_image_ran_at(tmp_path):
    """--size auto: the band follows the file's own network size (2560 for BiRefNet_lite-2K, near the
    photo's own size for a dynamic file), not a fixed 1024; without a segmenter (--mask-dir) the
    requested size, or the trimap's usual 1024 under auto."""
    import torch
    from torch import nn

    from pdfnet_core import LoadedModel, SegmentOptions, family
    from pdfnet_core.batch.config import CutoutConfig
    from pdfnet_core.batch.jobs import Job
    from pdfnet_core.batch.stages import CutoutModels, Decoded, matting_config
    from pdfnet_core.segment_options import AUTO_SIZE, Canvas

    auto = CutoutConfig(inputs=("x",), out=tmp_path)
    assert auto.segment.size == AUTO_SIZE == SegmentOptions().size
    photo = Decoded(job=Job.__new__(Job), stat=None, image=torch.zeros(2000, 3000, 3))

    class Lite2K(LoadedModel):
        canvas = Canvas(train_hw=(1440, 2560), max_side=2560)

    lite = CutoutModels(Lite2K(nn.Linear(1, 1), family("birefnet")), None)
    assert lite.network_side(photo, auto) == 2560
    assert matting_config(auto, lite.network_side(photo, auto)).trimap.network_size == 2560
    pdfnet = CutoutModels(LoadedModel(nn.Linear(1, 1), family("pdfnet")), None)
    assert pdfnet.network_side(photo, auto) == 1024
    fixed = CutoutConfig(inputs=("x",), out=tmp_path, segment=SegmentOptions(size=512))
    assert pdfnet.network_side(photo, fixed) == 512
    assert CutoutModels(None, None).network_side(photo, auto) is None
    assert matting_config(auto, None).trimap.network_size == 1024
    assert matting_config(fixed, None).trimap.network_size == 512


def test_fine_hair_and_edge_shift_reach_the_matting_and_need_it(tmp_path, capsys):
    from pdfnet_core.batch.stages import matting_config
    from pdfnet_core.cli import _cutout_config, _parser, main

    (tmp_path / "photos").mkdir()
    base = ["cutout", str(tmp_path / "photos"), "--out", str(tmp_path / "out")]
    assert main([*base, "--fine-hair", "0.5"]) == 2
    assert "add --alpha matting" in capsys.readouterr().err
    assert main([*base, "--alpha", "matting", "--fine-hair", "2"]) == 2
    assert "--fine-hair must be in 0..1, got 2.0" in capsys.readouterr().err
    assert main([*base, "--alpha", "matting", "--edge-shift=-65"]) == 2
    assert "--edge-shift must be within -64..64 pixels, got -65" in capsys.readouterr().err

    def config(*flags):
        return _cutout_config(_parser().parse_args([*base, "--alpha", "matting", *flags]))

    plain, shaped = config(), config("--fine-hair", "0.5", "--edge-shift", "-3")
    matting = matting_config(shaped, 1024)
    assert (matting.trimap.fine_hair, matting.edge_shift) == (0.5, -3)
    assert (matting_config(plain, 1024).trimap.fine_hair, matting_config(plain, 1024).edge_shift) == (0.0, 0)
    assert plain.settings_key() != shaped.settings_key()   # outputs made without them are not done
    assert plain.settings_key() == config("--fine-hair", "0").settings_key()


def test_matting_runs_on_the_jobs_device_and_its_results_come_back(tmp_path, monkeypatch):
    """On a GPU machine matting runs there, not on the CPU the photo was decoded on (here the device
    is torch's "meta" stand-in: the inputs arrive on it, the outputs go back to the CPU)."""
    from pathlib import PurePosixPath

    import torch

    from pdfnet_core.batch import stages
    from pdfnet_core.batch.config import CutoutConfig
    from pdfnet_core.batch.jobs import Job

    seen = []

    def fake_alpha_from_mask(image, mask, source, config):
        seen.append((image.device.type, mask.device.type, source))
        return torch.full((1, 8, 8), 0.5), torch.zeros(1, 8, 8, 3)   # stand-ins for the results

    monkeypatch.setattr(stages, "alpha_from_mask", fake_alpha_from_mask)
    cfg = CutoutConfig(inputs=("x",), out=tmp_path, alpha="matting", mask=True, device="meta")
    item = stages.Decoded(Job(str(tmp_path / "a.png"), PurePosixPath("a")), None, image=torch.rand(8, 8, 3))
    arrays = stages.render(item, torch.rand(8, 8), cfg, None, stages.StageTimer(), 1024)
    assert seen == [("meta", "meta", "matting")]
    assert [path.name for path, _ in arrays] == ["a.png", "a_mask.png"]
    assert (arrays[1][1] == 128).all()            # the matted alpha, back on the CPU, is what was written
