"""Attention maps as pictures: where the attention decoder looked for each word."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

# A perceptual colour ramp (dark blue -> yellow) for the heat overlay, no plotting library needed.
_RAMP = np.array([[48, 18, 59], [70, 107, 227], [41, 187, 236], [164, 252, 60], [251, 185, 56], [122, 4, 3]],
                 dtype=np.float64)


def _colorize(values: np.ndarray) -> np.ndarray:
    """(H, W) values in 0..1 -> (H, W, 3) uint8 colours."""
    pos = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(_RAMP) - 1)
    frac = (pos - lo)[..., None]
    return (_RAMP[lo] * (1 - frac) + _RAMP[hi] * frac).astype(np.uint8)


def attention_overlay(image: Image.Image, weights: np.ndarray, size: int = 160, opacity: float = 0.55) -> Image.Image:
    """Blend one step's attention weights (P,) over ``image`` as a heat map, ``size`` pixels square."""
    weights = np.asarray(weights, np.float64)
    grid = int(round(math.sqrt(weights.size)))
    if grid * grid != weights.size:
        raise ValueError(f"attention has {weights.size} locations, not a square grid")
    heat = weights.reshape(grid, grid)
    heat = (heat - heat.min()) / ((heat.max() - heat.min()) or 1.0)                    # (g, g) in 0..1
    heat_img = Image.fromarray((heat * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    colours = _colorize(np.asarray(heat_img, np.float64) / 255.0)                         # (size, size, 3)
    base = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS), np.float64)
    return Image.fromarray((base * (1 - opacity) + colours * opacity).astype(np.uint8))


def attention_strip(image: Image.Image, words: list[str], attention: np.ndarray, size: int = 160):
    """One overlay per word: [(word, PIL image), ...]."""
    return [(word, attention_overlay(image, attention[i], size)) for i, word in enumerate(words)]
