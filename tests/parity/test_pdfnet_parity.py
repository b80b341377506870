"""PDFNet against the official outputs (shared/reference/pdfnet), synthetic weights via load_pdfnet."""
from __future__ import annotations

import pytest
import torch

from pdfnet_core.models.pdfnet.net import boundary_raw, minmax_per_item
from pdfnet_core.models.pdfnet.loader import load_pdfnet
from pdfnet_fixtures import load, model_inputs
from synthetic_pdfnet import synthetic_state_dict


@pytest.fixture(scope="module")
def weights_file(reference_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "PDFNet_synthetic.pth"
    torch.save(synthetic_state_dict(reference_dir), path)
    return path


@pytest.fixture(scope="module")
def model(weights_file):
    return load_pdfnet(weights_file)


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("case", ["case256", pytest.param("case1024", marks=pytest.mark.slow)])
def test_final_and_side_logits_match_official(model, reference_dir, case):
    image, depth = model_inputs(reference_dir, case)
    with torch.no_grad():
        out = model(image, depth, with_sides=True)
    ref = load(reference_dir, case, "logits")
    diff = (out.logits - ref).abs()
    assert diff.max().item() <= (2e-4 if case == "case256" else 1e-3)
    assert diff.mean().item() <= 2e-5
    for k, side in enumerate(out.sides, start=1):
        assert _max_abs(side, load(reference_dir, case, f"side_{k}")) <= 2e-4, f"side_{k}"


@pytest.mark.parametrize("case", ["case256", "case1024"])
def test_boundary_maps_match_official(reference_dir, case):
    # FSE_mix[i] sees side_(5 - i); feed it the official side map and compare its BIS map.
    for i in range(4):
        side = load(reference_dir, case, f"side_{5 - i}")
        raw = boundary_raw(side.sigmoid())
        ref = load(reference_dir, case, f"boundary_raw_fse{i}")
        assert _max_abs(raw, ref) <= 1e-5
        assert torch.equal(raw > 0.1, ref > 0.1)


def test_intermediate_features_match_official(model, reference_dir):
    image, depth = model_inputs(reference_dir, "case256")
    with torch.no_grad():
        depth3 = minmax_per_item(depth).expand(-1, 3, -1, -1)
        batch = model.global_batch(image, depth3)
        stages = model.encoder(batch)
        glob = model.encode(batch)
        patch = model.encode_patches(image)
    for k, stage in enumerate(stages, start=1):
        assert _max_abs(stage, load(reference_dir, "case256", f"enc_global_stage{k}")) <= 2e-4
    names = ["L1", "L2", "L3", "L4", "glob"]
    for name, g, p in zip(names, glob, patch):
        assert _max_abs(g[:1], load(reference_dir, "case256", f"feat_img_{name}")) <= 2e-4
        assert _max_abs(g[1:], load(reference_dir, "case256", f"feat_depth_{name}")) <= 2e-4
        assert _max_abs(p, load(reference_dir, "case256", f"feat_patch_{name}")) <= 2e-4


def test_batch_of_two_equals_single_runs(model, reference_dir):
    image, depth = model_inputs(reference_dir, "case256")
    other_image = torch.flip(image, dims=[-1]) * 0.8
    other_depth = 0.3 + 0.4 * torch.flip(depth, dims=[-2])  # another range: per-item normalisation matters
    with torch.no_grad():
        batch = model(torch.cat([image, other_image]), torch.cat([depth, other_depth]))
        single = torch.cat([model(image, depth), model(other_image, other_depth)])
    assert _max_abs(batch, single) <= 1e-4
    assert _max_abs(batch[:1], load(reference_dir, "case256", "logits")) <= 2e-4


def test_depth_scale_does_not_matter_and_constant_depth_is_defined(model, reference_dir):
    image, depth = model_inputs(reference_dir, "case256")
    with torch.no_grad():
        scaled = model(image, depth * 255 + 7)
        flat = model(image, torch.full_like(depth, 3.0))
    assert _max_abs(scaled, load(reference_dir, "case256", "logits")) <= 2e-4
    assert torch.isfinite(flat).all()


def _official_tail(dec, x6, mix):
    """The decoder's last steps in one piece, as the official code writes them."""
    up = lambda t, size: torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=True)
    s = x6.shape[-1]
    shallow = dec.shallow(up(x6, (4 * s, 4 * s)))
    half = (mix.shape[-2] * 2, mix.shape[-1] * 2)
    f = dec.upsample1(up(mix, half) + up(shallow, half))
    return dec.Bside[0](dec.upsample2(up(f, (s, s)) + shallow))


@pytest.mark.parametrize("band_rows", [1, 5, 16, 64])
def test_streamed_tail_equals_the_one_piece_official_tail(model, band_rows):
    from pdfnet_core.models.pdfnet.tail import streamed_tail

    torch.manual_seed(0)
    dec = model.decoder
    x6, mix = torch.randn(2, 6, 64, 64), torch.randn(2, 128, 16, 16)
    with torch.no_grad():
        expected = _official_tail(dec, x6, mix)
        got = streamed_tail(dec.shallow, dec.upsample1[0], dec.upsample2[0], dec.Bside[0], x6, mix, band_rows)
    assert _max_abs(got, expected) <= 1e-5
