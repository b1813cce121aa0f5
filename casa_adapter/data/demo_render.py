"""Drawing the demo task's images with PIL: coloured shapes, digits and short words.

Everything is drawn from a `random.Random`, so a seed gives the same pixels. Sizes scale with
the image side (the defaults are tuned for 64 px).
"""

from __future__ import annotations

import functools
import io
import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (40, 75, 215),
    "yellow": (230, 200, 25),
    "purple": (145, 55, 185),
    "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle")
WORDS = ("cat", "dog", "sun", "box", "car", "hat", "pen", "cup")


@dataclass
class Shape:
    """One shape: kind, colour name, centre (x, y) and radius in pixels."""

    kind: str
    color: str
    x: float
    y: float
    r: float


def jitter(rng: random.Random, color: str) -> tuple[int, int, int]:
    """The named colour with a small random shift per channel (so colour is a range, not a value)."""
    return tuple(max(0, min(255, c + rng.randint(-12, 12))) for c in COLORS[color])


def background(rng: random.Random) -> tuple[int, int, int]:
    """A light, slightly random background colour."""
    level = rng.randint(228, 255)
    return level, level, rng.randint(max(228, level - 8), 255)


def radius(rng: random.Random, size: int) -> float:
    """A shape radius: small, medium or large for the image size."""
    lo, hi = rng.choice(((5, 7), (8, 11), (12, 15)))
    return rng.uniform(lo, hi) * size / 64


def place(rng: random.Random, size: int, radii: list[float], tries: int = 60) -> list[Shape]:
    """Non-overlapping (x, y, r) for shapes of the given radii; radii shrink when space runs out."""
    gap = size / 32
    for attempt in range(tries):
        scale = 0.85 ** (attempt // 10)
        placed: list[tuple[float, float, float]] = []
        for r in radii:
            r = max(size / 20, r * scale)
            x, y = rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)
            if any((x - px) ** 2 + (y - py) ** 2 <= (r + pr + gap) ** 2 for px, py, pr in placed):
                break
            placed.append((x, y, r))
        if len(placed) == len(radii):
            return placed
    return grid_place(rng, size, radii)


def grid_place(rng: random.Random, size: int, radii: list[float]) -> list[tuple[float, float, float]]:
    """Fallback: one shape per random cell of the smallest square grid that holds them all."""
    side = math.ceil(math.sqrt(len(radii)))
    cell = size / side
    cells = rng.sample(range(side * side), len(radii))
    placed = []
    for c, r in zip(cells, radii):
        r = min(r, cell / 2 - size / 64)
        cx, cy = (c % side + 0.5) * cell, (c // side + 0.5) * cell
        slack = cell / 2 - r - size / 64
        placed.append((cx + rng.uniform(-slack, slack), cy + rng.uniform(-slack, slack), r))
    return placed


def scatter(rng: random.Random, size: int, specs: list[tuple[str, str]]) -> list[Shape]:
    """Shapes of the given (kind, colour) at random non-overlapping places and sizes."""
    radii = [radius(rng, size) * (0.8 if len(specs) > 3 else 1.0) for _ in specs]
    return [Shape(kind, color, x, y, r) for (kind, color), (x, y, r) in zip(specs, place(rng, size, radii))]


def draw_shapes(
    rng: random.Random, size: int, shapes: list[Shape], bg: tuple[int, int, int] | None = None
) -> Image.Image:
    """The shapes on a background (`bg`, or a random light one)."""
    image = Image.new("RGB", (size, size), bg or background(rng))
    draw = ImageDraw.Draw(image)
    for s in shapes:
        fill = jitter(rng, s.color)
        if s.kind == "circle":
            draw.ellipse((s.x - s.r, s.y - s.r, s.x + s.r, s.y + s.r), fill=fill)
        elif s.kind == "square":
            half = s.r * 0.88
            draw.rectangle((s.x - half, s.y - half, s.x + half, s.y + half), fill=fill)
        else:
            draw.polygon(
                [(s.x, s.y - s.r), (s.x - s.r * 0.95, s.y + s.r * 0.75), (s.x + s.r * 0.95, s.y + s.r * 0.75)],
                fill=fill,
            )
    return image


@functools.lru_cache(maxsize=64)
def font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=px)


def draw_text(rng: random.Random, size: int, text: str) -> Image.Image:
    """`text` in a dark random colour, at a random size and place that fits the image."""
    image = Image.new("RGB", (size, size), background(rng))
    draw = ImageDraw.Draw(image)
    for _ in range(20):
        f = font(max(8, round(rng.uniform(13, 30) * size / 64)))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
        if right - left < size - 4 and bottom - top < size - 4:
            break
    x = rng.uniform(2 - left, size - 2 - right)
    y = rng.uniform(2 - top, size - 2 - bottom)
    ink = tuple(rng.randint(0, 90) for _ in range(3))
    draw.text((x, y), text, font=f, fill=ink)
    return image


def draw_labelled_squares(rng: random.Random, size: int, cells: list[tuple[str, str]]) -> Image.Image:
    """One (colour, word) cell per column, left to right: a filled square with the word written under it."""
    image = Image.new("RGB", (size, size), background(rng))
    draw = ImageDraw.Draw(image)
    width = size / len(cells)
    f = font(max(8, round(size * 0.22)))
    for i, (color, text) in enumerate(cells):
        half = width * rng.uniform(0.22, 0.3)
        cx, cy = (i + 0.5) * width + rng.uniform(-1, 1) * size / 64, size * rng.uniform(0.28, 0.34)
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=jitter(rng, color))
        left, top, right, _ = draw.textbbox((0, 0), text, font=f)
        x = min(max(cx - (right - left) / 2 - left, i * width - left), (i + 1) * width - right)
        draw.text((x, cy + half + size / 32 - top), text, font=f, fill=tuple(rng.randint(0, 70) for _ in range(3)))
    return image


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
