from encore.model.base import LanguageModel
from encore.model.decoder_only import DecoderOnly
from encore.model.encdec import EncoderDecoder
from encore.model.io import build, load, resolve_model
from encore.model.vlm import VisionLanguageModel

__all__ = ["LanguageModel", "EncoderDecoder", "DecoderOnly", "VisionLanguageModel", "build", "load", "resolve_model"]
