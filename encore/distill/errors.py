"""Errors of the distillation package (ValueErrors: the CLI prints them as one line)."""

from __future__ import annotations


class DistillError(ValueError):
    """Distillation cannot proceed as asked; the message says what is wrong and where."""


class TokenizerMismatchError(DistillError):
    """Teacher and student do not share a tokenizer."""
