"""Vision-language (in progress, issue #15): image towers, token selection, the projector.
`VisionLanguageModel` over both architectures is the next step (docs/NOTES.md)."""

from encore.vision.config import VisionConfig
from encore.vision.tower import ImageEncoder, build_tower, preprocess, select

__all__ = ["ImageEncoder", "VisionConfig", "build_tower", "preprocess", "select"]
