import re
import statistics

import pytest

from encore.data import synthqa
from encore.data.synthqa import UNANSWERABLE, generate_example

N = 1000  # the whole default validation split: a few tenths of a second


@pytest.fixture(scope="module")
def validation():
    return [generate_example("validation", i) for i in range(N)]


def test_deterministic():
    assert list(synthqa.load("test", size=30)) == list(synthqa.load("test", size=30))
    assert generate_example("train", 17) == generate_example("train", 17)
    # pinned: the same on every machine (seeds come from sha256, not hash())
    first = generate_example("validation", 0)
    assert (first.question, first.answer) == ("What honor was given to Talia Whitlock?", "Silver Star")
    # another seed is another dataset
    assert generate_example("validation", 0, seed=1).context != first.context


def test_answers_are_short_spans_of_the_context(validation):
    answerable = [e for e in validation if e.answer != UNANSWERABLE]
    assert answerable and all(e.kind == "answerable" for e in answerable)
    for e in answerable:
        assert e.answer in e.context
        assert 1 <= len(e.answer.split()) <= 5


def test_unanswerable_fraction_and_kinds(validation):
    unanswerable = [e for e in validation if e.answer == UNANSWERABLE]
    assert 0.2 <= len(unanswerable) / N <= 0.4
    kinds = {e.kind for e in unanswerable}
    assert kinds == {"missing_attribute", "absent_entity"}
    for e in unanswerable:
        # the question names an entity: one that is in the context but lacks the attribute, or one that is not
        name = _asked_entity(e)
        assert (name in e.context) == (e.kind == "missing_attribute"), (e.question, e.kind)


def _asked_entity(e) -> str:
    for attrs in synthqa.ATTRS.values():
        for _, questions in attrs.values():
            for q in questions:
                head, _, tail = q.partition("{e}")
                if e.question.startswith(head) and e.question.endswith(tail):
                    return e.question[len(head) : len(e.question) - len(tail)]
    raise AssertionError(f"no template matches {e.question!r}")


def test_long_multi_paragraph_contexts(validation):
    lengths = [len(e.context) for e in validation]
    assert 1000 <= statistics.median(lengths) <= 3000
    assert min(e.context.count("\n\n") for e in validation) >= 3  # at least four paragraphs
    # asymmetric, as the paper's tasks: long input, short output
    assert statistics.median(len(e.source) / len(e.target) for e in validation) > 50


def test_the_question_is_not_a_lookup(validation):
    # a year question: nearly always several distinct years in the context, so the entity has to pick one
    year_questions = [e for e in validation if e.kind == "answerable" and re.fullmatch(r"\d{4}", e.answer)]
    assert len(year_questions) > 50
    several = [len(set(re.findall(r"\b\d{4}\b", e.context))) >= 2 for e in year_questions]
    assert sum(several) / len(several) > 0.9


def test_splits_are_disjoint(validation):
    train = {generate_example("train", i).context for i in range(N)}
    test = {generate_example("test", i).context for i in range(N)}
    val = {e.context for e in validation}
    assert len(val) == N and not (train & val) and not (train & test) and not (val & test)


def test_load_sizes_and_format():
    assert synthqa.SPLITS["validation"] >= 500
    rows = list(synthqa.load("validation"))
    assert len(rows) == synthqa.SPLITS["validation"]
    assert all(set(r) == {"source", "target"} for r in rows)
    assert rows[0]["source"].startswith("question: ") and " context: " in rows[0]["source"]
    assert len(list(synthqa.load("train", size=7))) == 7
    with pytest.raises(ValueError, match="splits: train, validation, test"):
        list(synthqa.load("dev"))
