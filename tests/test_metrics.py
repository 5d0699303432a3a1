"""Metrics against values worked out by hand (all on a 0-100 scale)."""

import math

import pytest

from encore.eval.metrics import bleu, compute_metrics, normalize_answer, rouge_l, squad_scores


def test_squad_normalization():
    assert normalize_answer("  The Cat, sat!  ") == "cat sat"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theater") == "theater"  # articles only as whole words


def test_squad_f1_and_exact_by_hand():
    # "the cat sat" -> [cat, sat]; "a cat sat down" -> [cat, sat, down]; 2 tokens in common:
    # precision 2/2, recall 2/3, F1 = 2 * 1 * 2/3 / (1 + 2/3) = 0.8; not an exact match
    s = squad_scores(["the cat sat"], ["a cat sat down"])
    assert s["f1"] == pytest.approx(80.0)
    assert s["exact_match"] == 0.0
    # exact after normalisation (case, punctuation, article)
    assert squad_scores(["The Eiffel Tower."], ["eiffel tower"])["exact_match"] == 100.0


def test_squad_no_answer_and_splits():
    predictions = ["unanswerable", "Unanswerable.", "Paris", "in paris", "unanswerable"]
    references = ["unanswerable", "the Louvre", "Paris", "Paris", "unanswerable"]
    s = squad_scores(predictions, references)
    # per question (EM, F1): (1, 1) no-answer right; (0, 0) abstained on an answerable one;
    # (1, 1); (0, 2/3: "in paris" vs "paris": P 1/2, R 1, F1 2/3); (1, 1) no-answer right
    assert s["total"] == 5
    assert s["exact_match"] == pytest.approx(100 * 3 / 5)
    assert s["f1"] == pytest.approx(100 * (1 + 0 + 1 + 2 / 3 + 1) / 5)
    assert (s["has_ans_total"], s["no_ans_total"]) == (3, 2)
    assert s["has_ans_exact_match"] == pytest.approx(100 / 3)
    assert s["has_ans_f1"] == pytest.approx(100 * (0 + 1 + 2 / 3) / 3)
    assert s["no_ans_exact_match"] == s["no_ans_f1"] == 100.0
    # answering a no-answer question scores 0 in both
    assert squad_scores(["Paris"], ["unanswerable"])["f1"] == 0.0
    # only answerable questions: no no_ans_* keys, as the official script
    assert not any(k.startswith("no_ans") for k in squad_scores(["x"], ["x"]))


def test_squad_multiple_gold_answers_take_the_best():
    s = squad_scores(["Denver Broncos"], [["Broncos", "Denver Broncos", "the Broncos"]])
    assert s["exact_match"] == 100.0
    assert squad_scores(["x"], [[]])["no_ans_total"] == 1  # an empty answer list is a no-answer question


def test_rouge_l_by_hand():
    # LCS("the cat sat on the mat", "the cat lay on the mat") = "the cat on the mat" = 5 of 6 tokens
    assert rouge_l(["the cat lay on the mat"], ["the cat sat on the mat"]) == pytest.approx(100 * 5 / 6)
    # reference 4 tokens, prediction 6, LCS "the gunman" = 2: P 2/6, R 2/4, F = 0.4
    pred, ref = "the gunman was killed by police", "police killed the gunman"
    assert rouge_l([pred], [ref]) == pytest.approx(40.0)
    # the mean over examples: (100 + 0) / 2
    assert rouge_l(["a b", "c"], ["a b", "d"]) == pytest.approx(50.0)


def test_bleu_by_hand():
    assert bleu(["the cat sat on the mat", "a b c d e"], ["the cat sat on the mat", "a b c d e"]) == pytest.approx(100)
    # a 6-token prefix of a 7-token reference: every n-gram precision is 1, so BLEU is the brevity
    # penalty exp(1 - 7/6)
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat today"]) == pytest.approx(
        100 * math.exp(1 - 7 / 6), abs=1e-6
    )
    assert bleu(["completely different words here"], ["the cat sat on the mat"]) < 1.0


@pytest.mark.parametrize("fn", [rouge_l, bleu, squad_scores])
def test_length_mismatch_names_both_lengths(fn):
    with pytest.raises(ValueError, match="2 predictions but 3 references"):
        fn(["a", "b"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="no predictions"):
        fn([], [])


def test_compute_metrics_per_task():
    preds, refs = ["the cat sat on the mat"], ["the cat sat on the mat"]
    assert set(compute_metrics("squad_v2", ["unanswerable"], ["unanswerable"])) == {
        "exact_match", "f1", "total", "no_ans_exact_match", "no_ans_f1", "no_ans_total", "rougeL"
    }  # fmt: skip
    assert set(compute_metrics("synthqa", preds, refs)) >= {"exact_match", "f1", "has_ans_f1", "rougeL"}
    for task in ("code2doc", "code_x_glue_ct", "code_x_glue_ct_code_to_text"):
        m = compute_metrics(task, preds, refs)
        assert set(m) == {"bleu", "rougeL"} and m["bleu"] == pytest.approx(100) and m["rougeL"] == 100.0
    assert compute_metrics("xsum", preds, refs) == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    m = compute_metrics("my_pairs", ["Hello, World", "foo"], ["hello world", "bar"])  # e.g. a file's stem
    assert m == pytest.approx({"rougeL": 50.0, "exact_match": 50.0})
