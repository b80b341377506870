"""Alpha compositing, premultiplication, RGBA packing and ComfyUI mask polarity.

Images are ComfyUI IMAGE tensors [B,H,W,3] in 0..1, masks/alpha are [B,H,W] with foreground = 1.
Everything stays in floating point on the caller's device. Batches: an image and its alpha may be
1 and N or N and N (one mask for all images, or one image under N masks); a background must be one
for all N results or one per result; anything else is a ValueError naming both counts.

The compositing formula is fg*alpha + bg*(1-alpha), not bg + alpha*(fg-bg): only the first gives
exactly fg where alpha is 1 and exactly bg where alpha is 0 in floating point.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .checks import batch_pair, check_image, check_mask, check_same_size

__all__ = [
    "ColorLike", "parse_color", "composite_over_color", "composite_over_image", "fit_background",
    "premultiply", "unpremultiply", "to_rgba", "split_rgba", "FIT_MODES",
]

ColorLike = str | Sequence[float] | Sequence[int]  # see parse_color


def parse_color(color: ColorLike) -> tuple[float, float, float]:
    """An RGB colour as three floats in 0..1.

    Accepts '#RRGGBB' / 'RRGGBB' / '#RGB' hex strings, three ints in 0..255 (all of them ints), or
    three floats in 0..1.
    """
    if isinstance(color, str):
        text = color.strip().removeprefix("#")
        if len(text) == 3:
            text = "".join(ch * 2 for ch in text)
        try:
            if len(text) != 6:
                raise ValueError
            return tuple(int(text[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]
        except ValueError:
            raise ValueError(f"color {color!r} is not a hex colour like '#RRGGBB'") from None
    values = list(color)
    if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"color must be '#RRGGBB' or three numbers, got {color!r}")
    if all(isinstance(v, int) for v in values):
        if not all(0 <= v <= 255 for v in values):
            raise ValueError(f"color {color!r}: integer channels must be in 0..255")
        return tuple(v / 255.0 for v in values)  # type: ignore[return-value]
    if not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"color {color!r}: float channels must be in 0..1 (use ints for 0..255)")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def _color_tensor(color: ColorLike, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(parse_color(color), dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------------------------
# batch and size checks


def _image_and_alpha(image: torch.Tensor, alpha: torch.Tensor, image_name: str = "foreground",
                     alpha_name: str = "alpha") -> tuple[torch.Tensor, torch.Tensor]:
    """Both validated and broadcast to one batch size; alpha as [N,H,W,1] in the image's dtype."""
    image = check_image(image, image_name)
    alpha = check_mask(alpha, alpha_name)
    check_same_size(image, alpha, image_name, alpha_name, "resize the mask to the image first")
    n = batch_pair(image.shape[0], alpha.shape[0], image_name, alpha_name)
    a = alpha.to(device=image.device, dtype=image.dtype)[..., None]
    return image.expand(n, -1, -1, -1), a.expand(n, -1, -1, -1)


# --------------------------------------------------------------------------------------------
# compositing


def composite_over_color(foreground: torch.Tensor, alpha: torch.Tensor,
                         color: ColorLike = (0, 0, 0)) -> torch.Tensor:
    """foreground*alpha + color*(1-alpha), [N,H,W,3]. Over black this equals `premultiply`."""
    fg, a = _image_and_alpha(foreground, alpha)
    return fg * a + _color_tensor(color, fg) * (1 - a)


def _resize(image: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if image.shape[1:3] == (h, w):
        return image
    # Half precision is resized in float32: the antialiased kernels have no CPU half version.
    work = image.to(torch.float64 if image.dtype == torch.float64 else torch.float32)
    x = work.permute(0, 3, 1, 2)
    # Antialiased bilinear: a downscaled background does not alias, and float in, float out.
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1).clamp(0, 1).to(image.dtype)


def _fit_stretch(bg: torch.Tensor, h: int, w: int, fill: torch.Tensor) -> torch.Tensor:
    return _resize(bg, h, w)


def _fit_cover(bg: torch.Tensor, h: int, w: int, fill: torch.Tensor) -> torch.Tensor:
    hb, wb = bg.shape[1:3]
    scale = max(h / hb, w / wb)
    nh, nw = max(h, round(hb * scale)), max(w, round(wb * scale))
    top, left = (nh - h) // 2, (nw - w) // 2
    return _resize(bg, nh, nw)[:, top:top + h, left:left + w]


def _fit_contain(bg: torch.Tensor, h: int, w: int, fill: torch.Tensor) -> torch.Tensor:
    hb, wb = bg.shape[1:3]
    scale = min(h / hb, w / wb)
    nh, nw = min(h, max(1, round(hb * scale))), min(w, max(1, round(wb * scale)))
    top, left = (h - nh) // 2, (w - nw) // 2
    out = fill.expand(bg.shape[0], h, w, 3).clone()
    out[:, top:top + nh, left:left + nw] = _resize(bg, nh, nw)
    return out


FIT_MODES: dict[str, Callable[[torch.Tensor, int, int, torch.Tensor], torch.Tensor]] = {
    "stretch": _fit_stretch,   # resize to the exact size, aspect ratio not kept
    "cover": _fit_cover,       # scale to cover the whole frame, crop the overflow (centred)
    "contain": _fit_contain,   # scale to fit inside, letterbox the rest with `fill`
}


def fit_background(background: torch.Tensor, height: int, width: int, fit: str = "cover",
                   fill: ColorLike = (0, 0, 0)) -> torch.Tensor:
    """Resize a background [N,Hb,Wb,3] to [N,height,width,3] by `fit` (see FIT_MODES)."""
    background = check_image(background, "background")
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {sorted(FIT_MODES)}, got {fit!r}")
    return FIT_MODES[fit](background, height, width, _color_tensor(fill, background))


def composite_over_image(foreground: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor,
                         fit: str = "cover",
                         fill: ColorLike = (0, 0, 0)) -> torch.Tensor:
    """foreground*alpha + background*(1-alpha) with the background fitted to the foreground's size.

    `background` holds one image for all N foregrounds or one per foreground (N counts after
    broadcasting foreground and alpha); any size, placed by `fit` ("stretch", "cover" or "contain"; `fill` is the letterbox colour of "contain").
    """
    fg, a = _image_and_alpha(foreground, alpha)
    background = check_image(background, "background")
    n = fg.shape[0]
    if background.shape[0] not in (1, n):
        raise ValueError(f"foreground has {n} images and background has {background.shape[0]}: pass one "
                         "background for all foregrounds or one per foreground")
    bg = fit_background(background.to(device=fg.device, dtype=fg.dtype), fg.shape[1], fg.shape[2], fit, fill)
    return fg * a + bg * (1 - a)


# --------------------------------------------------------------------------------------------
# premultiplied alpha and RGBA


def premultiply(image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Premultiplied-alpha RGB: image*alpha, [N,H,W,3] (the colour part of a premultiplied RGBA)."""
    fg, a = _image_and_alpha(image, alpha, "image")
    return fg * a


def unpremultiply(image: torch.Tensor, alpha: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Straight RGB from premultiplied: image/alpha where alpha > eps, 0 elsewhere, clamped to 0..1."""
    pm, a = _image_and_alpha(image, alpha, "image")
    return torch.where(a > eps, pm / a.clamp(min=eps), torch.zeros_like(pm)).clamp(0, 1)


def to_rgba(image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Straight (not premultiplied) RGBA [N,H,W,4]: the image with alpha as the 4th channel.

    Only for nodes and files that want RGBA explicitly; IMAGE outputs elsewhere stay RGB with the
    alpha as a separate MASK, because most ComfyUI nodes (and VAE encoding) expect 3 channels.
    """
    fg, a = _image_and_alpha(image, alpha, "image")
    return torch.cat([fg, a], -1)


def split_rgba(rgba: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N,H,W,4] -> (RGB [N,H,W,3], alpha [N,H,W])."""
    if not isinstance(rgba, torch.Tensor) or rgba.ndim != 4 or rgba.shape[-1] != 4:
        raise ValueError(f"rgba: expected a [N,H,W,4] tensor, got {getattr(rgba, 'shape', type(rgba))}")
    return rgba[..., :3], rgba[..., 3]
