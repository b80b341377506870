"""workflows/<name>.jpg: the thumbnail ComfyUI's template browser shows beside each shipped workflow.

The frontend (1.48) lists a pack's `workflows/*.json` (ComfyUI's server also reads example_workflows/
and a few other folder names) and asks for `/api/workflow_templates/<pack>/<name>.jpg` as the card's
picture. Each thumbnail is the graph of docs/images/workflow_<name>.png (the frontend's own rendering,
written by make_ui_workflows.py), cropped to its nodes and padded to a square.

    .venv/bin/python tests/support/make_thumbnails.py [NAME ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from browser_support import UI_WORKFLOWS  # noqa: E402

SIZE = 512
# The page around the graph in those screenshots: side bar, tabs and tool bar, the stats corner.
GRAPH_BOX = (60, 100, 1280, 680)


def thumbnail(shot: Path, out: Path) -> None:
    with Image.open(shot) as im:
        graph = np.asarray(im.convert("RGB").crop(GRAPH_BOX)).astype(int)
    background = np.median(graph.reshape(-1, 3), axis=0)
    ys, xs = np.nonzero(np.abs(graph - background).sum(-1) > 40)
    pad = 16
    top, left = max(0, ys.min() - pad), max(0, xs.min() - pad)
    bottom, right = min(graph.shape[0], ys.max() + pad), min(graph.shape[1], xs.max() + pad)
    crop = graph[top:bottom, left:right]
    side = max(crop.shape[:2])
    square = np.empty((side, side, 3), int)
    square[:] = background
    y0, x0 = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    Image.fromarray(square.astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.LANCZOS).save(
        out, quality=85, optimize=True)


def main() -> int:
    for name in sys.argv[1:] or UI_WORKFLOWS:
        out = ROOT / "workflows" / f"{name}.jpg"
        thumbnail(ROOT / "docs" / "images" / f"workflow_{name}.png", out)
        print(out, out.stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
