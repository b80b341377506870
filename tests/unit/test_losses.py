"""The training losses against the official code's values and gradients (reference/pdfnet/losses)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pdfnet_core.train import losses

FUNCTIONS = {
    "structure": losses.structure_loss,
    "ssim": losses.ssim_loss,
    "integrity": losses.integrity_prior_loss,
    "silog": losses.silog_loss,
}


@pytest.fixture(scope="module")
def loss_dir(reference_dir) -> Path:
    return Path(reference_dir) / "pdfnet" / "losses"


@pytest.fixture(scope="module")
def cases(loss_dir) -> dict:
    return json.loads((loss_dir / "cases.json").read_text())


def _array(loss_dir: Path, cases: dict, name: str, dtype=torch.float32) -> torch.Tensor:
    arr = np.load(loss_dir / name)
    digest = cases["files_sha256"].get(Path(name).stem)
    if digest is not None:
        assert hashlib.sha256(arr.tobytes()).hexdigest() == digest, f"{name} differs from the fixture"
    return torch.from_numpy(arr).to(dtype)


def _case_names(kind: str) -> list[str]:
    from conftest import REFERENCE_DIR

    path = REFERENCE_DIR / "pdfnet" / "losses" / "cases.json"
    if not path.is_file():
        return []
    return sorted(k for k, v in json.loads(path.read_text())["cases"].items() if v["kind"] == kind)


def _bound(cases: dict, kind: str, ref: float) -> float:
    tol = cases["tolerance"]
    return tol["loss_atol"] + tol["loss_rtol"][kind] * abs(ref)


def _total_inputs(loss_dir, cases, case, dtype):
    seg = [_array(loss_dir, cases, f, dtype) for f in case["pred_m"]]
    dep = [_array(loss_dir, cases, f, dtype) for f in case["pred_depth"]]
    return seg, dep, _array(loss_dir, cases, case["gt"], dtype), _array(loss_dir, cases, case["depth_gt"], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", _case_names("loss"))
def test_loss_values(loss_dir, cases, name, dtype):
    case = cases["cases"][name]
    args = []
    for spec in case["args"]:
        t = _array(loss_dir, cases, spec["file"], dtype)
        args.append(t.sigmoid() if spec["sigmoid"] else t)
    value = FUNCTIONS[case["fn"]](*args)
    assert value.ndim == 0 and value.dtype == dtype
    ref = case["ref_f64"]["value"]
    assert abs(value.item() - ref) <= _bound(cases, case["fn"], ref), (name, value.item(), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", _case_names("total"))
def test_total_values_and_parts(loss_dir, cases, name, dtype):
    case = cases["cases"][name]
    seg, dep, gt, depth_gt = _total_inputs(loss_dir, cases, case, dtype)
    terms = losses.loss_terms(seg, dep, gt, depth_gt)
    ref = case["ref_f64"]["value"]
    assert abs(losses.total_loss(seg, dep, gt, depth_gt).item() - ref) <= _bound(cases, "total", ref)
    parts = case["parts_f64"]
    for ours, key in ((terms.seg, "L_seg"), (terms.integrity, "L_int"), (terms.depth, "L_depth"),
                      (terms.target, "L_seg_out0")):
        want = parts[key]["value"]
        assert abs(ours.item() - want) <= _bound(cases, "total", want), (name, key, ours.item(), want)
    if "official_forward" in case:   # the real forward's own loss and logged target loss
        fwd = case["official_forward"]
        assert abs(terms.total.item() - fwd["loss"]) <= _bound(cases, "total", fwd["loss"])
        assert abs(terms.target.item() - fwd["target_loss"]) <= _bound(cases, "total", fwd["target_loss"])


@pytest.mark.parametrize("name", _case_names("grad"))
def test_gradients(loss_dir, cases, name):
    case = cases["cases"][name]
    logits = _array(loss_dir, cases, case["logits"]).requires_grad_(True)
    mask = _array(loss_dir, cases, case["mask"])
    depth = _array(loss_dir, cases, case["depth_gt"])
    q = logits.sigmoid()
    loss = losses.structure_loss(logits, mask) + losses.ssim_loss(q, mask) + \
        losses.integrity_prior_loss(q, depth, mask)
    loss.backward()
    ref = torch.from_numpy(np.load(loss_dir / case["grad_file"]))
    assert abs(loss.item() - case["loss_ref_f64"]["value"]) <= _bound(cases, "total", case["loss_ref_f64"]["value"])
    diff = (logits.grad.double() - ref).abs().max().item()
    bound = cases["tolerance"]["grad_rtol_of_max"] * ref.abs().max().item()
    assert diff <= bound, (name, diff, bound)


def test_total_gradient_matches_sum_of_terms(loss_dir, cases):
    """total_loss backpropagates into every decoder and depth-head map, resized or not."""
    case = cases["cases"]["total_pyramid"]
    seg, dep, gt, depth_gt = _total_inputs(loss_dir, cases, case, torch.float64)
    maps = [t.requires_grad_(True) for t in seg + dep]
    losses.total_loss(maps[:6], maps[6:], gt, depth_gt).backward()
    assert all(m.grad is not None and torch.isfinite(m.grad).all() and m.grad.abs().sum() > 0 for m in maps)


def test_per_item_switch(loss_dir, cases):
    """The official batch-wide statistics are the default; per_item=True makes items independent."""
    q = _array(loss_dir, cases, "logits.npy").sigmoid()
    mask = _array(loss_dir, cases, "mask_soft.npy")
    depth = _array(loss_dir, cases, "depth_gt.npy")
    pred_depth = _array(loss_dir, cases, "depth_pred.npy").sigmoid()
    for fn, args in ((losses.integrity_prior_loss, (q, depth, mask)), (losses.silog_loss, (pred_depth, depth))):
        batch = fn(*args).item()
        per_item = fn(*args, per_item=True).item()
        singles = np.mean([fn(*(a[i:i + 1] for a in args)).item() for i in range(2)])
        assert per_item == pytest.approx(singles, rel=1e-6)
        assert abs(batch - per_item) > 1e-4            # the fixtures are built so that the choice shows
        one = tuple(a[:1] for a in args)
        assert fn(*one).item() == pytest.approx(fn(*one, per_item=True).item(), rel=1e-7)


def test_constant_depth_and_empty_mask_are_finite():
    torch.manual_seed(0)
    logits = [torch.randn(2, 1, s, s, requires_grad=True) for s in (32, 8, 8, 4, 4, 4)]
    depth_logits = [torch.randn(2, 1, s, s, requires_grad=True) for s in (16, 4, 2, 2, 1)]
    for gt, depth_gt in ((torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32)),
                         ((torch.rand(2, 1, 32, 32) > 0.5).float(), torch.full((2, 1, 32, 32), 0.5)),
                         (torch.ones(2, 1, 32, 32), torch.ones(2, 1, 32, 32))):
        loss = losses.total_loss(logits, depth_logits, gt, depth_gt)
        grads = torch.autograd.grad(loss, logits + depth_logits)
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    perfect = torch.full((1, 1, 8, 8), 0.25)
    assert losses.silog_loss(perfect, perfect).item() == pytest.approx(1e-3, rel=1e-3)   # sqrt(eps)


def test_half_precision_inputs_are_computed_in_float32(loss_dir, cases):
    logits = _array(loss_dir, cases, "logits.npy")
    mask = _array(loss_dir, cases, "mask_soft.npy")
    exact = losses.structure_loss(logits, mask)
    half = losses.structure_loss(logits.bfloat16(), mask.bfloat16())
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(exact.item(), rel=2e-2)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"\[B,1,H,W\]"):
        losses.structure_loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="resize the prediction"):
        losses.ssim_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 16, 16))


def test_training_forward_matches_the_official_one(reference_dir, loss_dir, cases):
    """``total_fwd128``: the official training forward (current revision, depth decoder attached,
    eval mode, synthetic weights) at 128x128.  Our training model - PDFNet's own modules plus the
    v2-layout depth head - gives the same six decoder maps, five depth maps, and loss."""
    from synthetic_pdfnet import synthetic_state_dict, synthetic_tensor

    from pdfnet_core import load_pdfnet
    from pdfnet_core.ops.images import imagenet_normalize
    from pdfnet_core.train.depth_head import DepthHead, head_entries
    from pdfnet_core.train.loop import normalise_depth_target
    from pdfnet_core.train.model import TrainingPDFNet

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        state = synthetic_state_dict(reference_dir)
        head_keys = json.loads((loss_dir / "fwd128_depth_decoder_keys.json").read_text())
        state.update({k: synthetic_tensor(k, v["shape"]) for k, v in head_keys.items()})
        head = DepthHead(128, "v2")
        head.load_state_dict(head_entries(state))
        model = TrainingPDFNet(load_pdfnet(state), head).eval()   # the v2 head's layout selects v2
        assert model.net.config.revision == "v2"
        image = imagenet_normalize(torch.from_numpy(np.load(loss_dir / "fwd128_image_u8.npy"))
                                   .permute(0, 3, 1, 2).float() / 255)
        depth = torch.from_numpy(np.load(loss_dir / "fwd128_depth_u8.npy")).float()[:, None] / 255
        depth_gt = torch.from_numpy(np.load(loss_dir / "fwd128_depth_gt_u8.npy")).float()[:, None] / 255
        with torch.no_grad():
            out = model(image, depth)
    finally:
        torch.set_num_threads(threads)
    case = cases["cases"]["total_fwd128"]
    for ours, files, bound in ((out.logits, case["pred_m"], 2e-4), (out.depth_logits, case["pred_depth"], 2e-4)):
        for x, name in zip(ours, files):
            ref = _array(loss_dir, cases, name)
            assert x.shape == ref.shape and (x - ref).abs().max().item() <= bound, name
    target = normalise_depth_target(depth_gt, per_item=False)
    np.testing.assert_allclose(target.numpy(), np.load(loss_dir / case["depth_gt"]), atol=1e-7)
    gt = _array(loss_dir, cases, case["gt"])
    loss = losses.total_loss(out.logits, out.depth_logits, gt, target).item()
    want = case["official_forward"]["loss"]
    assert abs(loss - want) <= 1e-5 * abs(want), (loss, want)
