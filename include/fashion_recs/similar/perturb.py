"""Image perturbations for the robustness check: what a re-shoot or a re-upload changes.

A product photographed again is cropped a little differently, mirrored, or lit differently;
its similar-product list should barely move. Each perturbation is deterministic for a seed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

PERTURBATIONS = ("crop", "flip", "color_jitter")


def crop(image: Image.Image, keep: float = 0.8) -> Image.Image:
    """The centre `keep` share of each side, scaled back to the original size."""
    w, h = image.size
    dw, dh = int(w * (1 - keep) / 2), int(h * (1 - keep) / 2)
    return image.crop((dw, dh, w - dw, h - dh)).resize((w, h), Image.Resampling.BILINEAR)


def flip(image: Image.Image) -> Image.Image:
    return ImageOps.mirror(image)


def color_jitter(
    image: Image.Image, rng: np.random.Generator, strength: float = 0.2
) -> Image.Image:
    """Brightness, contrast and saturation each scaled by a factor in 1 +- strength."""
    out = image
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhancer(out).enhance(float(1 + rng.uniform(-strength, strength)))
    return out


def perturb(image: Image.Image, kind: str, seed: int) -> Image.Image:
    if kind == "crop":
        return crop(image)
    if kind == "flip":
        return flip(image)
    if kind == "color_jitter":
        return color_jitter(image, np.random.default_rng(seed))
    raise ValueError(f"unknown perturbation {kind!r}; choose one of {PERTURBATIONS}")
