"""The demo task's question types: each draws images for a given answer.

The answer is chosen first (balanced, see `make_demo.py`) and the images are drawn to match
it; question wording is drawn independently of the answer. So the question text carries no
information about the answer, and a text-only model stays at chance (`Task.chance`).
Quick to learn: `color`, `shape`, `count` (one look at one image). Harder: binding
(`color_of`, `count_color`), reading (`digit`, `word`), reading bound to the question's words
(`word_under`: "what is written under the red square?", where local text interaction should
matter), two images (`compare`) and frame sequences (`video_color`, `video_motion`), which need
information carried across windows.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from casa_adapter.data.demo_render import (
    COLORS,
    SHAPES,
    WORDS,
    Shape,
    background,
    draw_labelled_squares,
    draw_shapes,
    draw_text,
    scatter,
)

COLOR_NAMES = tuple(COLORS)
FRAME_TIMES = [0.0, 0.5, 1.0]


@dataclass
class Item:
    """A drawn question: images (or frames), the user text with `<image>`/`<video>`, extra data."""

    images: list[Image.Image]
    question: str
    timestamps: list[float] | None = None
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Task:
    """A question type: its answers (balanced), chance accuracy, and the generator."""

    answers: tuple[str, ...]
    make: Callable[[random.Random, str, int], Item]
    chance: float


def _pick(rng: random.Random, options: list[str]) -> str:
    return rng.choice(options)


def color(rng: random.Random, answer: str, size: int) -> Item:
    shapes = scatter(rng, size, [(rng.choice(SHAPES), answer)])
    q = _pick(rng, ["What colour is the shape?", "What is the colour of the shape?", "Which colour is the shape?"])
    return Item([draw_shapes(rng, size, shapes)], f"<image>\n{q}")


def shape(rng: random.Random, answer: str, size: int) -> Item:
    shapes = scatter(rng, size, [(answer, rng.choice(COLOR_NAMES))])
    q = _pick(rng, ["What shape is this?", "Which shape is shown?", "What is the shape?"])
    return Item([draw_shapes(rng, size, shapes)], f"<image>\n{q}")


def count(rng: random.Random, answer: str, size: int) -> Item:
    specs = [(rng.choice(SHAPES), rng.choice(COLOR_NAMES)) for _ in range(int(answer))]
    q = _pick(rng, ["How many shapes are there?", "How many shapes do you see?", "Count the shapes."])
    words = ["one", "two", "three", "four"]
    return Item([draw_shapes(rng, size, scatter(rng, size, specs))], f"<image>\n{q}", aliases=[words[int(answer) - 1]])


def count_color(rng: random.Random, answer: str, size: int) -> Item:
    asked, n = rng.choice(COLOR_NAMES), int(answer)
    others = [c for c in COLOR_NAMES if c != asked]
    specs = [(rng.choice(SHAPES), asked) for _ in range(n)]
    specs += [(rng.choice(SHAPES), rng.choice(others)) for _ in range(rng.randint(max(0, 2 - n), 5 - n))]
    rng.shuffle(specs)
    return Item([draw_shapes(rng, size, scatter(rng, size, specs))], f"<image>\nHow many {asked} shapes are there?")


def color_of(rng: random.Random, answer: str, size: int) -> Item:
    kinds = rng.sample(SHAPES, rng.randint(2, 3))
    colors = [answer, *rng.sample([c for c in COLOR_NAMES if c != answer], len(kinds) - 1)]
    shapes = scatter(rng, size, list(zip(kinds, colors)))
    return Item([draw_shapes(rng, size, shapes)], f"<image>\nWhat colour is the {kinds[0]}?")


def position(rng: random.Random, answer: str, size: int) -> Item:
    r = size * rng.uniform(6, 10) / 64
    low, high = r + 1, size / 3 - 1
    a, b = rng.uniform(low, max(low, high)), rng.uniform(r + 1, size - r - 1)
    a = a if answer in ("left", "top") else size - a
    horizontal = answer in ("left", "right")
    x, y = (a, b) if horizontal else (b, a)
    image = draw_shapes(rng, size, [Shape(rng.choice(SHAPES), rng.choice(COLOR_NAMES), x, y, r)])
    q = "Is the shape on the left or the right?" if horizontal else "Is the shape at the top or the bottom?"
    return Item([image], f"<image>\n{q}")


def digit(rng: random.Random, answer: str, size: int) -> Item:
    q = _pick(rng, ["What digit is shown?", "Which digit is written?", "Read the digit."])
    return Item([draw_text(rng, size, answer)], f"<image>\n{q}")


def word(rng: random.Random, answer: str, size: int) -> Item:
    q = _pick(rng, ["What word is written?", "Read the word.", "Which word is shown?"])
    return Item([draw_text(rng, size, answer)], f"<image>\n{q}")


def word_under(rng: random.Random, answer: str, size: int) -> Item:
    """Two squares of different colours side by side, a word written under each; the question names one colour,
    so the answer needs the question's word and the image's text read together."""
    asked, other = rng.sample(COLOR_NAMES, 2)
    distractor = rng.choice([w for w in WORDS if w != answer])
    left_asked = rng.random() < 0.5
    cells = [(asked, answer), (other, distractor)] if left_asked else [(other, distractor), (asked, answer)]
    image = draw_labelled_squares(rng, size, cells)
    q = _pick(rng, ["What is written under the {} square?", "Which word is under the {} square?"]).format(asked)
    return Item([image], f"<image>\n{q}")


def _circles_image(rng: random.Random, size: int, n: int) -> Image.Image:
    specs = [("circle", rng.choice(COLOR_NAMES)) for _ in range(n)]
    specs += [(rng.choice(SHAPES[1:]), rng.choice(COLOR_NAMES)) for _ in range(rng.randint(0, 5 - n))]
    rng.shuffle(specs)
    return draw_shapes(rng, size, scatter(rng, size, specs))


def compare(rng: random.Random, answer: str, size: int) -> Item:
    more, fewer = sorted(rng.sample(range(1, 5), 2), reverse=True)
    counts = (more, fewer) if answer == "first" else (fewer, more)
    images = [_circles_image(rng, size, n) for n in counts]
    return Item(images, "Image 1: <image>\nImage 2: <image>\nWhich image has more circles, first or second?")


def video_color(rng: random.Random, answer: str, size: int) -> Item:
    colors = [*rng.sample([c for c in COLOR_NAMES if c != answer], len(FRAME_TIMES) - 1), answer]
    kind, r = rng.choice(SHAPES), radius_mid(size)
    x, y = rng.uniform(20, 44) * size / 64, rng.uniform(20, 44) * size / 64
    bg = background(rng)
    frames = [draw_shapes(rng, size, [Shape(kind, c, x, y, r)], bg) for c in colors]
    return Item(frames, "<video>\nWhat colour is the shape in the last frame?", timestamps=list(FRAME_TIMES))


def video_motion(rng: random.Random, answer: str, size: int) -> Item:
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[answer]
    step, r = size / 5, radius_mid(size)
    x0 = size / 2 - dx * step + rng.uniform(-3, 3) * size / 64
    y0 = size / 2 - dy * step + rng.uniform(-3, 3) * size / 64
    kind, c, bg = rng.choice(SHAPES), rng.choice(COLOR_NAMES), background(rng)
    frames = [draw_shapes(rng, size, [Shape(kind, c, x0 + dx * step * t, y0 + dy * step * t, r)], bg) for t in range(3)]
    return Item(frames, "<video>\nWhich way does the shape move?", timestamps=list(FRAME_TIMES))


def radius_mid(size: int) -> float:
    return 8.0 * size / 64


TASKS: dict[str, Task] = {
    "color": Task(COLOR_NAMES, color, 1 / 6),
    "shape": Task(SHAPES, shape, 1 / 3),
    "count": Task(("1", "2", "3", "4"), count, 1 / 4),
    "count_color": Task(("0", "1", "2", "3"), count_color, 1 / 4),
    "color_of": Task(COLOR_NAMES, color_of, 1 / 6),
    "position": Task(("left", "right", "top", "bottom"), position, 1 / 2),
    "digit": Task(tuple("0123456789"), digit, 1 / 10),
    "word": Task(WORDS, word, 1 / len(WORDS)),
    "compare": Task(("first", "second"), compare, 1 / 2),
    "word_under": Task(WORDS, word_under, 1 / len(WORDS)),
    "video_color": Task(COLOR_NAMES, video_color, 1 / 6),
    "video_motion": Task(("left", "right", "up", "down"), video_motion, 1 / 4),
}
"""Question types by name (`qtype` in each sample's json)."""
