"""encore: encoder-decoder small language models (Return of the Encoder, arXiv 2501.16273)."""

from encore.config import ModelConfig
from encore.infer.engine import Engine, Event
from encore.infer.optimize import deoptimize, optimize
from encore.model import DecoderOnly, EncoderDecoder, load

__version__ = "0.1.0"
__all__ = [
    "ModelConfig",
    "EncoderDecoder",
    "DecoderOnly",
    "load",
    "Engine",
    "Event",
    "optimize",
    "deoptimize",
    "__version__",
]
