"""SegRefiner reports progress after every UNet call and stops when the callback raises: one HR
refinement of a large mask is minutes of UNet calls on a CPU, too long to wait for a cancel."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from pdfnet_core.models.segrefiner.loader import load_segrefiner
from pdfnet_core.models.segrefiner.modes import HRConfig, LRConfig
from synthetic_segrefiner import disc_scene, synthetic_state_dict


@pytest.fixture(scope="module")
def model(reference_dir):
    """The narrow synthetic model at a 32 px working size: a 64x96 image gets several HR patches."""
    m = load_segrefiner(synthetic_state_dict(reference_dir, narrow=True))
    m.hr_config = dataclasses.replace(HRConfig(), model_size=32)
    m.lr_config = dataclasses.replace(LRConfig(), model_size=32, area_thr=16)
    return m


def counting(model):
    """A copy of ``model`` that counts its forward passes."""
    m = copy.deepcopy(model)
    m.calls = 0
    m.register_forward_hook(lambda *_: setattr(m, "calls", m.calls + 1))
    return m


def test_hr_reports_every_unet_call_and_plans_the_patches_after_the_global_pass(model):
    image, coarse = disc_scene(64, 96)
    seen: list[tuple[int, int]] = []
    trace: dict = {}
    out = model.refine(image, coarse, "hr", seed=3, trace=trace, progress=lambda d, t: seen.append((d, t)))
    patches = trace["patch_boxes"].shape[0]
    assert patches > 1
    assert seen == [(k, 5) for k in range(1, 6)] + [(5 + k, 5 + patches) for k in range(1, patches + 1)]
    assert torch.equal(torch.as_tensor(out), torch.as_tensor(model.refine(image, coarse, "hr", seed=3)))


def test_lr_plans_six_steps_per_chunk(model):
    image, coarse = disc_scene(64, 96)
    seen: list[tuple[int, int]] = []
    model.refine(image, coarse[None], "lr", seed=1, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(k, 6) for k in range(1, 7)]


def test_raising_from_progress_stops_within_one_call(model):
    m = counting(model)
    image, coarse = disc_scene(64, 96)

    def cancel(done, total):
        if done == 7:
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        m.refine(image, coarse, "hr", seed=3, progress=cancel)
    assert m.calls == 7          # 5 global steps and 2 patches; the others never ran
