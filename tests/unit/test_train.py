"""Fine-tuning: gradients through PDFNet's inference modules, data checks, depth cache, a short CPU
run that learns, exact resume, the saved model's official layout, ImageNet Swin key maps."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("timm")

from pdfnet_core.models.common.swin import SwinConfig, SwinTransformer  # noqa: E402
from pdfnet_core.models.pdfnet.net import PDFNet, PDFNetConfig  # noqa: E402
from pdfnet_core.models.pdfnet.tail import streamed_tail  # noqa: E402
from pdfnet_core.train import commands  # noqa: E402
from pdfnet_core.train.config import AugmentConfig, TrainConfig, from_dict, load_config, to_dict  # noqa: E402
from pdfnet_core.train.data import DatasetError, DISDataset, fill_depth, scan_folder, scan_folders  # noqa: E402
from pdfnet_core.train.depth_head import DepthHead  # noqa: E402
from pdfnet_core.train.loop import forward_loss, train, validate  # noqa: E402
from pdfnet_core.train.model import TrainingPDFNet, build_training_model, init_weights  # noqa: E402
from pdfnet_core.train.synthetic import write_synthetic_dis  # noqa: E402

TINY = PDFNetConfig(emb=16, swin=SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4,
                                            ape=True, pretrain_img_size=64))
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """The CI machine's two cores are shared: two threads per process only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dis")
    write_synthetic_dis(root / "train", 16, (72, 80), seed=1)
    write_synthetic_dis(root / "val", 4, (72, 80), seed=2)     # held back: other shapes and textures
    return {"train": root / "train", "val": root / "val", "root": root}


def _config(sets, out: Path, **kw) -> TrainConfig:
    base = dict(train_dirs=(sets["train"],), out_dir=out, model=TINY, size=64, batch_size=2, lr=3e-3, min_lr=3e-4,
                warmup_steps=2, progress=False)
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------------------------
# gradients


def _tiny_model(revision: str = "v2") -> TrainingPDFNet:
    torch.manual_seed(0)
    return build_training_model(replace(TINY, revision=revision)).model


@pytest.mark.parametrize("revision", ["v1", "v2"])
def test_every_parameter_gets_a_gradient(sets, revision):
    model = _tiny_model(revision)
    batch = {k: torch.stack([DISDataset(scan_folder(sets["train"]), 64, None)[(0, i)][k] for i in range(2)])
             for k in ("image", "mask", "depth")}
    terms, _ = forward_loss(model, batch, CPU, None, per_item=False)
    terms.total.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead
    assert torch.isfinite(terms.total)


def test_the_patch_branch_receives_gradients():
    """The official training step cuts the 8x8 patch branch off autograd (no_grad split/merge); here
    a loss on the final mask reaches the pixels through the patch tiles alone."""
    model = _tiny_model()
    net = model.net
    torch.manual_seed(1)
    image = torch.randn(1, 3, 64, 64)
    depth3 = torch.rand(1, 1, 64, 64).expand(-1, 3, -1, -1)
    tiles_in = image.clone().requires_grad_(True)
    glob = net.encode(net.global_batch(image, depth3))
    patch_f = net.encode_patches(tiles_in)
    final, _ = net.decoder(image, depth3, [g[:1] for g in glob], [g[1:] for g in glob], patch_f)
    final.square().mean().backward()
    grad = tiles_in.grad.abs()
    assert grad.sum() > 0
    tile = grad[0].sum(0).unfold(0, 8, 8).unfold(1, 8, 8).sum((-1, -2))   # per 8x8-pixel tile
    assert (tile > 0).all()                                             # every tile of the grid


def test_streamed_tail_has_the_gradients_of_the_plain_tail():
    """The inference tail is computed in bands; its backward equals the one-piece official formula."""
    torch.manual_seed(2)
    dec = PDFNet(replace(TINY, band_rows=8)).decoder.train()
    init_weights(dec)
    s = 64
    x6 = torch.randn(2, 6, s, s, requires_grad=True)
    mix = torch.randn(2, 16, s // 4, s // 4, requires_grad=True)
    weight = torch.randn(2, 1, s, s)

    def up(t, size):
        return F.interpolate(t, size=size, mode="bilinear", align_corners=True)

    shallow = dec.shallow(up(x6, (4 * s, 4 * s)))
    f = dec.upsample1(up(mix, (s // 2, s // 2)) + up(shallow, (s // 2, s // 2)))
    plain = dec.Bside[0](dec.upsample2(up(f, (s, s)) + shallow))
    inputs = [x6, mix] + list(dec.shallow.parameters()) + list(dec.upsample1.parameters()) + \
        list(dec.upsample2.parameters()) + list(dec.Bside[0].parameters())
    want = torch.autograd.grad((plain * weight).sum(), inputs)
    band = streamed_tail(dec.shallow, dec.upsample1[0], dec.upsample2[0], dec.Bside[0], x6, mix, dec.band_rows)
    got = torch.autograd.grad((band * weight).sum(), inputs)
    assert (band - plain).abs().max() <= 1e-5 * plain.abs().max()
    for g, w in zip(got, want):
        assert (g - w).abs().max() <= 1e-4 * w.abs().max()


# --------------------------------------------------------------------------------------------
# data


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_dataset_errors_name_the_files(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        scan_folder(tmp_path / "absent")
    (tmp_path / "empty" / "im").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        scan_folder(tmp_path / "empty")
    with pytest.raises(DatasetError, match="empty"):
        scan_folders([])
    rgb = np.zeros((32, 40, 3), np.uint8)
    gray = np.zeros((32, 40), np.uint8)
    _write(tmp_path / "a" / "im" / "one.jpg", rgb)
    _write(tmp_path / "a" / "im" / "two.jpg", rgb)
    _write(tmp_path / "a" / "gt" / "one.png", gray)
    with pytest.raises(DatasetError, match=r"1 image\(s\) without a mask .*two"):
        scan_folder(tmp_path / "a")
    _write(tmp_path / "a" / "gt" / "two.png", np.zeros((32, 41), np.uint8))
    with pytest.raises(DatasetError, match="two: image 40x32, mask 41x32"):
        scan_folder(tmp_path / "a")
    _write(tmp_path / "a" / "gt" / "two.png", rgb)
    with pytest.raises(DatasetError, match=r"not single-channel: two.png \(RGB\)"):
        scan_folder(tmp_path / "a")
    _write(tmp_path / "a" / "gt" / "two.png", gray)
    _write(tmp_path / "a" / "depth" / "one.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(DatasetError, match="one: image 40x32, depth 16x16"):
        scan_folder(tmp_path / "a")
    (tmp_path / "a" / "depth" / "one.png").unlink()
    items = scan_folder(tmp_path / "a")
    assert [i.stem for i in items] == ["one", "two"] and items[0].depth is None


def _tiny_depth_anything():
    """A randomly initialised, narrow Depth-Anything-V2 (the real module, so depth_prior accepts it)."""
    from pdfnet_core.models.depth_anything.net import DepthAnythingConfig, DepthAnythingV2

    torch.manual_seed(5)
    return DepthAnythingV2(DepthAnythingConfig("tiny", 32, 4, 2, 16, (8, 16, 32, 32), (0, 1, 2, 3), "test")).eval()


def test_depth_maps_are_computed_once_and_cached(tmp_path):
    from pdfnet_core import depth_prior
    from pdfnet_core.train.data import read_gray, read_rgb

    write_synthetic_dis(tmp_path / "nodepth", 2, (40, 56), seed=3, with_depth=False)
    loads = []

    def load():
        loads.append(1)
        return _tiny_depth_anything()

    items = scan_folder(tmp_path / "nodepth")
    cache = tmp_path / "cache"
    filled = fill_depth(items, cache, load)
    assert len(loads) == 1 and all(i.depth.is_file() and i.depth.is_relative_to(cache) for i in filled)
    want = depth_prior([read_rgb(items[0].image).permute(1, 2, 0)], _tiny_depth_anything())[0]
    stored = read_gray(filled[0].depth)[0]
    assert stored.shape == (40, 56) and torch.equal(stored, want)       # the 8-bit prior, stored exactly
    again = fill_depth(items, cache, load)
    assert len(loads) == 1 and [i.depth for i in again] == [i.depth for i in filled]   # no model, no work


def test_augmentations_are_deterministic_per_epoch_and_index(sets):
    items = scan_folder(sets["train"])
    ds = DISDataset(items, 64, AugmentConfig(hflip=0.5, crop=1.0, crop_min_scale=0.8), seed=3)
    a, b, c = ds[(0, 1)], ds[(0, 1)], ds[(1, 1)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], c["image"])
    assert a["image"].shape == (3, 64, 64) and a["mask"].shape == a["depth"].shape == (1, 64, 64)
    assert 0 <= a["mask"].min() and a["mask"].max() <= 1


# --------------------------------------------------------------------------------------------
# a short run


def test_training_lowers_the_loss_and_raises_iou(sets, tmp_path):
    config = _config(sets, tmp_path / "run", val_dirs=(sets["val"],), max_steps=36, val_every=36, save_every=36)
    torch.manual_seed(config.seed)          # the initial weights train() starts from
    before = validate(build_training_model(TINY).model, DISDataset(scan_folder(sets["val"]), 64, None), CPU, None,
                      per_item=False)
    result = train(config, echo=lambda line: None)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 36
    after = result.validation[-1]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"loss {first:.3f} -> {last:.3f}; held-back IoU {before['iou']:.3f} -> {after['iou']:.3f}, "
          f"maxF {before['max_f']:.3f} -> {after['max_f']:.3f}")
    assert last < first - 0.5
    assert after["iou"] > before["iou"] + 0.15
    assert after["loss"] < before["loss"] and after["mae"] < before["mae"]
    # logs
    out = tmp_path / "run"
    rows = (out / "train_log.csv").read_text().splitlines()
    assert rows[0].startswith("update,epoch,lr,loss,seg,integrity,depth,target") and len(rows) == 37
    assert "max_f" in (out / "val_log.csv").read_text().splitlines()[0]
    # the saved model: official names, the strict loader, the trained numbers
    from pdfnet_core import load_pdfnet, read_state_dict

    state = read_state_dict(out / "model.pth")
    expected = set(PDFNet(TINY).state_dict()) | {"depth_decoder." + k for k in DepthHead(16, "v2").state_dict()}
    assert set(state) == expected
    loaded = load_pdfnet(out / "model.pth", config=TINY, revision="v2")
    trained = _tiny_model().requires_grad_(False)
    trained.load_state_dict(torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"])
    batch = DISDataset(scan_folder(sets["val"]), 64, None)[(0, 0)]
    with torch.no_grad():
        want = trained.eval().net(batch["image"][None], batch["depth"][None])
        got = loaded(batch["image"][None], batch["depth"][None])
    assert torch.allclose(got, want, atol=1e-5)


def test_resume_continues_the_same_loss_curve(sets, tmp_path):
    kw = dict(max_steps=4, grad_accum=2, batch_size=1, ema_decay=0.9, val_every=100, save_every=100)
    whole = train(_config(sets, tmp_path / "whole", **kw), echo=lambda line: None)
    part = train(_config(sets, tmp_path / "part", **kw), echo=lambda line: None, stop_after=2)
    assert part.updates == 2 and not (tmp_path / "part" / "model.pth").exists()
    rest = train(_config(sets, tmp_path / "part", resume=tmp_path / "part" / "checkpoints" / "last.pt", **kw),
                 echo=lambda line: None)
    curve = [r["loss"] for r in part.history + rest.history]
    assert [r["update"] for r in part.history + rest.history] == [1, 2, 3, 4]
    np.testing.assert_allclose(curve, [r["loss"] for r in whole.history], rtol=1e-6)
    a = torch.load(tmp_path / "whole" / "model.pth", weights_only=True)
    b = torch.load(tmp_path / "part" / "model.pth", weights_only=True)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)   # the EMA weights
    assert len((tmp_path / "part" / "train_log.csv").read_text().splitlines()) == 5
    with pytest.raises(ValueError, match="lr"):
        train(_config(sets, tmp_path / "part", resume=tmp_path / "part" / "checkpoints" / "last.pt",
                      **{**kw, "lr": 1e-4}), echo=lambda line: None)


# --------------------------------------------------------------------------------------------
# the released checkpoint: depth head, official layout, load_pdfnet unchanged


def test_released_layout_fine_tuning_start_and_saved_model(reference_dir, tmp_path):
    """A checkpoint with the released file's 603 entries: the v1 depth head is taken from it, the
    model trains with revision v1, and what is saved is the same 603-entry layout load_pdfnet reads."""
    from synthetic_pdfnet import synthetic_tensor

    from pdfnet_core import load_pdfnet

    keys = json.loads((reference_dir / "pdfnet" / "keys.json").read_text())
    extra = json.loads((reference_dir / "pdfnet" / "checkpoint_extra_keys.json").read_text())["keys"]
    state = {k: synthetic_tensor(k, v["shape"]) for k, v in {**keys, **extra}.items()}
    path = tmp_path / "PDFNet_603.pth"
    torch.save(state, path)
    start = build_training_model(PDFNetConfig(), init=path)
    model = start.model
    assert start.head_from_checkpoint and model.net.config.revision == "v1" and model.depth_head.revision == "v1"
    assert model.training and all(p.requires_grad for p in model.parameters())
    saved = model.official_state_dict()
    assert set(saved) == set(state) and len(saved) == 603
    assert all(saved[k].shape == state[k].shape and torch.equal(saved[k], state[k]) for k in state)
    out = tmp_path / "model.pth"
    torch.save(saved, out)
    assert load_pdfnet(out).config.revision == "v1"      # strict load; the head tells the revision
    assert set(model.official_state_dict(include_depth_head=False)) == set(keys)   # the 561 inference entries


# --------------------------------------------------------------------------------------------
# ImageNet Swin


def _timm_swin(embed_dim: int = 16):
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

    torch.manual_seed(4)
    model = TimmSwin(img_size=128, patch_size=4, embed_dim=embed_dim, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2),
                     window_size=4, num_classes=7, always_partition=True, strict_img_size=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_imagenet_swin_weights_map_onto_our_encoder():
    from pdfnet_core.train.swin_timm import load_imagenet_swin
    from pdfnet_core.weights import CheckpointError

    timm_model = _timm_swin()
    timm_state = timm_model.state_dict()
    # the Microsoft layout: each stage's patch merging at its end, buffers included
    ms_state = {}
    for k, v in timm_state.items():
        parts = k.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            parts[1] = str(int(parts[1]) - 1)
        ms_state[".".join(parts)] = v
    x = torch.randn(1, 3, 128, 128)          # token maps 32/16/8/4: multiples of the window, no padding
    with torch.no_grad():
        want = timm_model.forward_intermediates(x, indices=4, norm=False, output_fmt="NCHW", intermediates_only=True)
    for state in (timm_state, ms_state):
        encoder = SwinTransformer(TINY.swin).eval()
        with torch.no_grad():
            encoder.absolute_pos_embed.zero_()
        left = load_imagenet_swin(encoder, state)
        assert {k for k in left if not k.endswith("relative_position_index")} == \
            {"absolute_pos_embed"} | {f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")}
        with torch.no_grad():
            ours = encoder(x)
        for a, b in zip(ours, want):     # our stage outputs = the per-stage LayerNorm (still unit) of timm's
            b = F.layer_norm(b.permute(0, 2, 3, 1), b.shape[1:2]).permute(0, 3, 1, 2)
            assert (a - b).abs().max() <= 1e-4
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_imagenet_swin(SwinTransformer(TINY.swin), _timm_swin(embed_dim=32).state_dict())


def test_timm_swin_b_384_keys_cover_pdfnet_encoder():
    import timm

    from pdfnet_core.models.common.swin import SWIN_B_PDFNET
    from pdfnet_core.train.swin_timm import _DROPPED, _NOT_IN_IMAGENET, to_encoder_keys
    from pdfnet_core.weights import account_keys

    with torch.device("meta"):
        timm_model = timm.create_model("swin_base_patch4_window12_384", pretrained=False)
        encoder = SwinTransformer(SWIN_B_PDFNET)
    state = to_encoder_keys(timm_model.state_dict())
    expected = {k: v.shape for k, v in encoder.state_dict().items() if not _NOT_IN_IMAGENET.fullmatch(k)}
    report = account_keys(state, expected, ignore=_DROPPED)
    assert report.ok and len(expected) == 329 - 4   # all but head.fc and norm (2 + 2 entries)


# --------------------------------------------------------------------------------------------
# configuration and the command


def test_config_round_trip_and_errors(tmp_path):
    config = TrainConfig(train_dirs=(tmp_path / "a",), out_dir=tmp_path / "o", model=TINY,
                         augment=AugmentConfig(crop=0.2))
    assert from_dict(TrainConfig, json.loads(json.dumps(to_dict(config)))) == config
    with pytest.raises(ValueError, match="unknown setting.*learning_rate"):
        from_dict(TrainConfig, {"train_dirs": ["a"], "out_dir": "o", "learning_rate": 1})
    for bad in ({"size": 100}, {"precision": "int8"}, {"init": "a.pth", "swin_imagenet": "b.pth"},
                {"augment": {"hflip": 2}}, {"revision": "v3"}):
        with pytest.raises(ValueError):
            load_config(None, {"train_dirs": ["a"], "out_dir": "o", **bad})
    (tmp_path / "run.json").write_text(json.dumps({"train_dirs": ["data"], "out_dir": "out", "lr": 2e-5,
                                                   "augment": {"hflip": 0.0}, "model": {"emb": 32}}))
    loaded = load_config(tmp_path / "run.json", {"augment": {"crop": 0.1}, "size": 512})
    assert loaded.train_dirs == (tmp_path / "data",) and loaded.out_dir == tmp_path / "out"
    assert loaded.augment == AugmentConfig(hflip=0.0, crop=0.1) and loaded.size == 512 and loaded.lr == 2e-5
    assert loaded.model.emb == 32 and loaded.model.swin == PDFNetConfig().swin


def test_train_command(sets, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    commands.add_parsers(parser.add_subparsers(dest="command", required=True))

    def run(*argv):
        args = parser.parse_args(["train", *argv])
        return args.run(args)

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model": to_dict(TINY), "size": 64, "batch_size": 2, "lr": 3e-3}))
    out = tmp_path / "cli"
    assert run(str(sets["train"]), "--config", str(config), "--out", str(out), "--max-steps", "2",
               "--no-progress", "--crop", "0", "--stop-after", "1") == 0
    assert not (out / "model.pth").exists() and (out / "checkpoints" / "last.pt").is_file()
    assert run("--config", str(config), str(sets["train"]), "--out", str(out), "--max-steps", "2",
               "--no-progress", "--crop", "0", "--resume") == 0
    assert (out / "model.pth").is_file()
    assert json.loads((out / "config.json").read_text())["augment"]["crop"] == 0.0
    assert run(str(sets["train"]), "--out", str(out), "--size", "100") == 2
    assert run(str(sets["root"] / "missing"), "--config", str(config), "--out", str(out)) == 2
    assert run("--config", str(config)) == 2          # no training folder, no --out
    err = capsys.readouterr().err
    assert "multiple of 32" in err and "no such folder" in err and "missing required" in err
