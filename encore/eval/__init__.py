"""Evaluation: task metrics (ROUGE, SQuAD EM / F1, BLEU) on generated predictions."""

from encore.eval.metrics import bleu, compute_metrics, exact_match, rouge_l, squad_scores

__all__ = ["bleu", "compute_metrics", "exact_match", "rouge_l", "squad_scores"]
