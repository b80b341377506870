"""DIS benchmark metrics (IS-Net, ECCV 2022) computed with PySODMetrics, as the DIS evaluators do.

max / mean F-beta (beta^2 = 0.3, 256 thresholds), weighted F-beta (beta = 1), MAE, S-measure
(alpha = 0.5), mean / max E-measure and HCE (human correction effort).  Rules of the evaluators
whose numbers papers quote:
* predictions and masks are 8-bit gray images; a prediction of another size is resized to its
  mask's size with OpenCV bilinear interpolation (BiRefNet's DIS evaluator);
* masks are binarised at > 128 (PySODMetrics);
* HCE is computed on the prediction binarised at > 128 (the DIS rule; PySODMetrics would min-max
  normalise a soft map and threshold at 0.5, which changes the count).
PySODMetrics (``pip install pysodmetrics``, the ``metrics`` extra) pins older numpy/scikit-image
releases, so it is optional: it is imported when a metric object is created.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
BINARY_THRESHOLD = 128
# (field, header, higher is better) in the order BiRefNet's evaluator reports DIS5K
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("max_f", "maxFβ", True),
    ("weighted_f", "Fβω", True),
    ("mae", "MAE", False),
    ("s_measure", "Sα", True),
    ("mean_e", "meanEφ", True),
    ("hce", "HCEγ", False),
    ("max_e", "maxEφ", True),
    ("mean_f", "meanFβ", True),
)


def require_pysodmetrics():
    try:
        import py_sod_metrics   # deferred: the optional extra pdfnet[metrics]
    except ImportError as exc:
        raise ImportError("the DIS metrics need PySODMetrics: pip install pysodmetrics "
                          "(or pip install 'pdfnet[metrics]')") from exc
    return py_sod_metrics


@dataclass(frozen=True)
class Scores:
    """Dataset means; curves are indexed by threshold t = 0..255 (prediction >= t is foreground)."""

    count: int
    max_f: float
    mean_f: float
    weighted_f: float
    mae: float
    s_measure: float
    mean_e: float
    max_e: float
    hce: float
    precision: np.ndarray
    recall: np.ndarray
    f_curve: np.ndarray


def to_u8(pred) -> np.ndarray:
    """An 8-bit gray map from uint8 or float 0..1 data (floats rounded as a saved PNG would be)."""
    arr = np.asarray(pred)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    return np.round(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def resize_to(pred: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """OpenCV bilinear to (height, width), as the DIS evaluators resize predictions to the mask."""
    if pred.shape[:2] == tuple(shape):
        return pred
    import cv2   # deferred: OpenCV comes with the optional extra pdfnet[metrics]

    return cv2.resize(pred, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def binarize(pred: np.ndarray) -> np.ndarray:
    return np.where(pred > BINARY_THRESHOLD, 255, 0).astype(np.uint8)


class DISMetrics:
    """Accumulate prediction/mask pairs with ``step``; ``results()`` gives the dataset means."""

    def __init__(self):
        sod = require_pysodmetrics()
        dynamic = dict(with_dynamic=True, with_adaptive=False)
        self._f = sod.FmeasureV2({
            "f": sod.FmeasureHandler(**dynamic, beta=0.3),
            "p": sod.PrecisionHandler(**dynamic),
            "r": sod.RecallHandler(**dynamic),
        })
        self._wf = sod.WeightedFmeasure(beta=1)
        self._s = sod.Smeasure(alpha=0.5)
        self._e = sod.Emeasure()
        self._mae = sod.MAE()
        self._hce = sod.HumanCorrectionEffortMeasure(relax=5, epsilon=2.0)
        self.count = 0

    def step(self, pred, gt) -> None:
        """``pred``: uint8 or float 0..1 map of any size; ``gt``: the mask (uint8, > 128 = object)."""
        gt = to_u8(gt)
        if gt.ndim != 2:
            raise ValueError(f"the mask must be a single-channel H x W map, got shape {gt.shape}")
        pred = to_u8(pred)
        if pred.ndim != 2:
            raise ValueError(f"the prediction must be a single-channel H x W map, got shape {pred.shape}")
        pred = resize_to(pred, gt.shape)
        for metric in (self._f, self._wf, self._s, self._e, self._mae):
            metric.step(pred=pred, gt=gt)
        self._hce.step(pred=binarize(pred), gt=gt)
        self.count += 1

    def results(self) -> Scores:
        if not self.count:
            raise ValueError("no prediction/mask pairs were evaluated")
        f = self._f.get_results()
        em = self._e.get_results()["em"]["curve"]
        # PySODMetrics' dynamic curves run from threshold 255 down to 0; store them by threshold
        f_curve = np.flip(f["f"]["dynamic"]).copy()
        return Scores(
            count=self.count,
            max_f=float(f_curve.max()),
            mean_f=float(f_curve.mean()),
            weighted_f=float(self._wf.get_results()["wfm"]),
            mae=float(self._mae.get_results()["mae"]),
            s_measure=float(self._s.get_results()["sm"]),
            mean_e=float(em.mean()),
            max_e=float(em.max()),
            hce=float(self._hce.get_results()["hce"]),
            precision=np.flip(f["p"]["dynamic"]).copy(),
            recall=np.flip(f["r"]["dynamic"]).copy(),
            f_curve=f_curve,
        )


# --------------------------------------------------------------------------------------------
# files and folders


def read_gray_u8(path: Path) -> np.ndarray:
    """An 8-bit gray image as the evaluators read it (``cv2.imread(..., IMREAD_GRAYSCALE)``)."""
    import cv2   # deferred: OpenCV comes with the optional extra pdfnet[metrics]

    arr = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if arr is None:
        raise ValueError(f"{path}: not a readable image")
    return arr


def images_by_stem(folder: Path) -> dict[str, Path]:
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    return {p.stem: p for p in sorted(Path(folder).iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


@dataclass(frozen=True)
class FolderResult:
    scores: Scores | None
    missing: tuple[str, ...]        # masks without a prediction
    unreadable: tuple[str, ...]     # files that could not be read, with the reason


def evaluate_folder(pred_dir: Path, gt_dir: Path) -> FolderResult:
    """Every mask in ``gt_dir`` against the prediction of the same name (any image suffix) in ``pred_dir``."""
    masks = images_by_stem(gt_dir)
    if not masks:
        raise ValueError(f"{gt_dir}: no masks to evaluate against")
    preds = images_by_stem(pred_dir) if Path(pred_dir).is_dir() else {}
    metrics = DISMetrics()
    missing, unreadable = [], []
    for stem, gt_path in masks.items():
        if stem not in preds:
            missing.append(stem)
            continue
        try:
            metrics.step(read_gray_u8(preds[stem]), read_gray_u8(gt_path))
        except ValueError as exc:
            unreadable.append(str(exc))
    return FolderResult(metrics.results() if metrics.count else None, tuple(missing), tuple(unreadable))


# --------------------------------------------------------------------------------------------
# tables


@dataclass(frozen=True)
class Row:
    pipeline: str
    subset: str
    scores: Scores


def _fmt(key: str, value: float) -> str:
    return f"{value:.0f}" if key == "hce" else f"{value:.3f}"


def markdown_table(rows: Sequence[Row]) -> str:
    """A paper-style table: one row per (pipeline, subset), arrows say which way is better."""
    head = ["pipeline", "subset", "images"] + [f"{h} {'↑' if up else '↓'}" for _, h, up in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(COLUMNS)) + "|"]
    for row in rows:
        cells = [row.pipeline, row.subset, str(row.scores.count)]
        cells += [_fmt(key, getattr(row.scores, key)) for key, _, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["pipeline", "subset", "images"] + [key for key, _, _ in COLUMNS])
    for row in rows:
        writer.writerow([row.pipeline, row.subset, row.scores.count] +
                        [repr(float(getattr(row.scores, key))) for key, _, _ in COLUMNS])
    return buffer.getvalue()

