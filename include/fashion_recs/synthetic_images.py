"""Small product pictures for the synthetic retailer.

Image models need pictures whose content carries the same signal as the catalogue: a dress
should look like other dresses and a navy item should be navy. Each picture is a flat silhouette
chosen by department, filled with the product's colour and overlaid with its pattern, so an
image encoder can recover department and colour while look-alike products (same department,
colour and pattern) get near-identical pictures. Drawing is plain PIL and the same inputs always
give the same PNG bytes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from fashion_recs.artifacts import atomic_path

IMAGE_SIZE = 64
# Raw exports and pictures are readable by everyone, like files a retailer hands over.
EXPORT_FILE_MODE = 0o644
BACKGROUND = (236, 236, 232)

# Colour names used in titles and attributes, with the RGB their pictures are painted in.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (22, 22, 24),
    "white": (250, 250, 247),
    "navy": (24, 34, 84),
    "grey": (128, 128, 132),
    "beige": (222, 203, 164),
    "red": (196, 32, 40),
    "burgundy": (118, 22, 42),
    "pink": (238, 150, 182),
    "blue": (42, 92, 200),
    "light blue": (150, 192, 232),
    "green": (42, 128, 62),
    "olive": (108, 110, 42),
    "khaki": (190, 170, 112),
    "brown": (108, 70, 40),
    "camel": (193, 154, 107),
    "yellow": (240, 200, 44),
    "orange": (238, 128, 32),
    "purple": (108, 50, 140),
}

Point = tuple[float, float]


@dataclass(frozen=True)
class ImageRecipe:
    """Everything that decides one product picture.

    `scale`, `dx`, `dy` and `tint` are small per-product variations drawn by the caller from its
    seeded generator, so pictures of different products are never pixel-identical while
    look-alikes stay close.
    """

    filename: str
    department: str
    rgb: tuple[int, int, int]
    pattern: str = ""
    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0
    tint: int = 0


def _dress(c: float) -> list[list[Point]]:
    return [[(c - 7, 10), (c + 7, 10), (c + 9, 24), (c + 20, 56), (c - 20, 56), (c - 9, 24)]]


def _skirt(c: float) -> list[list[Point]]:
    return [[(c - 11, 18), (c + 11, 18), (c + 20, 48), (c - 20, 48)]]


def _legs(c: float) -> list[list[Point]]:
    return [
        [(c - 14, 8), (c + 14, 8), (c + 16, 58), (c + 4, 58), (c, 24), (c - 4, 58), (c - 16, 58)]
    ]


def _t_shape(c: float, sleeve: float) -> list[list[Point]]:
    return [
        [
            (c - 10, 10),
            (c + 10, 10),
            (c + 24, 18),
            (c + 24, 18 + sleeve),
            (c + 14, 18 + sleeve),
            (c + 14, 54),
            (c - 14, 54),
            (c - 14, 18 + sleeve),
            (c - 24, 18 + sleeve),
            (c - 24, 18),
        ]
    ]


def _top(c: float) -> list[list[Point]]:
    return _t_shape(c, 8)


def _long_sleeves(c: float) -> list[list[Point]]:
    return _t_shape(c, 30)


def _shoe(c: float) -> list[list[Point]]:
    return [[(c - 24, 30), (c - 8, 30), (c - 4, 38), (c + 22, 42), (c + 24, 50), (c - 24, 50)]]


def _bag(c: float) -> list[list[Point]]:
    return [[(c - 20, 24), (c + 20, 24), (c + 22, 54), (c - 22, 54)]]


def _accessory(c: float) -> list[list[Point]]:
    return [[(c - 26, 26), (c + 26, 26), (c + 26, 38), (c - 26, 38)]]


_SHAPES: dict[str, Callable[[float], list[list[Point]]]] = {
    "dresses": _dress,
    "skirts": _skirt,
    "jeans": _legs,
    "trousers": _legs,
    "tops": _top,
    "shirts": _top,
    "knitwear": _long_sleeves,
    "jackets": _long_sleeves,
    "shoes": _shoe,
    "bags": _bag,
    "accessories": _accessory,
}


def _shade(rgb: tuple[int, int, int], delta: int) -> tuple[int, int, int]:
    r, g, b = (max(0, min(255, v + delta)) for v in rgb)
    return (r, g, b)


def _contrast(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """A pattern colour that shows on the fill: dark on light fills, light on dark ones."""
    return _shade(rgb, -90) if sum(rgb) > 380 else _shade(rgb, 110)


def _transform(polygon: list[Point], recipe: ImageRecipe) -> list[Point]:
    centre = IMAGE_SIZE / 2
    return [
        (
            centre + (x - centre) * recipe.scale + recipe.dx,
            centre + (y - centre) * recipe.scale + recipe.dy,
        )
        for x, y in polygon
    ]


def _draw_pattern(image: Image.Image, mask: Image.Image, pattern: str, rgb: tuple) -> None:
    """Overlay stripes, dots or checks inside the silhouette (the mask) for patterned products."""
    overlay = Image.new("RGB", image.size, _contrast(rgb))
    marks = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(marks)
    if pattern == "Striped":
        for y in range(0, IMAGE_SIZE, 6):
            draw.rectangle((0, y, IMAGE_SIZE, y + 1), fill=255)
    elif pattern in ("Polka-Dot", "Floral"):
        radius = 1 if pattern == "Polka-Dot" else 2
        for y in range(3, IMAGE_SIZE, 8):
            for x in range(3 + (y // 8 % 2) * 4, IMAGE_SIZE, 8):
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    elif pattern == "Plaid":
        for v in range(0, IMAGE_SIZE, 8):
            draw.line((v, 0, v, IMAGE_SIZE), fill=255)
            draw.line((0, v, IMAGE_SIZE, v), fill=255)
    else:
        return
    marks.paste(0, mask=Image.eval(mask, lambda m: 255 - m))
    image.paste(overlay, mask=marks)


def render_png(recipe: ImageRecipe) -> bytes:
    """Draw one product picture and return it as PNG bytes (deterministic for a recipe)."""
    shape = _SHAPES.get(recipe.department, _bag)
    fill = _shade(recipe.rgb, recipe.tint)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    mask = Image.new("L", image.size, 0)
    mask_draw = ImageDraw.Draw(mask)
    draw = ImageDraw.Draw(image)
    for polygon in shape(IMAGE_SIZE / 2):
        points = _transform(polygon, recipe)
        draw.polygon(points, fill=fill, outline=_shade(fill, -60))
        mask_draw.polygon(points, fill=255)
    if recipe.department == "bags":
        top = _transform([(IMAGE_SIZE / 2 - 10, 14), (IMAGE_SIZE / 2 + 10, 30)], recipe)
        draw.arc((*top[0], *top[1]), start=180, end=360, fill=_shade(fill, -60), width=3)
    if recipe.pattern:
        _draw_pattern(image, mask, recipe.pattern, fill)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_image(recipe: ImageRecipe, directory: Path) -> None:
    with atomic_path(directory / recipe.filename) as tmp:
        tmp.write_bytes(render_png(recipe))
        tmp.chmod(EXPORT_FILE_MODE)


def write_images(recipes: Iterable[ImageRecipe], directory: Path, workers: int = 2) -> int:
    """Write one PNG per recipe into `directory` (each file atomically); return how many.

    A few threads overlap PNG encoding and file creation (both release the GIL); each file's
    bytes depend only on its recipe, so the result does not depend on scheduling.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(1 for _ in pool.map(lambda r: _write_image(r, directory), recipes))
