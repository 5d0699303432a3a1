"""The image side of vision-language models: `VisionConfig`, the tower (transformers' CLIP / SigLIP),
token selection and the projector. The model that joins them to a text model is
`encore.model.vlm.VisionLanguageModel` (also `encore.VisionLanguageModel`)."""

from encore.vision.config import VisionConfig
from encore.vision.tower import ImageEncoder, build_tower, preprocess, select

__all__ = ["ImageEncoder", "VisionConfig", "build_tower", "preprocess", "select"]
