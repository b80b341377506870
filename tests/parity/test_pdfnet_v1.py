"""PDFNet's first official revision (802b477, "v1") against its own outputs (shared/reference/pdfnet/v1),
and the choice of revision from a checkpoint's own evidence."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from pdfnet_core.models.pdfnet.loader import load_pdfnet
from pdfnet_core.models.pdfnet.net import PDFNetConfig, boundary_and_integrity, boundary_raw, tile_weights
from pdfnet_core.models.pdfnet.revision import METADATA_KEY, resolve_revision, revision_evidence
from pdfnet_core.weights import read_safetensors_metadata, save_safetensors
from pdfnet_fixtures import load, model_inputs
from synthetic_pdfnet import synthetic_state_dict

# The five depth-head entries whose shapes differ in the current code's head (v1/layout.json).
CURRENT_HEAD_SHAPES = {
    "depth_decoder.Decoder.0.0.0.weight": [256, 768, 3, 3],
    "depth_decoder.Decoder.1.0.0.weight": [256, 512, 3, 3],
    "depth_decoder.Decoder.2.0.0.weight": [256, 512, 3, 3],
    "depth_decoder.Decoder.3.0.0.weight": [256, 512, 3, 3],
    "depth_decoder.shallow.0.weight": [128, 6, 3, 3],
}


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def state(reference_dir):
    return synthetic_state_dict(reference_dir)


def _head(reference_dir, current: bool = False) -> dict[str, torch.Tensor]:
    shapes = {k: v["shape"] for k, v in
              json.loads((reference_dir / "pdfnet" / "checkpoint_extra_keys.json").read_text())["keys"].items()}
    if current:
        shapes.update(CURRENT_HEAD_SHAPES)
    # the head never reaches an output (v1/README.md), so its values do not matter
    return {k: torch.zeros(s) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def released(state, reference_dir):
    """The layout of the released PDFNet_Best.pth: the 561 entries plus v1's 42-entry depth head."""
    return {**state, **_head(reference_dir)}


@pytest.fixture(scope="module")
def v1_run(state, reference_dir):
    """One v1 forward of a batch of two with different depth ranges (per-item depth normalisation
    must keep row 0 equal to the single-image reference), with the map each FSE stage was fed."""
    model = load_pdfnet(state, revision="v1")
    assert model.config.revision == "v1"
    fed = {}
    hooks = [fse.register_forward_pre_hook(lambda m, args, i=i: fed.__setitem__(i, args[-1][:1].clone()))
             for i, fse in enumerate(model.decoder.FSE_mix)]
    image, depth = model_inputs(reference_dir, "v1")
    other_image = torch.flip(image, dims=[-1]) * 0.8
    other_depth = 0.3 + 0.4 * torch.flip(depth, dims=[-2])
    with torch.no_grad():
        out = model(torch.cat([image, other_image]), torch.cat([depth, other_depth]), with_sides=True)
    for h in hooks:
        h.remove()
    return out, fed


def test_v1_final_and_side_logits_match_the_first_revision(v1_run, reference_dir):
    out, _ = v1_run
    diff = (out.logits[:1] - load(reference_dir, "v1", "logits")).abs()
    assert diff.max().item() <= 2e-4
    assert diff.mean().item() <= 2e-5
    assert len(out.sides) == 5
    for k, side in enumerate(out.sides, start=1):
        assert _max_abs(side[:1], load(reference_dir, "v1", f"side_{k}")) <= 2e-4, f"side_{k}"


def test_v1_boundary_maps_inside_the_model_match(v1_run, reference_dir):
    _, fed = v1_run
    for i in range(4):
        raw = boundary_raw(fed[i].sigmoid())
        assert _max_abs(raw, load(reference_dir, "v1", f"boundary_raw_fse{i}")) <= 1e-5, f"FSE_mix.{i}"


def test_v1_boundary_integrity_and_tile_weights_from_the_reference_sides(reference_dir):
    # FSE_mix[i] sees side_(5 - i).  v1: b = 2r at every level, g = relu(s - 5b), tiles 1 + 5 mean(b).
    meta = json.loads((reference_dir / "pdfnet" / "v1" / "meta.json").read_text())["boundary_v1"]
    for i in range(4):
        side = load(reference_dir, "v1", f"side_{5 - i}")
        raw = load(reference_dir, "v1", f"boundary_raw_fse{i}")
        assert _max_abs(boundary_raw(side.sigmoid()), raw) <= 1e-5
        boundary, integrity = boundary_and_integrity(side, "v1")
        assert _max_abs(boundary, 2 * raw) <= 2e-5
        assert _max_abs(integrity, torch.relu(side.sigmoid() - 10 * raw)) <= 1e-4
        weights = tile_weights(boundary, 8, "v1")
        facts = meta[f"FSE_mix.{i}"]
        assert weights.min().item() == pytest.approx(facts["tile_weight_min"], abs=1e-4)
        assert weights.max().item() == pytest.approx(facts["tile_weight_max"], abs=1e-4)
        assert int((weights > 1).sum()) == facts["tiles_with_weight_over_1"][0]
        # the current revision gives only 1 or 2 from the same map
        assert set(tile_weights(boundary_and_integrity(side, "v2")[0], 8, "v2").unique().tolist()) <= {1.0, 2.0}


def test_v2_is_unchanged_and_differs_from_v1(v1_run, released, reference_dir):
    # v2 asked for explicitly on a file whose own evidence says v1: the current official outputs.
    model = load_pdfnet(released, revision="v2")
    assert model.config.revision == "v2"
    image, depth = model_inputs(reference_dir, "case256")
    with torch.no_grad():
        out = model(image, depth, with_sides=True)
    diff = (out.logits - load(reference_dir, "case256", "logits")).abs()
    assert diff.max().item() <= 2e-4 and diff.mean().item() <= 2e-5
    for k, side in enumerate(out.sides, start=1):
        assert _max_abs(side, load(reference_dir, "case256", f"side_{k}")) <= 2e-4, f"side_{k}"
    # the revisions part at FSE_mix[2] (v1/README.md: final max 0.218); a flag that did nothing fails here
    v1 = v1_run[0]
    assert _max_abs(v1.logits[:1], out.logits) > 0.1
    assert _max_abs(v1.sides[0][:1], out.sides[0]) > 0.1
    assert _max_abs(v1.sides[4][:1], out.sides[4]) <= 2e-5  # before FSE_mix[2]: equal but for batch-of-two noise


# --------------------------------------------------------------------------------------------
# choosing the revision


def test_auto_reads_the_first_revisions_depth_head_as_v1(released, caplog):
    with caplog.at_level(logging.INFO, logger="pdfnet_core"):
        model = load_pdfnet(released)
    assert model.config.revision == "v1"
    assert "PDFNet revision v1" in caplog.text and "depth_decoder" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any(k.startswith("depth_decoder.") for k in model.state_dict())


def test_auto_reads_the_current_codes_depth_head_as_v2(state, reference_dir, caplog):
    current = {**state, **_head(reference_dir, current=True)}
    with caplog.at_level(logging.INFO, logger="pdfnet_core"):
        model = load_pdfnet(current)  # the current head's entries are accepted as training-only too
    assert model.config.revision == "v2"
    assert "PDFNet revision v2" in caplog.text and "[256, 768, 3, 3]" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_no_evidence_runs_v2_with_a_warning_that_names_it(state, caplog):
    with caplog.at_level(logging.INFO, logger="pdfnet_core"):
        revision, reason = resolve_revision(state, "auto", filename="my_finetune.pth")
    assert revision == "v2"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "revision v2" in warnings[0] and "my_finetune.pth" in warnings[0]
    assert "revision='v1'" in reason


def test_no_evidence_falls_back_to_the_configs_revision(state, caplog):
    with caplog.at_level(logging.WARNING, logger="pdfnet_core"):
        model = load_pdfnet(state, config=PDFNetConfig(revision="v1"))
    assert model.config.revision == "v1"
    assert "PDFNet revision v1" in caplog.text and "revision='v2'" in caplog.text


def test_mixed_or_foreign_head_shapes_are_not_evidence(state, reference_dir):
    mixed = {**state, **_head(reference_dir)}
    mixed["depth_decoder.shallow.0.weight"] = torch.zeros(CURRENT_HEAD_SHAPES["depth_decoder.shallow.0.weight"])
    revision, why = revision_evidence(mixed)
    assert revision is None and "neither revision's layout" in why
    partial = {k: v for k, v in _head(reference_dir).items() if "Bside" in k}
    assert revision_evidence({**state, **partial})[0] is None


def test_known_file_names_fall_back_to_the_registry(state):
    for name in ("PDFNet_Best.pth", "PDF-Generally.pth"):
        revision, why = resolve_revision(state, "auto", filename=name)
        assert revision == "v1" and "registry" in why
    # the entries in the file outrank the name
    assert resolve_revision({**state, **{k: torch.zeros(s) for k, s in CURRENT_HEAD_SHAPES.items()}},
                            "auto", filename="PDFNet_Best.pth")[0] == "v2"


def test_explicit_revision_wins_and_bad_values_are_refused(released, state):
    revision, reason = resolve_revision(released, "v2")
    assert revision == "v2" and "v1" in reason
    with pytest.raises(ValueError, match="revision must be one of"):
        load_pdfnet(state, revision="v3")
    with pytest.raises(ValueError, match="revision must be one of"):
        PDFNetConfig(revision="latest")


def test_safetensors_metadata_is_evidence(state, tmp_path):
    marked = save_safetensors({"x": torch.zeros(1)}, tmp_path / "renamed.safetensors",
                              metadata={METADATA_KEY: "v1", "pdfnet_revision_evidence": "from the test"})
    revision, why = revision_evidence(state, marked.name, read_safetensors_metadata(marked))
    assert revision == "v1" and "metadata" in why and "from the test" in why
    bare = save_safetensors({"x": torch.zeros(1)}, tmp_path / "bare.safetensors")
    assert read_safetensors_metadata(bare) == {}
    assert revision_evidence(state, bare.name, {})[0] is None


def test_conversion_keeps_the_evidence(released, tmp_path, capsys, caplog):
    from pdfnet_core.cli import main

    source = tmp_path / "finetune.pth"
    torch.save(released, source)
    target = tmp_path / "finetune.safetensors"
    assert main(["convert", str(source), str(target), "--dtype", "fp16"]) == 0
    assert "revision v1" in capsys.readouterr().out
    metadata = read_safetensors_metadata(target)
    assert metadata[METADATA_KEY] == "v1" and "depth_decoder" in metadata["pdfnet_revision_evidence"]
    with caplog.at_level(logging.INFO, logger="pdfnet_core"):
        model = load_pdfnet(target)
    assert model.config.revision == "v1"
    assert "metadata" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_cutout_takes_a_revision():
    from pdfnet_core.cli import _cutout_config, _parser

    args = _parser().parse_args(["cutout", "a.png", "--out", "out", "--revision", "v1"])
    assert _cutout_config(args).revision == "v1"
    assert _cutout_config(_parser().parse_args(["cutout", "a.png", "--out", "out"])).revision == "auto"
    with pytest.raises(SystemExit):
        _parser().parse_args(["cutout", "a.png", "--out", "out", "--revision", "v3"])
