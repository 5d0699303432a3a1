"""The two architectures by name (`ModelConfig.arch`)."""

from __future__ import annotations

from encore.model.base import LanguageModel
from encore.model.decoder_only import DecoderOnly
from encore.model.encdec import EncoderDecoder

ARCHES: dict[str, type[LanguageModel]] = {"encdec": EncoderDecoder, "deconly": DecoderOnly}


def model_class(arch: str) -> type[LanguageModel]:
    if arch not in ARCHES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHES)}")
    return ARCHES[arch]
