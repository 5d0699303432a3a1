"""Task metrics: ROUGE (XSum), SQuAD v2 exact match / F1, BLEU (code-to-text).

Every score is on a 0-100 scale, as the official SQuAD script and sacrebleu report theirs, so
ROUGE is the mean F-measure times 100. `compute_metrics` picks the metrics for a task name.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from encore.lazy import require

NO_ANSWER = "unanswerable"  # what a SQuAD v2 target says, and a model should say, for a question with no answer

PUNCTUATION = frozenset(string.punctuation)
Reference = str | Sequence[str]  # one gold answer, or several (SQuAD lists alternatives; [] means no answer)


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score (0 predictions, 0 references)")


def _rouge(predictions: Sequence[str], references: Sequence[str], kinds: Sequence[str]) -> dict[str, float]:
    RougeScorer = require("rouge_score.rouge_scorer", "eval").RougeScorer

    _check_lengths(predictions, references)
    # Porter stemming, as in the ROUGE numbers usually reported for XSum
    scorer = RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # (target, prediction)
        for kind in kinds:
            totals[kind] += scores[kind].fmeasure
    return {kind: 100.0 * total / len(predictions) for kind, total in totals.items()}


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure (rouge_score, with stemming), 0-100."""
    return _rouge(predictions, references, ["rougeL"])["rougeL"]


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 from sacrebleu (13a tokenisation, one reference per prediction), 0-100."""
    sacrebleu = require("sacrebleu", "eval")

    _check_lengths(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


# --- SQuAD v2, following the official evaluation script -------------------------------------------


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace (official SQuAD)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _answer_tokens(text: str) -> list[str]:
    """Normalised tokens; the no-answer literal counts as the empty answer, as '' does officially."""
    tokens = normalize_answer(text).split()
    return [] if tokens == [NO_ANSWER] else tokens


def _exact(gold: str, pred: str) -> float:
    return float(_answer_tokens(gold) == _answer_tokens(pred))


def _f1(gold: str, pred: str) -> float:
    gold_toks, pred_toks = _answer_tokens(gold), _answer_tokens(pred)
    if not gold_toks or not pred_toks:  # a no-answer on either side: right only if both are
        return float(gold_toks == pred_toks)
    same = sum((Counter(gold_toks) & Counter(pred_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _golds(reference: Reference) -> list[str]:
    golds = [reference] if isinstance(reference, str) else [g for g in reference if _answer_tokens(g)]
    return golds or [NO_ANSWER]


def squad_scores(predictions: list[str], references: list[Reference]) -> dict[str, float]:
    """SQuAD v2 exact match and token F1, 0-100, each the best over a question's gold answers.

    A reference is one answer or a list of answers; "unanswerable" (any case/punctuation) or an
    empty list marks a question without an answer, and the prediction "unanswerable" scores 1 on it.
    Returns exact_match, f1 and total, plus has_ans_* / no_ans_* for each kind of question present
    (as the official script, which leaves out a kind with no questions)."""
    _check_lengths(predictions, references)
    exact, f1, has_answer = [], [], []
    for pred, ref in zip(predictions, references):
        golds = _golds(ref)
        exact.append(max(_exact(g, pred) for g in golds))
        f1.append(max(_f1(g, pred) for g in golds))
        has_answer.append(bool(_answer_tokens(golds[0])))

    def summary(keep: list[bool], prefix: str) -> dict[str, float]:
        n = sum(keep)
        if n == 0:
            return {}
        return {
            f"{prefix}exact_match": 100.0 * sum(e for e, k in zip(exact, keep) if k) / n,
            f"{prefix}f1": 100.0 * sum(f for f, k in zip(f1, keep) if k) / n,
            f"{prefix}total": n,
        }

    return {
        **summary([True] * len(exact), ""),
        **summary(has_answer, "has_ans_"),
        **summary([not h for h in has_answer], "no_ans_"),
    }


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference after SQuAD normalisation, 0-100."""
    _check_lengths(predictions, references)
    return (
        100.0
        * sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
        / len(predictions)
    )


def vqa_accuracy(
    predictions: list[str], references: list[str], question_types: list[str] | None = None
) -> dict[str, float]:
    """Exact-match accuracy (SQuAD normalisation), overall and per question type when given: {"accuracy",
    "accuracy_<type>", ...}, 0-100."""
    scores = {"accuracy": exact_match(predictions, references)}
    for kind in sorted(set(question_types or ())):
        pairs = [(p, r) for p, r, t in zip(predictions, references, question_types) if t == kind]
        scores[f"accuracy_{kind}"] = exact_match(*map(list, zip(*pairs)))
    return scores


def compute_metrics(task_name: str, predictions: list[str], references: list) -> dict[str, float]:
    """The metrics for a task, by name: squad_v2 / synthqa -> SQuAD scores + rougeL; code2doc /
    code_x_glue_ct* -> bleu + rougeL; xsum -> rouge1/2/L; anything else (e.g. a file's stem) ->
    rougeL + exact_match. All 0-100."""
    task = task_name.lower()
    if task in ("squad_v2", "synthqa"):
        firsts = [r if isinstance(r, str) else _golds(r)[0] for r in references]
        return {**squad_scores(predictions, references), "rougeL": rouge_l(predictions, firsts)}
    if task == "code2doc" or task.startswith("code_x_glue_ct"):
        return {"bleu": bleu(predictions, references), "rougeL": rouge_l(predictions, references)}
    if task == "xsum":
        return _rouge(predictions, references, ["rouge1", "rouge2", "rougeL"])
    return {"rougeL": rouge_l(predictions, references), "exact_match": exact_match(predictions, references)}


# --- speech ------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    """Lowercased words without punctuation (hyphens split words: "round-fark" is two)."""
    text = "".join(" " if ch in PUNCTUATION else ch for ch in text.lower())
    return text.split()


def word_error_rate(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Word error rate in percent: (substitutions + deletions + insertions) / reference words, over
    the whole corpus, on lowercased words without punctuation."""
    _check_lengths(predictions, references)
    errors = words = 0
    for prediction, reference in zip(predictions, references):
        hyp, ref = _words(prediction), _words(reference)
        row = list(range(len(hyp) + 1))  # edit distance, one row at a time
        for i, r in enumerate(ref, 1):
            prev, row[0] = row[0], i
            for j, h in enumerate(hyp, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
        errors += row[-1]
        words += len(ref)
    return 100.0 * errors / max(words, 1)
