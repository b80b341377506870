"""SegRefiner: parity with the official run (shared/reference/segrefiner), loading, and bad input.

Every fixture is compared within the README's tolerances (§9): logits 2e-4, f 2e-5, sigmoid outputs
2e-5, binary states and boxes exact, final masks exact except the listed fragile pixels.  Weights are
the README's synthetic recipe, always loaded through ``load_segrefiner``.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from pdfnet_core.models.segrefiner.refiner import SegRefiner, normalize_image, refine_with_segrefiner
from pdfnet_core.models.segrefiner.diffusion import NoiseSource, sample_loop
from pdfnet_core.models.segrefiner.loader import load_segrefiner
from pdfnet_core.models.segrefiner.modes import (LRConfig, HRConfig, candidate_boxes, greedy_nms,
                                          merge_patches, mixed_boxes, patch_boxes)
from pdfnet_core.weights import CheckpointError
from synthetic_segrefiner import disc_scene, synthetic_state_dict

LOGIT_TOL = 2e-4
FINE_TOL = 2e-5
SOFT_TOL = 2e-5


@pytest.fixture(scope="module")
def ref(reference_dir) -> Path:
    return reference_dir / "segrefiner"


@pytest.fixture(scope="module")
def meta(ref) -> dict:
    return json.loads((ref / "meta.json").read_text())


def load(ref: Path, name: str) -> np.ndarray:
    return np.load(ref / f"{name}.npy")


def maxdiff(a, b) -> float:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return float(np.abs(a.astype(np.float64).reshape(np.shape(b)) - np.asarray(b, dtype=np.float64)).max())


def assert_binary_equal(ours, theirs, what: str) -> None:
    ours = (ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)).astype(np.uint8)
    ours = ours.reshape(theirs.shape)
    bad = np.argwhere(ours != theirs)
    assert len(bad) == 0, f"{what}: {len(bad)} pixels differ, first {bad[:5].tolist()}"


def assert_final_equal(ours, theirs, fragile, what: str) -> None:
    ours = np.asarray(ours).astype(np.uint8).reshape(theirs.shape)
    allowed = {tuple(p) for p in fragile}
    bad = [tuple(p) for p in np.argwhere(ours != theirs).tolist() if tuple(p) not in allowed]
    assert not bad, f"{what}: {len(bad)} non-fragile pixels differ, first {bad[:5]}"


@pytest.fixture(scope="module")
def narrow(reference_dir) -> SegRefiner:
    return load_segrefiner(synthetic_state_dict(reference_dir, narrow=True))


# --------------------------------------------------------------------------------------------
# (a) one UNet forward, narrow and full width


def test_unet_forward_narrow(narrow, ref):
    image = torch.cat([normalize_image(i) for i in load(ref, "fwd_image")])
    mask = torch.from_numpy(load(ref, "fwd_mask")).float()[:, None]
    t = torch.from_numpy(load(ref, "fwd_t"))
    with torch.inference_mode():
        logits = narrow.unet(image, mask, t)
        emb = narrow.denoise_model.time_embed(t)
    assert maxdiff(emb, load(ref, "fwd_emb")) == 0.0
    assert maxdiff(logits, load(ref, "fwd_logits")) <= LOGIT_TOL


@pytest.mark.slow
def test_unet_forward_full_width(reference_dir, ref):
    model = load_segrefiner(synthetic_state_dict(reference_dir, narrow=False))
    assert model.config.model_channels == 128
    assert sum(p.numel() for p in model.parameters()) == 118_604_673
    image = torch.cat([normalize_image(i) for i in load(ref, "full_fwd_image")])
    mask = torch.from_numpy(load(ref, "full_fwd_mask")).float().reshape(image.shape[0], 1, *image.shape[-2:])
    t = torch.from_numpy(load(ref, "full_fwd_t"))
    with torch.inference_mode():
        logits = model.unet(image, mask, t)
        emb = model.denoise_model.time_embed(t)
    assert maxdiff(emb, load(ref, "full_fwd_emb")) == 0.0
    assert maxdiff(logits, load(ref, "full_fwd_logits")) <= LOGIT_TOL


# --------------------------------------------------------------------------------------------
# (b) the six-step loop on a 256² image


@pytest.fixture(scope="module")
def lr_run(narrow, ref):
    image = normalize_image(load(ref, "lr_image"))
    coarse = torch.from_numpy(load(ref, "lr_coarse")).float().reshape(1, 1, 256, 256)
    noise = NoiseSource([load(ref, f"lr_noise_t{t}") for t in (5, 4, 3, 2, 1)])
    trace: list = []
    with torch.inference_mode():
        soft, _ = sample_loop(narrow.unet, image, coarse, (5, 4, 3, 2, 1, 0), noise, trace=trace)
    return soft, {s["t"]: s for s in trace}


def test_lr_loop_logits_states_and_fine(lr_run, ref):
    _, steps = lr_run
    for t in range(6):
        assert maxdiff(steps[t]["logits"], load(ref, f"lr_logits_t{t}")) <= LOGIT_TOL, f"logits t={t}"
    for t in range(5):
        assert_binary_equal(steps[t]["x_in"], load(ref, f"lr_x_in_t{t}"), f"state entering t={t}")
    assert maxdiff(steps[1]["fine"], load(ref, "lr_fine_t1")) <= FINE_TOL


def test_lr_loop_output(lr_run, ref, meta):
    soft, _ = lr_run
    expected_soft = torch.from_numpy(load(ref, "lr_logits_t0")).sigmoid()
    assert maxdiff(soft, expected_soft.numpy()) <= SOFT_TOL
    fragile = meta["cases"]["lr"]["final_fragile_px"]["where"]
    assert_final_equal((soft >= 0.5)[0, 0].numpy(), load(ref, "lr_final"), fragile, "lr_final")


# --------------------------------------------------------------------------------------------
# (b2) LR / instance mode end to end


@pytest.fixture(scope="module")
def ins_run(narrow, ref):
    trace: list = []
    noise = [load(ref, f"ins_noise_t{t}") for t in (5, 4, 3, 2, 1)]
    out = narrow.refine(load(ref, "ins_image"), load(ref, "ins_coarse"), "lr", noise=noise, trace=trace)
    return out, trace


def test_ins_crop_boxes_and_states(ins_run, ref):
    _, trace = ins_run
    assert np.array_equal(trace[0]["boxes"].numpy(), load(ref, "ins_boxes"))
    assert_binary_equal(trace[0]["obj_mask"], load(ref, "ins_obj_mask"), "ins_obj_mask")
    steps = {s["t"]: s for s in trace if "t" in s}
    for t in range(5):
        assert_binary_equal(steps[t]["x_in"], load(ref, f"ins_x_in_t{t}"), f"ins state entering t={t}")
    assert maxdiff(trace[-1]["soft"], load(ref, "ins_soft")) <= SOFT_TOL


def test_ins_final(ins_run, ref, meta):
    out, _ = ins_run
    coarse = load(ref, "ins_coarse")
    assert out.dtype == np.uint8 and out.shape == coarse.shape
    assert np.array_equal(out[0], coarse[0])          # the tiny instance passes through
    fragile = meta["cases"]["ins"]["final_fragile_px"]["where"]
    assert_final_equal(out, load(ref, "ins_final"), fragile, "ins_final")


# --------------------------------------------------------------------------------------------
# (c) HR / semantic mode: staged on the reference intermediates, then end to end


@pytest.fixture(scope="module")
def hr_run(narrow, ref):
    trace: dict = {}
    noise = [load(ref, f"hr_noise_t{t}") for t in (5, 4, 3, 2)]
    out = narrow.refine(load(ref, "hr_image"), load(ref, "hr_coarse"), "hr", noise=noise, trace=trace)
    return out, trace


def test_hr_stage_boxes_from_reference_fine(ref):
    boxes = patch_boxes(torch.from_numpy(load(ref, "hr_g_fine_t1")), 512, 640, HRConfig())
    assert np.array_equal(boxes.numpy(), load(ref, "hr_nms_boxes"))


def test_hr_stage_filter_and_merge_from_reference(ref):
    glob = torch.from_numpy(load(ref, "hr_g_up")).float()
    boxes = mixed_boxes(glob, torch.from_numpy(load(ref, "hr_nms_boxes")).int())
    assert np.array_equal(boxes.numpy(), load(ref, "hr_patch_boxes"))
    probs = torch.from_numpy(load(ref, "hr_patch_logits")).sigmoid()
    merged = merge_patches(probs, glob, torch.from_numpy(load(ref, "hr_patch_boxes")))
    assert_binary_equal(merged, load(ref, "hr_final"), "merge of reference patches")


def test_hr_stage_patch_logits_from_reference_crops(narrow, ref):
    image = normalize_image(load(ref, "hr_image"))
    glob = torch.from_numpy(load(ref, "hr_g_up")).float()
    boxes = load(ref, "hr_patch_boxes").tolist()[:2]    # two patches suffice here; all nine run end to end
    imgs = torch.cat([image[:, :, y1:y2, x1:x2] for x1, y1, x2, y2 in boxes])
    masks = torch.stack([glob[None, y1:y2, x1:x2] for x1, y1, x2, y2 in boxes])
    with torch.inference_mode():
        logits = narrow.unet(imgs, masks, torch.zeros(len(boxes), dtype=torch.int64))
    assert maxdiff(logits, load(ref, "hr_patch_logits")[:2]) <= LOGIT_TOL


def test_hr_global_pass(hr_run, ref):
    _, trace = hr_run
    assert_binary_equal(trace["g_mask_in"], load(ref, "hr_g_mask_in"), "hr_g_mask_in")
    steps = {s["t"]: s for s in trace["steps"]}
    for t in (4, 3, 2, 1):
        assert_binary_equal(steps[t]["x_in"], load(ref, f"hr_g_x_in_t{t}"), f"hr state entering t={t}")
    for t in (5, 1):
        assert maxdiff(steps[t]["logits"], load(ref, f"hr_g_logits_t{t}")) <= LOGIT_TOL, f"hr logits t={t}"
    assert maxdiff(trace["g_fine"], load(ref, "hr_g_fine_t1")) <= FINE_TOL
    assert_binary_equal(trace["g_up"], load(ref, "hr_g_up"), "hr_g_up")


def test_hr_patches_and_final(hr_run, ref, meta):
    out, trace = hr_run
    assert np.array_equal(trace["nms_boxes"].numpy(), load(ref, "hr_nms_boxes"))
    assert np.array_equal(trace["patch_boxes"].numpy(), load(ref, "hr_patch_boxes"))
    assert maxdiff(trace["patch_logits"], load(ref, "hr_patch_logits")) <= LOGIT_TOL
    assert out.dtype == np.uint8 and out.shape == (512, 640)
    fragile = meta["cases"]["hr"]["final_fragile_px_in_patches"]["where"]
    assert_final_equal(out, load(ref, "hr_final"), fragile, "hr_final")


def test_nms_matches_a_plain_greedy_reference():
    g = torch.Generator().manual_seed(0)
    xy = torch.randint(0, 400, (300, 2), generator=g).float()
    boxes = torch.cat([xy, xy + 256], dim=1)
    scores = torch.rand(300, generator=g)
    keep = greedy_nms(boxes, scores, 0.3).tolist()
    expected, order = [], sorted(range(300), key=lambda i: -float(scores[i]))

    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        return iw * ih / (256 * 256 * 2 - iw * ih)
    for i in order:
        if all(iou(boxes[i].tolist(), boxes[j].tolist()) <= 0.3 for j in expected):
            expected.append(i)
    assert keep == expected


def test_candidate_boxes_stay_inside_the_image():
    fine = torch.rand(1, 1, 256, 256, generator=torch.Generator().manual_seed(1))
    boxes, scores = candidate_boxes(fine, 300, 700, HRConfig())
    assert boxes.shape[0] == scores.shape[0] > 0
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 700).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 3] <= 300).all() and ((boxes[:, 2] - boxes[:, 0]) == 256).all()


# --------------------------------------------------------------------------------------------
# loading


def _mmcv_checkpoint(state: dict) -> dict:
    """The layout mmcv's save_checkpoint writes: meta of builtins, the weights, the AdamW state."""
    names = list(state)[:2]
    weights = collections.OrderedDict(state)
    weights._metadata = collections.OrderedDict({"": {"version": 1}})   # as nn.Module.state_dict() has
    return {
        "meta": {"mmcv_version": "1.7.1", "time": "Sun Jan 21 00:00:00 2024", "epoch": 1, "iter": 120000,
                 "env_info": "sys.platform: linux", "config": "model = dict(type='SegRefinerSemantic')",
                 "seed": 42, "exp_name": "segrefiner_hr.py", "mmdet_version": "2.28.2",
                 "CLASSES": ("foreground",), "hook_msgs": {}},
        "state_dict": weights,
        "optimizer": {"state": {i: {"step": torch.tensor(3.0), "exp_avg": torch.zeros_like(state[n]),
                                    "exp_avg_sq": torch.zeros_like(state[n])} for i, n in enumerate(names)},
                      "param_groups": [{"lr": 4e-4, "betas": (0.9, 0.999), "weight_decay": 0.0, "params": [0, 1]}]},
    }


def test_loads_official_mmcv_layout_and_safetensors_conversion(reference_dir, tmp_path, narrow, caplog):
    from pdfnet_core.cli import main

    state = synthetic_state_dict(reference_dir, narrow=True)
    pth = tmp_path / "segrefiner_hr_latest.pth"
    torch.save(_mmcv_checkpoint(state), pth)
    with caplog.at_level(logging.INFO, logger="pdfnet_core"):
        model = load_segrefiner(pth)
    assert "loss_texture.sobel.conv_x.weight" in caplog.text
    assert set(model.state_dict()) == {k for k in state if k.startswith("denoise_model.")}
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    st = tmp_path / "segrefiner_hr.safetensors"
    assert main(["convert", str(pth), str(st)]) == 0
    converted = load_segrefiner(st)
    for key, value in converted.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_refuses_wrong_and_incomplete_checkpoints(reference_dir):
    state = synthetic_state_dict(reference_dir, narrow=True)
    with pytest.raises(CheckpointError, match="not a SegRefiner checkpoint"):
        load_segrefiner({"encoder.absolute_pos_embed": torch.zeros(1), "decoder.FSE_mix.w": torch.zeros(1)})
    broken = dict(state)
    del broken["denoise_model.output_blocks.3.1.qkv.weight"]
    broken["denoise_model.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="output_blocks.3.1.qkv.weight") as info:
        load_segrefiner(broken)
    assert "denoise_model.extra.weight" in str(info.value)
    bad = dict(state)
    bad["denoise_model.out.2.weight"] = torch.zeros(1, 64, 3, 3)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_segrefiner(bad)
    odd = dict(state)
    odd["denoise_model.input_blocks.0.0.weight"] = torch.zeros(40, 4, 3, 3)
    with pytest.raises(CheckpointError, match="multiple of 32"):
        load_segrefiner(odd)


# --------------------------------------------------------------------------------------------
# behaviour (model size 32 keeps these fast; the logic is the same at 256)


@pytest.fixture(scope="module")
def small(narrow) -> SegRefiner:
    model = copy.deepcopy(narrow)
    model.lr_config = dataclasses.replace(LRConfig(), model_size=32, area_thr=32)
    model.hr_config = dataclasses.replace(HRConfig(), model_size=32)
    return model


def test_seed_reproducible_output_binary_and_same_size(small):
    image, coarse = disc_scene()
    a = small.refine(image, coarse[None], "lr", seed=1)
    b = small.refine(image, coarse[None], "lr", seed=1)
    c = small.refine(image, coarse[None], "lr", seed=2)
    assert a.shape == (1, 96, 128) and a.dtype == np.uint8 and set(np.unique(a)) <= {0, 1}
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    h = small.refine(image, coarse, "hr", seed=1)
    assert h.shape == coarse.shape and set(np.unique(h)) <= {0, 1}


def test_non_binary_masks_are_thresholded_at_half(small):
    image, coarse = disc_scene()
    soft = np.where(coarse == 1, 0.6, 0.4).astype(np.float32)
    grey = (coarse * 255).astype(np.uint8)
    ref = small.refine(image, coarse, "hr", seed=3)
    assert np.array_equal(small.refine(image, soft, "hr", seed=3), ref)
    assert np.array_equal(small.refine(image, grey, "hr", seed=3), ref)


def test_empty_and_full_masks_come_back_unchanged(small):
    image, coarse = disc_scene()
    for mask in (np.zeros_like(coarse), np.ones_like(coarse)):
        assert np.array_equal(small.refine(image, mask, "hr", seed=0), mask)
        assert np.array_equal(small.refine(image, mask[None], "lr", seed=0), mask[None])
    tiny = np.zeros_like(coarse)
    tiny[5:10, 5:10] = 1
    assert np.array_equal(small.refine(image, tiny, "hr", seed=0), tiny)


def test_bad_input_is_refused_clearly(small):
    image, coarse = disc_scene()
    with pytest.raises(ValueError, match="coarse mask is"):
        small.refine(image, coarse[:-1], "hr")
    with pytest.raises(ValueError, match="unknown SegRefiner mode"):
        small.refine(image, coarse, "xl")
    with pytest.raises(ValueError, match="dimensions"):
        small.refine(image, coarse[None], "hr")
    with pytest.raises(ValueError, match="ran out"):
        small.refine(image, coarse, "hr", noise=[np.zeros((1, 1, 32, 32), np.float32)])


def test_refine_mask_for_comfy(small):
    image, coarse = disc_scene()
    image_f = torch.from_numpy(image).float() / 255
    out = refine_with_segrefiner(small, image_f, torch.from_numpy(coarse).float(), "hr", seed=4)
    assert out.dtype == torch.float32 and out.shape == coarse.shape
    assert torch.equal(out, torch.from_numpy(small.refine(image_f, coarse, "hr", seed=4)).float())
    small_img = np.zeros((40, 50, 3), np.uint8)
    small_mask = np.zeros((40, 50), np.uint8)
    small_mask[5:35, 10:40] = 1
    out = small.refine(small_img, small_mask, "hr", seed=0)     # smaller than the model size: padded
    assert out.shape == (40, 50)


# --------------------------------------------------------------------------------------------
# registry: Google-Drive-only files are never fetched; the message says where to get and put them


def test_registry_entries_are_manual_download_only(tmp_path, monkeypatch):
    import huggingface_hub

    from pdfnet_core.download import ModelFileMissingError, ensure_model_file
    from pdfnet_core.families import known_files, lookup
    from pdfnet_core.specs import hf_url

    names = [e.filename for e in known_files("segrefiner")]
    assert names == ["segrefiner_lr_latest.pth", "segrefiner_hr_latest.pth"]
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: pytest.fail("a Google-Drive-only file must not go to the hub"))
    for name in names:
        entry = lookup(name)
        assert not entry.on_hub and entry.size_bytes is None and entry.sha256 is None
        assert entry.manual_url.startswith("https://drive.google.com/") and hf_url(entry) == entry.manual_url
        with pytest.raises(ModelFileMissingError) as info:
            ensure_model_file(name, tmp_path, allow_download=True)
        message = str(info.value)
        assert entry.manual_url in message and str(tmp_path) in message and name in message
    (tmp_path / "segrefiner_hr_latest.pth").write_bytes(b"x")
    assert ensure_model_file("segrefiner_hr_latest.pth", tmp_path, allow_download=False).is_file()
