"""DIS metrics against PySODMetrics' own classes, the HCE binarisation rule, tables, plots and the
``evaluate`` command (folders, subsets, and pipelines run over the images)."""
from __future__ import annotations

import argparse
import csv
import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("py_sod_metrics")
cv2 = pytest.importorskip("cv2")
import py_sod_metrics as sod  # noqa: E402

from pdfnet_core import metrics  # noqa: E402
from pdfnet_core.train import commands, plots  # noqa: E402
from pdfnet_core.train.synthetic import write_synthetic_dis  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """The CI machine's two cores are shared: two threads per process only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _soft_prediction(gt: np.ndarray, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A plausible soft prediction at another size: blurred, shifted mask plus noise and a false blob."""
    pred = cv2.GaussianBlur(gt.astype(np.float32) / 255, (0, 0), rng.uniform(0.8, 2.5))
    pred = np.roll(pred, int(rng.integers(-3, 4)), axis=int(rng.integers(2)))
    pred = np.clip(pred * rng.uniform(0.7, 1.0) + 0.15 * rng.random(pred.shape), 0, 1)
    y, x = rng.integers(0, gt.shape[0] - 8), rng.integers(0, gt.shape[1] - 8)
    pred[y:y + 6, x:x + 6] = np.maximum(pred[y:y + 6, x:x + 6], rng.uniform(0.3, 0.9))
    pred = cv2.resize(pred, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return np.round(pred * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("metrics")
    gt_root = root / "data"
    rng = np.random.default_rng(7)
    for name, seed in (("SET-A", 1), ("SET-B", 2)):
        write_synthetic_dis(gt_root / name, 4, (72, 88), seed=seed)
        pred_dir = root / "pred" / name
        pred_dir.mkdir(parents=True)
        for mask_path in sorted((gt_root / name / "gt").glob("*.png")):
            gt = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            # predictions at another size, as a network's output before the evaluator resizes it
            cv2.imwrite(str(pred_dir / mask_path.name), _soft_prediction(gt, rng, (64, 64)))
    return {"root": root, "gt": gt_root, "pred": root / "pred"}


def _reference_scores(pred_dir: Path, gt_dir: Path) -> dict:
    """PySODMetrics used directly, the way BiRefNet's DIS evaluator uses it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the classic Fmeasure class warns that it is deprecated
        fm = sod.Fmeasure()
    wfm, sm, em, mae, hce = sod.WeightedFmeasure(), sod.Smeasure(), sod.Emeasure(), sod.MAE(), \
        sod.HumanCorrectionEffortMeasure()
    for gt_path in sorted(gt_dir.glob("*.png")):
        gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)
        pred = cv2.imread(str(pred_dir / gt_path.name), cv2.IMREAD_GRAYSCALE)
        pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        for m in (fm, wfm, sm, em, mae):
            m.step(pred=pred, gt=gt)
        hce.step(pred=((pred > 128) * 255).astype(np.uint8), gt=gt)   # the DIS binarisation rule
    f = fm.get_results()
    e = em.get_results()["em"]["curve"]
    return {"max_f": f["fm"]["curve"].max(), "mean_f": f["fm"]["curve"].mean(), "weighted_f": wfm.get_results()["wfm"],
            "mae": mae.get_results()["mae"], "s_measure": sm.get_results()["sm"], "mean_e": e.mean(),
            "max_e": e.max(), "hce": hce.get_results()["hce"],
            "precision": np.flip(f["pr"]["p"]), "recall": np.flip(f["pr"]["r"]), "f_curve": np.flip(f["fm"]["curve"])}


@pytest.mark.parametrize("subset", ["SET-A", "SET-B"])
def test_folder_metrics_equal_pysodmetrics(dataset, subset):
    result = metrics.evaluate_folder(dataset["pred"] / subset, dataset["gt"] / subset / "gt")
    assert not result.missing and not result.unreadable and result.scores.count == 4
    ref = _reference_scores(dataset["pred"] / subset, dataset["gt"] / subset / "gt")
    for key, want in ref.items():
        np.testing.assert_allclose(getattr(result.scores, key), want, rtol=1e-12, atol=1e-12, err_msg=key)
    assert 0 < result.scores.mae < 1 and 0 < result.scores.max_f <= 1 and result.scores.hce > 0


def test_hce_is_computed_on_the_dis_binarisation():
    """Soft maps: HCE of pred > 128 (DIS rule); PySODMetrics alone would min-max and cut at 0.5."""
    rng = np.random.default_rng(3)
    gt = np.zeros((64, 64), np.uint8)
    gt[16:48, 12:40] = 255
    gt[30:33, 40:60] = 255
    differs = 0
    for _ in range(6):
        soft = _soft_prediction(gt, rng, gt.shape)
        soft = np.clip(soft.astype(int) + rng.integers(-40, 40), 0, 255).astype(np.uint8)
        ours = metrics.DISMetrics()
        ours.step(soft, gt)
        binary = sod.HumanCorrectionEffortMeasure()
        binary.step(pred=np.where(soft > 128, 255, 0).astype(np.uint8), gt=gt)
        naive = sod.HumanCorrectionEffortMeasure()
        naive.step(pred=soft, gt=gt)
        assert ours.results().hce == binary.get_results()["hce"]
        differs += ours.results().hce != naive.get_results()["hce"]
    assert differs, "the cases should show why the binarisation rule matters"
    # already-binary predictions: every rule agrees
    hard = np.where(_soft_prediction(gt, rng, gt.shape) > 128, 255, 0).astype(np.uint8)
    ours = metrics.DISMetrics()
    ours.step(hard, gt)
    plain = sod.HumanCorrectionEffortMeasure()
    plain.step(pred=hard, gt=gt)
    assert ours.results().hce == plain.get_results()["hce"]


def test_float_predictions_and_perfect_scores():
    gt = np.zeros((40, 48), np.uint8)
    gt[10:30, 8:40] = 255
    m = metrics.DISMetrics()
    m.step(gt.astype(np.float32) / 255, gt)            # floats 0..1 count as a saved 8-bit map
    s = m.results()
    assert s.max_f == pytest.approx(1.0) and s.mae == 0.0 and s.s_measure == pytest.approx(1.0)
    assert s.hce == 0 and s.weighted_f == pytest.approx(1.0)
    assert s.precision.shape == s.recall.shape == s.f_curve.shape == (256,)
    with pytest.raises(ValueError, match="single-channel"):
        m.step(np.zeros((4, 4, 3), np.uint8), gt)
    with pytest.raises(ValueError, match="no prediction"):
        metrics.DISMetrics().results()


def test_tables_and_plots(dataset, tmp_path):
    rows = [metrics.Row("pred", s, metrics.evaluate_folder(dataset["pred"] / s, dataset["gt"] / s / "gt").scores)
            for s in ("SET-A", "SET-B")]
    md = metrics.markdown_table(rows)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| pipeline | subset | images | maxFβ ↑ | Fβω ↑ | MAE ↓ | Sα ↑ | meanEφ ↑ | HCEγ ↓")
    assert len(lines) == 4 and "SET-B" in lines[3]
    table = list(csv.DictReader(io.StringIO(metrics.csv_table(rows))))
    assert [r["subset"] for r in table] == ["SET-A", "SET-B"]
    assert float(table[0]["max_f"]) == rows[0].scores.max_f
    from PIL import Image

    for draw, name in ((plots.pr_curve, "pr.png"), (plots.f_curve, "f.png")):
        path = draw(rows, tmp_path / name)
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        assert arr.shape == (540, 720, 3)
        first_line = np.all(arr == (31, 119, 180), axis=-1).sum()   # the first series' colour
        second_line = np.all(arr == (214, 39, 40), axis=-1).sum()
        assert first_line > 100 and second_line > 100


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    commands.add_parsers(p.add_subparsers(dest="command", required=True))
    return p


def _run(argv: list[str], lines: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "evaluate":
        return args.run(args, echo=(lines.append if lines is not None else print))
    return args.run(args)


def test_evaluate_command_with_subsets(dataset, tmp_path):
    out = tmp_path / "report"
    lines: list[str] = []
    rc = _run(["evaluate", str(dataset["pred"]), str(dataset["gt"]), "--subsets", "SET-A", "SET-B",
               "--name", "mine", "--out", str(out)], lines)
    assert rc == 0
    md = (out / "metrics.md").read_text()
    assert "| mine | SET-A | 4 |" in md and "| mine | SET-B | 4 |" in md
    assert (out / "metrics.csv").is_file() and (out / "pr_curve.png").is_file() and (out / "f_curve.png").is_file()
    scores = metrics.evaluate_folder(dataset["pred"] / "SET-A", dataset["gt"] / "SET-A" / "gt").scores
    assert f"{scores.max_f:.3f}" in md.splitlines()[2]


def test_evaluate_command_reports_problems(dataset, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    for p in sorted((dataset["pred"] / "SET-A").glob("*.png"))[:3]:   # one prediction missing
        (pred / p.name).write_bytes(p.read_bytes())
    lines: list[str] = []
    assert _run(["evaluate", str(pred), str(dataset["gt"] / "SET-A")], lines) == 1
    assert any("1 mask(s) without a prediction" in line for line in lines)
    assert _run(["evaluate", str(pred), str(tmp_path / "nowhere")], []) == 2
    assert _run(["evaluate", str(pred), str(dataset["gt"] / "SET-A"), "--model", "sam"], []) == 2


def test_missing_pysodmetrics_is_a_clear_error(monkeypatch, dataset, capsys):
    monkeypatch.setitem(sys.modules, "py_sod_metrics", None)
    with pytest.raises(ImportError, match="pip install pysodmetrics"):
        metrics.DISMetrics()
    assert _run(["evaluate", str(dataset["pred"]), str(dataset["gt"]), "--subsets", "SET-A"], []) == 2
    assert "pysodmetrics" in capsys.readouterr().err


def _tiny_pdfnet():
    from pdfnet_core.models.common.swin import SwinConfig
    from pdfnet_core.models.pdfnet.net import PDFNet, PDFNetConfig
    from pdfnet_core.train.model import init_weights

    torch.manual_seed(0)
    config = PDFNetConfig(emb=16, swin=SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2),
                                                   window_size=4, ape=True, pretrain_img_size=64))
    net = PDFNet(config)
    init_weights(net)
    return net.eval().requires_grad_(False)


def test_evaluate_runs_two_pipelines_in_one_command(tmp_path, monkeypatch):
    """--model runs PDFNet (single pass and TTA) over the images, writes the predictions, and
    tabulates both pipelines.  (A small PDFNet stands in for the released weights: the full
    Swin-B's 64 padded patch windows take minutes on two CPU cores.)"""
    from pdfnet_core import as_loaded
    from pdfnet_core.train import evaluate as evaluation

    loaded = []
    tiny = _tiny_pdfnet()

    def get(self, kind):
        loaded.append(kind)
        assert kind == "pdfnet"          # the subset has depth maps: no depth model is needed
        return as_loaded(tiny)           # (the model cache makes every get of one file one load)

    monkeypatch.setattr(evaluation.PipelineModels, "get", get)
    data = tmp_path / "data"
    write_synthetic_dis(data / "VAL", 2, (64, 80), seed=5)
    out = tmp_path / "runs"
    lines: list[str] = []
    rc = _run(["evaluate", str(out), str(data), "--subsets", "VAL", "--model", "pdfnet", "--model", "pdfnet+tta",
               "--size", "64", "--device", "cpu"], lines)
    assert rc == 0, lines
    assert set(loaded) == {"pdfnet"}
    for name in ("pdfnet", "pdfnet+tta"):
        written = sorted((out / name / "VAL").glob("*.png"))
        assert [p.stem for p in written] == ["synthetic_0000", "synthetic_0001"]
        assert cv2.imread(str(written[0]), cv2.IMREAD_GRAYSCALE).shape == (64, 80)
    md = (out / "metrics.md").read_text()
    assert "| pdfnet | VAL | 2 |" in md and "| pdfnet+tta | VAL | 2 |" in md
    a = cv2.imread(str(out / "pdfnet" / "VAL" / "synthetic_0000.png"), cv2.IMREAD_GRAYSCALE)
    b = cv2.imread(str(out / "pdfnet+tta" / "VAL" / "synthetic_0000.png"), cv2.IMREAD_GRAYSCALE)
    assert np.abs(a.astype(int) - b.astype(int)).max() > 0      # TTA is a different pipeline
    # a second run reuses the predictions it finds and loads nothing
    asked = len(loaded)
    assert _run(["evaluate", str(out), str(data), "--subsets", "VAL", "--model", "pdfnet"], []) == 0
    assert len(loaded) == asked


def test_pipeline_specs():
    from pdfnet_core.train.evaluate import Pipeline, parse_pipeline

    assert parse_pipeline("PDFNet+TTA") == Pipeline("pdfnet", tta=True)
    assert parse_pipeline("birefnet+segrefiner+tta").name == "birefnet+tta+segrefiner"
    for bad in ("sam", "pdfnet+tta+tta", "pdfnet+fast"):
        with pytest.raises(ValueError):
            parse_pipeline(bad)


def test_evaluate_loads_released_layout_weights(reference_dir, tmp_path):
    """The real loader path: --pdfnet-weights with a full-size (synthetic) checkpoint, one image."""
    from synthetic_pdfnet import synthetic_state_dict

    weights = tmp_path / "PDFNet_synthetic.pth"
    torch.save(synthetic_state_dict(reference_dir), weights)
    data = tmp_path / "data"
    write_synthetic_dis(data, 1, (64, 64), seed=9)
    out = tmp_path / "runs"
    lines: list[str] = []
    rc = _run(["evaluate", str(out), str(data), "--model", "pdfnet", "--pdfnet-weights", str(weights),
               "--size", "64", "--device", "cpu"], lines)
    assert rc == 0, lines
    assert (out / "pdfnet" / "synthetic_0000.png").is_file()
    assert f"| pdfnet | {data.name} | 1 |" in (out / "metrics.md").read_text()
