"""Precision-recall and F-measure curves as PNG, drawn with PIL (no plotting library needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
_W, _H = 720, 540
_MARGIN = (70, 30, 30, 60)   # left, top, right, bottom


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:         # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def line_plot(series: Sequence[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str, xlabel: str,
              ylabel: str, xlim: tuple[float, float], ylim: tuple[float, float] = (0.0, 1.0),
              xticks: Sequence[float] | None = None) -> Path:
    """``series``: (label, x, y) per line; ``xticks`` default: ten steps.  Writes an RGB PNG."""
    image = Image.new("RGB", (_W, _H), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = _MARGIN[0], _MARGIN[1], _W - _MARGIN[2], _H - _MARGIN[3]
    font, small = _font(16), _font(12)

    def px(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
        u = left + (np.asarray(x, float) - xlim[0]) / (xlim[1] - xlim[0]) * (right - left)
        v = bottom - (np.asarray(y, float) - ylim[0]) / (ylim[1] - ylim[0]) * (bottom - top)
        return list(zip(u.tolist(), v.tolist()))

    if xticks is None:
        xticks = [xlim[0] + (xlim[1] - xlim[0]) * k / 10 for k in range(11)]
    for fx in xticks:                                     # grid and tick labels
        (gx, _), = px([fx], [ylim[0]])
        draw.line([(gx, top), (gx, bottom)], fill=(230, 230, 230))
        draw.text((gx, bottom + 6), f"{fx:g}", fill="black", font=small, anchor="mt")
    for k in range(11):
        fy = ylim[0] + (ylim[1] - ylim[0]) * k / 10
        (_, gy), = px([xlim[0]], [fy])
        draw.line([(left, gy), (right, gy)], fill=(230, 230, 230))
        draw.text((left - 6, gy), f"{fy:.1f}", fill="black", font=small, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, 6), title, fill="black", font=font, anchor="mt")
    draw.text(((left + right) / 2, _H - 8), xlabel, fill="black", font=font, anchor="mb")
    ylabel_img = Image.new("RGB", (bottom - top, 22), "white")
    ImageDraw.Draw(ylabel_img).text(((bottom - top) / 2, 11), ylabel, fill="black", font=font, anchor="mm")
    image.paste(ylabel_img.rotate(90, expand=True), (4, top))

    for i, (label, x, y) in enumerate(series):
        points = px(x, y)
        if len(points) > 1:
            draw.line(points, fill=_PALETTE[i % len(_PALETTE)], width=2)
    if series:                                            # legend: bottom left, where both curves rarely go
        width = max(draw.textlength(label, font=small) for label, _, _ in series) + 48
        box_top = bottom - 10 - 18 * len(series)
        draw.rectangle([left + 10, box_top - 4, left + 10 + width, bottom - 8], fill="white", outline=(160, 160, 160))
        for i, (label, _, _) in enumerate(series):
            ly = box_top + 8 + 18 * i
            draw.line([(left + 18, ly), (left + 42, ly)], fill=_PALETTE[i % len(_PALETTE)], width=3)
            draw.text((left + 50, ly), label, fill="black", font=small, anchor="lm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def pr_curve(rows, path: Path) -> Path:
    """Precision against recall, one line per (pipeline, subset) row of ``pdfnet_core.metrics``."""
    series = [(f"{r.pipeline} {r.subset}", r.scores.recall, r.scores.precision) for r in rows]
    return line_plot(series, path, "Precision-recall", "recall", "precision", (0.0, 1.0))


def f_curve(rows, path: Path) -> Path:
    """F-beta against the binarisation threshold (0..255)."""
    thresholds = np.arange(256)
    series = [(f"{r.pipeline} {r.subset}", thresholds, r.scores.f_curve) for r in rows]
    return line_plot(series, path, "F-measure (beta^2 = 0.3) against the threshold", "threshold", "F-beta",
                     (0.0, 255.0), xticks=list(range(0, 256, 32)) + [255])
