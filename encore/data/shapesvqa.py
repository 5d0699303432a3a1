"""shapesvqa: seeded, offline visual question answering over rendered scenes of shapes.

Each example is a scene (3-6 shapes: circle / square / triangle, six colours, small or large, at
non-overlapping places on a plain canvas), rendered with Pillow, and one question whose answer needs the
image:

    colour    What colour is the triangle?                -> red | green | blue | yellow | purple | orange
    count     How many blue shapes are there?             -> 0 | 1 | 2 | 3 | 4
    exists    Is there a green circle?                    -> yes | no
    relation  Is the red square left or right of the blue circle?   -> left | right
    size      Is the yellow triangle small or large?      -> small | large

Balance by construction: the question type is drawn uniformly, then the *answer* is drawn uniformly
among that type's answers, and the scene is built around it (with distractors: other shapes of the
asked colour, other colours of the asked shape, near misses for "no"). So no answer can be guessed
from the question, and every answer's share of its type is its uniform share up to sampling noise
(tests/test_shapesvqa.py bounds it at 15% over uniform, relative).

Determinism and disjoint splits: example i of split s is drawn from random.Random(sha256(f"{seed}/{s}/{i}"))
(as `encore.data.synthqa`), so any example can be made alone, a split is the same on every machine,
and splits share no scene. Sizes (default): train 10,000, validation 1,000, test 1,000.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SPLITS = {"train": 10_000, "validation": 1_000, "test": 1_000}
SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
SIZES = {"small": 0.06, "large": 0.10}  # radius, fraction of the side: inside a cell (0.25) with any jitter
ANSWERS = {
    "colour": tuple(COLOURS),
    "count": ("0", "1", "2", "3", "4"),
    "exists": ("yes", "no"),
    "relation": ("left", "right"),
    "size": ("small", "large"),
}
MIN_SHAPES, MAX_SHAPES = 3, 6  # >= 3: ~1e8 possible scenes, so splits never draw the same one
GRID = 4  # shapes sit in distinct cells of a GRID x GRID layout (jittered): never overlapping


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    cell: tuple[int, int]  # (column, row)
    jitter: tuple[float, float]  # offset inside the cell, fraction of a cell

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    def centre(self) -> tuple[float, float]:
        """(x, y) in [0, 1]."""
        return ((self.cell[0] + 0.5 + self.jitter[0]) / GRID, (self.cell[1] + 0.5 + self.jitter[1]) / GRID)


@dataclass(frozen=True)
class Example:
    shapes: tuple[Shape, ...]
    question: str
    answer: str
    question_type: str

    def image(self, size: int = 64) -> Any:
        """The scene as an RGB PIL image of `size` x `size` pixels."""
        from PIL import Image, ImageDraw

        image = Image.new("RGB", (size, size), (245, 245, 240))
        draw = ImageDraw.Draw(image)
        for s in self.shapes:
            x, y = (c * size for c in s.centre())
            r = SIZES[s.size] * size
            box = (x - r, y - r, x + r, y + r)
            if s.kind == "circle":
                draw.ellipse(box, fill=COLOURS[s.colour])
            elif s.kind == "square":
                draw.rectangle(box, fill=COLOURS[s.colour])
            else:
                draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=COLOURS[s.colour])
        return image


def _seed(seed: int, split: str, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()[:8], "big")


class _Scene:
    """Shapes placed in distinct cells, drawn from one rng."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.cells = [(c, r) for c in range(GRID) for r in range(GRID)]
        rng.shuffle(self.cells)
        self.shapes: list[Shape] = []

    def add(self, kind: str, colour: str, size: str | None = None, cell: tuple[int, int] | None = None) -> Shape:
        cell = cell or self.cells.pop()
        if cell in self.cells:
            self.cells.remove(cell)
        jitter = (self.rng.uniform(-0.08, 0.08), self.rng.uniform(-0.08, 0.08))
        shape = Shape(kind, colour, size or self.rng.choice(tuple(SIZES)), cell, jitter)
        self.shapes.append(shape)
        return shape

    def distractors(self, n: int, allowed) -> None:
        """`n` more shapes (at least MIN_SHAPES in all) whose (kind, colour) pass `allowed`."""
        for _ in range(max(n, MIN_SHAPES - len(self.shapes))):
            options = [(k, c) for k in SHAPES for c in COLOURS if allowed(k, c)]
            if not options or len(self.shapes) >= MAX_SHAPES:
                return
            self.add(*self.rng.choice(options))


def generate_example(split: str, index: int, seed: int = 0) -> Example:
    """Example `index` of `split`: the question type and answer drawn uniformly, the scene built
    around them."""
    rng = random.Random(_seed(seed, split, index))
    qtype = rng.choice(tuple(ANSWERS))
    answer = rng.choice(ANSWERS[qtype])
    scene = _Scene(rng)
    extra = rng.randint(0, 3)
    if qtype == "colour":
        kind = rng.choice(SHAPES)
        scene.add(kind, answer)
        scene.distractors(extra, lambda k, c: k != kind)  # the asked shape stays unique
        question = f"What colour is the {kind}?"
    elif qtype == "count":
        colour = rng.choice(tuple(COLOURS))
        for _ in range(int(answer)):
            scene.add(rng.choice(SHAPES), colour)
        scene.distractors(max(extra, 1 if answer == "0" else 0), lambda k, c: c != colour)
        question = f"How many {colour} shapes are there?"
    elif qtype == "exists":
        kind, colour = rng.choice(SHAPES), rng.choice(tuple(COLOURS))
        if answer == "yes":
            scene.add(kind, colour)
        # near misses either way: the asked colour on other shapes, the asked shape in other colours
        scene.distractors(max(extra, 1), lambda k, c: (k == kind) != (c == colour))
        question = f"Is there a {colour} {kind}?"
    elif qtype == "relation":
        (k1, c1), (k2, c2) = rng.sample([(k, c) for k in SHAPES for c in COLOURS], 2)
        cols = rng.sample(range(GRID), 2)
        left, right = min(cols), max(cols)
        a_col, b_col = (left, right) if answer == "left" else (right, left)
        scene.add(k1, c1, cell=(a_col, rng.randrange(GRID)))
        scene.add(k2, c2, cell=(b_col, rng.randrange(GRID)))
        names = {(k1, c1), (k2, c2)}
        scene.distractors(extra, lambda k, c: (k, c) not in names)
        question = f"Is the {c1} {k1} left or right of the {c2} {k2}?"
    else:  # size
        kind, colour = rng.choice(SHAPES), rng.choice(tuple(COLOURS))
        scene.add(kind, colour, size=answer)
        scene.distractors(extra, lambda k, c: (k, c) != (kind, colour))
        question = f"Is the {colour} {kind} small or large?"
    return Example(tuple(scene.shapes), question, answer, qtype)


def load(split: str, size: int | None = None, seed: int = 0, image_size: int = 64) -> Iterator[dict[str, Any]]:
    """Examples of `split` as {"image": PIL image, "source": question, "target": answer, "question_type"}."""
    if split not in SPLITS:
        raise ValueError(f"shapesvqa has splits {sorted(SPLITS)}, not {split!r}")
    n = SPLITS[split] if size is None else size
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"shapesvqa size must be a positive integer, got {n!r}")
    for i in range(n):
        e = generate_example(split, i, seed)
        yield {"image": e.image(image_size), "source": e.question, "target": e.answer, "question_type": e.question_type}
