"""Spill removal: take a keyed background's colour cast (green/blue screen, or any colour) out of a
subject's foreground colours.

Spill is the key's chroma added to the subject: at its edges (the screen seen through hair, mixed
into the colour estimate) and inside it (light reflected off the screen).  The key's chroma
direction is d = (K - mean(K)) / |K - mean(K)|; a pixel's spill is its chroma's positive component
along d, and removing it along d keeps the pixel's mean brightness and leaves neutral and
key-opposite colours untouched (for a green key, g falls and r, b rise by half as much, i.e. the
classic "average" despill generalised to any key).  In the edge band (alpha < 1) all of it goes,
times ``strength``; inside the subject at most ``interior_limit`` of it, because a reflection is a
faint cast and a strongly key-coloured pixel there is more likely the subject's own colour.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import InputError, check_image, check_mask, check_same_size
from .composite import parse_color

__all__ = ["DespillConfig", "KEY_COLORS", "DESPILL_CHOICES", "key_color", "estimate_key", "despill", "remove_spill"]

KEY_COLORS: dict[str, tuple[float, float, float]] = {"green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}
DESPILL_CHOICES = ("none", "auto", *KEY_COLORS)   # or a '#RRGGBB' colour

# A background whose chroma is below this (in 0..1 units) is not a keyed screen: "auto" does nothing.
MIN_KEY_CHROMA = 0.1


@dataclass(frozen=True)
class DespillConfig:
    key: str = "none"              # none | auto | green | blue | #RRGGBB
    strength: float = 1.0          # 0..1: share of the spill removed
    interior_limit: float = 0.08   # the most key chroma (0..1 units) removed where alpha is 1

    def validate(self) -> "DespillConfig":
        key_color(self.key)
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"despill strength must be in 0..1, got {self.strength}")
        if self.interior_limit < 0:
            raise ValueError(f"despill interior_limit must be >= 0, got {self.interior_limit}")
        return self


def key_color(key: str) -> tuple[float, float, float] | None:
    """The RGB of a named or hex key; None for "none" and "auto" (auto is estimated per image)."""
    text = key.strip().lower()
    if text in ("none", "auto"):
        return None
    if text in KEY_COLORS:
        return KEY_COLORS[text]
    try:
        return parse_color(text if text.startswith("#") else "#" + text)
    except ValueError:
        raise InputError(f"despill key {key!r}: use one of {', '.join(DESPILL_CHOICES)} or a colour like "
                         "'#20C040'") from None


def estimate_key(image: torch.Tensor, background: torch.Tensor) -> torch.Tensor | None:
    """The median colour [3] of the pixels where ``background`` [H,W] is True, or None when there are
    none or their colour is too neutral to be a keyed screen."""
    pixels = image[background]
    if pixels.shape[0] == 0:
        return None
    step = max(1, pixels.shape[0] // 200_000)   # the median of a subsample: the screen is uniform
    key = pixels[::step].median(0).values
    chroma = key - key.mean()
    return key if float(chroma.norm()) >= MIN_KEY_CHROMA else None


def despill(foreground: torch.Tensor, alpha: torch.Tensor, key: torch.Tensor | tuple[float, float, float],
            strength: float = 1.0, interior_limit: float = DespillConfig.interior_limit) -> torch.Tensor:
    """Foreground colours [B,H,W,3] without the key's spill; ``alpha`` [B,H,W] tells edge from inside."""
    foreground = check_image(foreground, "foreground")
    alpha = check_mask(alpha, "alpha")
    check_same_size(foreground, alpha, "foreground", "alpha", "pass the alpha of this foreground")
    k = torch.as_tensor(key, dtype=torch.float32, device=foreground.device).reshape(3)
    chroma = k - k.mean()
    norm = chroma.norm()
    if float(norm) < 1e-6:   # a grey key has no chroma to remove
        return foreground.clone()
    d = chroma / norm
    fg = foreground.to(torch.float32)
    spill = (fg @ d).clamp(min=0)  # d is orthogonal to grey, so this is the chroma's component
    a = alpha.to(device=fg.device, dtype=torch.float32)
    limit = torch.where(a >= 0.99, torch.full_like(a, interior_limit), torch.full_like(a, float("inf")))
    removed = strength * torch.minimum(spill, limit)
    return (fg - removed[..., None] * d).clamp(0, 1).to(foreground.dtype)


def remove_spill(image: torch.Tensor, foreground: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor,
                 config: DespillConfig) -> torch.Tensor:
    """``despill`` by ``config`` for a batch: image, foreground [B,H,W,3], alpha [B,H,W], and
    ``background`` [B,H,W] bool, the definite background where "auto" reads each image's key."""
    config.validate()
    fixed = key_color(config.key)
    auto = config.key.strip().lower() == "auto"
    if config.strength == 0 or (fixed is None and not auto):
        return foreground
    out = []
    for i in range(foreground.shape[0]):
        key = estimate_key(image[i].to(torch.float32), background[i]) if auto else fixed
        fg = foreground[i:i + 1]
        out.append(fg if key is None else despill(fg, alpha[i:i + 1], key, config.strength, config.interior_limit))
    return torch.cat(out)
