"""encore: encoder-decoder small language models (Return of the Encoder, arXiv 2501.16273)."""

from encore.config import ModelConfig
from encore.model import DecoderOnly, EncoderDecoder, load

__version__ = "0.1.0"
__all__ = ["ModelConfig", "EncoderDecoder", "DecoderOnly", "load", "__version__"]
