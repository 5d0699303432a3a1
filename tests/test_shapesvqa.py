"""shapesvqa: every answer is what the scene says, seeded determinism, disjoint splits, balanced answers."""

import hashlib
import re
from collections import Counter

import pytest

from encore.data import shapesvqa
from encore.data.shapesvqa import ANSWERS, generate_example


def answer_from_scene(e: shapesvqa.Example) -> str:
    """The answer read off the scene alone (an independent check of the generator)."""
    shapes = e.shapes
    if m := re.fullmatch(r"What colour is the (\w+)\?", e.question):
        [s] = [s for s in shapes if s.kind == m[1]]
        return s.colour
    if m := re.fullmatch(r"How many (\w+) shapes are there\?", e.question):
        return str(sum(s.colour == m[1] for s in shapes))
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", e.question):
        return "yes" if any((s.colour, s.kind) == (m[1], m[2]) for s in shapes) else "no"
    if m := re.fullmatch(r"Is the (\w+) (\w+) left or right of the (\w+) (\w+)\?", e.question):
        [a] = [s for s in shapes if (s.colour, s.kind) == (m[1], m[2])]
        [b] = [s for s in shapes if (s.colour, s.kind) == (m[3], m[4])]
        return "left" if a.centre()[0] < b.centre()[0] else "right"
    m = re.fullmatch(r"Is the (\w+) (\w+) small or large\?", e.question)
    [s] = [s for s in shapes if (s.colour, s.kind) == (m[1], m[2])]
    return s.size


def test_every_answer_is_what_the_scene_says():
    for i in range(3000):
        e = generate_example("train", i)
        assert answer_from_scene(e) == e.answer, (i, e)
        assert shapesvqa.MIN_SHAPES <= len(e.shapes) <= shapesvqa.MAX_SHAPES
        assert len({s.cell for s in e.shapes}) == len(e.shapes)  # no two shapes overlap


def test_seeded_and_splits_share_no_scene():
    assert generate_example("validation", 7) == generate_example("validation", 7)
    assert generate_example("validation", 7, seed=1) != generate_example("validation", 7)
    first = list(shapesvqa.load("validation", size=3))
    again = list(shapesvqa.load("validation", size=3))
    assert [x["image"].tobytes() for x in first] == [x["image"].tobytes() for x in again]
    digest = lambda split, n: {  # noqa: E731
        hashlib.sha256(generate_example(split, i).image().tobytes()).hexdigest() for i in range(n)
    }
    assert not digest("train", 400) & digest("validation", 400)


def test_answers_are_balanced_within_each_question_type():
    examples = [generate_example("train", i) for i in range(shapesvqa.SPLITS["train"])]
    types = Counter(e.question_type for e in examples)
    assert set(types) == set(ANSWERS) and max(types.values()) < 1.15 * len(examples) / len(ANSWERS)
    for qtype, answers in ANSWERS.items():
        counts = Counter(e.answer for e in examples if e.question_type == qtype)
        uniform = types[qtype] / len(answers)
        assert set(counts) == set(answers) and max(counts.values()) <= 1.15 * uniform, (qtype, counts)
    assert len({e.question for e in examples}) > 300  # varied questions


def test_images_render_and_bad_arguments_are_named():
    [x] = list(shapesvqa.load("test", size=1, image_size=48))
    assert x["image"].size == (48, 48) and x["image"].mode == "RGB"
    assert len(set(x["image"].getdata())) > 1  # something drawn on the canvas
    assert {"source", "target", "question_type"} <= set(x)
    with pytest.raises(ValueError, match="splits"):
        next(shapesvqa.load("dev"))
    with pytest.raises(ValueError, match="size"):
        next(shapesvqa.load("train", size=0))
