"""Inference: the generation loop and sampling (`generate`), and text in / text out (`pipeline`)."""

from encore.infer.generate import generate, generate_stream, sample_next

__all__ = ["generate", "generate_stream", "sample_next"]
