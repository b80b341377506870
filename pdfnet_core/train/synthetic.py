"""A generated dataset in the DIS5K layout: textured shapes on textured backgrounds, with depth.

For smoke tests of the training and evaluation commands without downloading DIS5K: each image has
one object (an ellipse, polygon or ring, sometimes with a thin wire) whose texture differs from
the background's only statistically, a binary mask, and a depth map in which the object stands
nearer than a background ramp (as a depth prior would show it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour noise plus random stripes, [h,w,3] in 0..1."""
    coarse = rng.random((max(2, h // 8), max(2, w // 8), 3))
    ys = np.linspace(0, coarse.shape[0] - 1, h)
    xs = np.linspace(0, coarse.shape[1] - 1, w)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, coarse.shape[0] - 1), np.minimum(x0 + 1, coarse.shape[1] - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    smooth = (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y1][:, x0] * fy * (1 - fx)
              + coarse[y0][:, x1] * (1 - fy) * fx + coarse[y1][:, x1] * fy * fx)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(4, 12)
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    tint = rng.random(3)
    return np.clip(0.55 * smooth + 0.3 * stripes[..., None] * tint + 0.1 * rng.random((h, w, 3)), 0, 1)


def _shape(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
    theta = rng.uniform(0, np.pi)
    u = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / rx
    v = (-(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)) / ry
    kind = rng.integers(3)
    if kind == 0:                                    # ellipse
        mask = u ** 2 + v ** 2 < 1
    elif kind == 1:                                  # star-like polygon
        r = np.hypot(u, v)
        phi = np.arctan2(v, u)
        mask = r < 0.75 + 0.25 * np.cos(rng.integers(3, 7) * phi)
    else:                                            # ring
        r2 = u ** 2 + v ** 2
        mask = (r2 < 1) & (r2 > rng.uniform(0.2, 0.5))
    if rng.random() < 0.5:                           # a thin wire leaving the object
        ang = rng.uniform(0, 2 * np.pi)
        dist = np.abs((xx - cx) * np.sin(ang) - (yy - cy) * np.cos(ang))
        along = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
        mask |= (dist < 1.0) & (along > 0) & (along < 0.45 * min(h, w))
    return mask


def make_sample(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 [h,w,3], mask uint8 [h,w] 0/255, depth uint8 [h,w], near = bright)."""
    mask = _shape(rng, h, w)
    image = np.where(mask[..., None], _texture(rng, h, w), _texture(rng, h, w))
    yy = np.mgrid[0:h, 0:w][0] / max(1, h - 1)
    depth = 0.2 + 0.4 * yy + 0.05 * rng.random((h, w))
    depth = np.where(mask, rng.uniform(0.75, 0.95) + 0.03 * rng.random((h, w)), depth)
    to_u8 = lambda a: np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    return to_u8(image), mask.astype(np.uint8) * 255, to_u8(depth)


def write_synthetic_dis(root: Path, count: int, size: tuple[int, int] = (96, 96), seed: int = 0,
                        with_depth: bool = True, prefix: str = "synthetic") -> list[str]:
    """Write ``count`` samples to ROOT/im/*.jpg, ROOT/gt/*.png (and ROOT/depth/*.png); returns the names."""
    root = Path(root)
    folders = ["im", "gt"] + (["depth"] if with_depth else [])
    for name in folders:
        (root / name).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stems = []
    for i in range(count):
        image, mask, depth = make_sample(rng, *size)
        stem = f"{prefix}_{i:04d}"
        Image.fromarray(image).save(root / "im" / f"{stem}.jpg", quality=95)
        Image.fromarray(mask).save(root / "gt" / f"{stem}.png")
        if with_depth:
            Image.fromarray(depth).save(root / "depth" / f"{stem}.png")
        stems.append(stem)
    return stems
