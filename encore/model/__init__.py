from encore.model.base import LanguageModel, load
from encore.model.decoder_only import DecoderOnly
from encore.model.encdec import EncoderDecoder

__all__ = ["LanguageModel", "EncoderDecoder", "DecoderOnly", "load"]
