"""Training data in the DIS5K layout: ``ROOT/im/*.jpg``, ``ROOT/gt/*.png``, optional ``ROOT/depth/*.png``.

Every pair is checked once, from the file headers, before any training starts: a missing mask, a
mask of another size or a mask that is not single-channel is reported by name.  Images without a
depth map get one from the depth model, computed exactly as at inference (``depth_prior``: 8-bit,
per image min-max) and cached on disk as 8-bit PNG, which stores those values exactly.

Samples follow the official loader: image, mask and depth resized to the square network size with
bilinear ``align_corners=True``, then the augmentations (horizontal flip, random crop resized back).
Augmentation randomness comes from a generator seeded by (seed, epoch, index), so a resumed run
sees the same samples as an uninterrupted one, whatever the number of workers.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..atomic_files import atomic_write
from ..depth import depth_prior
from ..ops.images import imagenet_normalize
from ..specs import LoadedModel
from .config import AugmentConfig

log = logging.getLogger("pdfnet_core")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# single-channel PIL modes; masks in other modes (RGB, RGBA, LA, palette) are refused
MASK_MODES = ("1", "L", "I", "I;16", "I;16L", "I;16B", "F")
_MAX_NAMES = 10


class DatasetError(ValueError):
    """The training or validation folders cannot be used; the message names the files."""


@dataclass(frozen=True)
class Item:
    stem: str
    image: Path
    mask: Path
    depth: Path | None = None


def _by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def _names(stems: Sequence[str]) -> str:
    shown = ", ".join(stems[:_MAX_NAMES])
    return shown + (f" ... and {len(stems) - _MAX_NAMES} more" if len(stems) > _MAX_NAMES else "")


def scan_folder(root: Path) -> list[Item]:
    """The checked (image, mask, depth) triples of one DIS5K-style folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    images = _by_stem(root / "im")
    masks = _by_stem(root / "gt")
    depths = _by_stem(root / "depth")
    if not images:
        raise DatasetError(f"{root}: no images in {root / 'im'} (expected the DIS5K layout: "
                           "ROOT/im/NAME.jpg, ROOT/gt/NAME.png, optional ROOT/depth/NAME.png)")
    lonely = sorted(set(images) - set(masks))
    if lonely:
        raise DatasetError(f"{root}: {len(lonely)} image(s) without a mask in {root / 'gt'}: {_names(lonely)}")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        log.warning("%s: %d mask(s) without an image are ignored: %s", root, len(orphans), _names(orphans))
    items, wrong_size, wrong_mode = [], [], []
    for stem, image in images.items():
        with Image.open(image) as im:
            size = im.size
        with Image.open(masks[stem]) as m:
            mask_size, mode = m.size, m.mode
        if mode not in MASK_MODES:
            wrong_mode.append(f"{masks[stem].name} ({mode})")
        if mask_size != size:
            wrong_size.append(f"{stem}: image {size[0]}x{size[1]}, mask {mask_size[0]}x{mask_size[1]}")
        depth = depths.get(stem)
        if depth is not None:
            with Image.open(depth) as d:
                if d.size != size:
                    wrong_size.append(f"{stem}: image {size[0]}x{size[1]}, depth {d.size[0]}x{d.size[1]}")
        items.append(Item(stem, image, masks[stem], depth))
    if wrong_mode:
        raise DatasetError(f"{root}: {len(wrong_mode)} mask(s) are not single-channel: {_names(wrong_mode)}; "
                           "save masks as grayscale PNG (white = object)")
    if wrong_size:
        raise DatasetError(f"{root}: {len(wrong_size)} file(s) differ in size from their image (width x height): "
                           f"{_names(wrong_size)}")
    return items


def scan_folders(roots: Sequence[Path]) -> list[Item]:
    items = [item for root in roots for item in scan_folder(root)]
    if not items:
        raise DatasetError("the training set is empty")
    return items


# --------------------------------------------------------------------------------------------
# reading


def read_rgb(path: Path) -> torch.Tensor:
    """[3,H,W] float32 in 0..1."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def read_gray(path: Path) -> torch.Tensor:
    """[1,H,W] float32 in 0..1 from an 8-bit, 16-bit, binary or float single-channel file (RGB: luma)."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16L", "I;16B", "I"):
            arr = np.asarray(im, dtype=np.float32)
            arr = arr / (255.0 if im.mode == "I" and arr.max() <= 255 else 65535.0)
        elif im.mode in ("F", "1"):
            arr = np.asarray(im, dtype=np.float32)
        else:
            arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.clip(arr, 0, 1).copy())[None]


def resize_ac(x: torch.Tensor, size: int) -> torch.Tensor:
    """[C,H,W] -> [C,size,size], bilinear align_corners=True (the official loader's resize)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=True)[0]


# --------------------------------------------------------------------------------------------
# depth maps for images that have none


def depth_cache_path(item: Item, cache_dir: Path) -> Path:
    # one sub-folder per source folder, so equal names in two training folders do not collide
    root = item.image.parent.parent.resolve()
    tag = hashlib.sha1(str(root).encode("utf-8")).hexdigest()[:8]
    return Path(cache_dir) / f"{root.name}-{tag}" / f"{item.stem}.png"


def fill_depth(items: Sequence[Item], cache_dir: Path, load_depth_model: Callable[[], LoadedModel],
               progress: Callable[[int, int], None] | None = None) -> list[Item]:
    """Items with a depth map each; missing ones are computed once (``depth_prior``) and cached."""
    out: list[Item] = []
    todo: list[tuple[int, Path]] = []
    for item in items:
        if item.depth is not None:
            out.append(item)
            continue
        cached = depth_cache_path(item, cache_dir)
        fresh = cached.is_file() and cached.stat().st_mtime >= item.image.stat().st_mtime
        out.append(replace(item, depth=cached))
        if not fresh:
            todo.append((len(out) - 1, cached))
    if not todo:
        return out
    log.info("computing %d depth map(s) into %s", len(todo), cache_dir)
    model = load_depth_model()
    for n, (index, cached) in enumerate(todo, start=1):
        rgb = read_rgb(out[index].image).permute(1, 2, 0)
        depth = depth_prior([rgb], model)[0]
        # depth_prior is already quantised to 8 bits, so this store is exact
        png = Image.fromarray((depth * 255).round().clamp(0, 255).to(torch.uint8).numpy())
        atomic_write(cached, lambda fh: png.save(fh, format="PNG"))
        if progress is not None:
            progress(n, len(todo))
    return out


# --------------------------------------------------------------------------------------------
# the dataset


def _generator(seed: int, epoch: int, index: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + index + 1) % 2 ** 63)
    return g


def _uniform(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


def augment(image: torch.Tensor, mask: torch.Tensor, depth: torch.Tensor, cfg: AugmentConfig,
            g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flip and crop the three maps together (they are [C,S,S] at the network size)."""
    if _uniform(g) < cfg.hflip:
        image, mask, depth = image.flip(-1), mask.flip(-1), depth.flip(-1)
    if _uniform(g) < cfg.crop and cfg.crop_min_scale < 1.0:
        size = image.shape[-1]
        lo = max(1, int(round(size * cfg.crop_min_scale)))
        h = int(torch.randint(lo, size + 1, (), generator=g))
        w = int(torch.randint(lo, size + 1, (), generator=g))
        top = int(torch.randint(0, size - h + 1, (), generator=g))
        left = int(torch.randint(0, size - w + 1, (), generator=g))
        window = (slice(None), slice(top, top + h), slice(left, left + w))
        image, mask, depth = (resize_ac(t[window], size) for t in (image, mask, depth))
    return image, mask, depth


class DISDataset(torch.utils.data.Dataset):
    """``dataset[(epoch, index)]`` -> dict(image [3,S,S] ImageNet-normalised, mask [1,S,S], depth [1,S,S])."""

    def __init__(self, items: Sequence[Item], size: int, augment_cfg: AugmentConfig | None, seed: int = 0):
        missing = [item.stem for item in items if item.depth is None]
        if missing:
            raise DatasetError(f"no depth map for {_names(missing)}; run fill_depth first")
        self.items = list(items)
        self.size = size
        self.augment_cfg = augment_cfg
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        item = self.items[index]
        image = resize_ac(read_rgb(item.image), self.size)
        mask = resize_ac(read_gray(item.mask), self.size)
        depth = resize_ac(read_gray(item.depth), self.size)
        if self.augment_cfg is not None:
            image, mask, depth = augment(image, mask, depth, self.augment_cfg, _generator(self.seed, epoch, index))
        return {"image": imagenet_normalize(image[None])[0], "mask": mask.clamp(0, 1), "depth": depth,
                "index": torch.tensor(index)}


def epoch_batches(count: int, batch_size: int, epoch: int, seed: int, shuffle: bool = True) -> list[list[tuple[int, int]]]:
    """The batches of one epoch as (epoch, index) keys; incomplete last batches are dropped when shuffling."""
    if shuffle:
        order = torch.randperm(count, generator=_generator(seed, epoch, -1)).tolist()
        full = count // batch_size * batch_size
        order = order[:full]
    else:
        order = list(range(count))
    return [[(epoch, i) for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]
