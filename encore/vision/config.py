"""`VisionConfig`: the image tower's shape, its preprocessing, and how its tokens are compressed.

Presets: `vit-tiny` (tests and CPU runs: 64 px, 8 px patches, 65 tokens), `clip-vit-l-336` (the shape
of CLIP ViT-L/14-336, LLaVA's tower: 577 tokens, CLS included), `siglip-base` (SigLIP base/16-224:
196 tokens, no CLS). Towers are built with random weights offline; pretrained ones come from
`tower` (a hub id or a directory) when the user has them, or with a checkpoint (T5Gemma 2's SigLIP:
`projector="pool"`, Gemma 3's average pool of the patch grid, `encore.convert.vision`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("clip", "siglip")
SELECTIONS = ("variance", "uniform", "learned")
PROJECTORS = ("mlp", "pool")
RESAMPLES = ("bicubic", "bilinear")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@dataclass
class VisionConfig:
    kind: str = "clip"  # the tower's family: "clip" (CLS + patches) | "siglip" (patches)
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    image_size: int = 64
    patch_size: int = 8
    projector_hidden: int | None = None  # the MLP projector's hidden width; None: the text model's d_model
    tower: str | None = None  # pretrained weights: a hub id or a directory (transformers); None: random init
    freeze_tower: bool = True  # the paper's and LLaVA's default: train the projector (and the LM), not the tower
    # "mlp": LLaVA's 2-layer MLP on each kept token; "pool": Gemma 3's (T5Gemma 2's): the patch grid
    # average-pooled to `pooled_tokens`, a (1 + w) RMSNorm (`norm_eps`), one linear map, no selection
    projector: str = "mlp"
    pooled_tokens: int | None = None
    norm_eps: float = 1e-6
    resample: str = "bicubic"  # how images are resized (Gemma 3's processor: bilinear)
    # more keyword arguments of the transformers vision config (e.g. SigLIP's vision_use_head, hidden_act)
    tower_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> VisionConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown vision preset {name!r}; presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @staticmethod
    def preset_names() -> list[str]:
        return list(PRESETS)

    @classmethod
    def resolve(cls, spec: str, flag: str = "--vision") -> VisionConfig:
        """A preset name or a VisionConfig .json file (what `--vision` takes)."""
        if spec in PRESETS:
            return cls.preset(spec)
        if str(spec).endswith(".json"):
            if not Path(spec).is_file():
                raise FileNotFoundError(f"{flag} {spec}: no such VisionConfig file")
            return cls.load(spec)
        raise ValueError(f"{flag} {spec!r}: neither a preset ({', '.join(PRESETS)}) nor a .json")

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens(self) -> int:
        """Tokens per image the projector receives (CLIP adds its CLS token) or, pooled, puts out."""
        if self.projector == "pool":
            return self.pooled_tokens
        return self.patches + (1 if self.kind == "clip" else 0)

    def kept(self, image_keep: float) -> int:
        """Image tokens kept at `image_keep`: ceil(image_keep * tokens), at least 1."""
        return max(1, math.ceil(image_keep * self.tokens - 1e-9))

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return (CLIP_MEAN, CLIP_STD) if self.kind == "clip" else (SIGLIP_MEAN, SIGLIP_STD)

    def validate(self) -> VisionConfig:
        if self.kind not in KINDS:
            raise ValueError(f"VisionConfig.kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "image_size", "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VisionConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"VisionConfig.hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"VisionConfig.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.projector not in PROJECTORS:
            raise ValueError(f"VisionConfig.projector must be one of {PROJECTORS}, got {self.projector!r}")
        if self.resample not in RESAMPLES:
            raise ValueError(f"VisionConfig.resample must be one of {RESAMPLES}, got {self.resample!r}")
        if self.projector == "pool":
            side, pooled = self.image_size // self.patch_size, self.pooled_tokens
            per_side = math.isqrt(pooled) if isinstance(pooled, int) and pooled > 0 else 0
            if not per_side or per_side * per_side != pooled or side % per_side or self.kind != "siglip":
                raise ValueError(
                    f"VisionConfig.pooled_tokens {pooled!r}: the pool projector needs a SigLIP tower and a square "
                    f"number of tokens whose side divides the {side} x {side} patch grid"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisionConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"VisionConfig has no field(s) {', '.join(unknown)}")
        return cls(**data).validate()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> VisionConfig:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        return cls.from_dict(data)


PRESETS: dict[str, dict[str, Any]] = {
    "vit-tiny": dict(
        kind="clip", hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, image_size=64, patch_size=8
    ),
    "clip-vit-l-336": dict(
        kind="clip",
        hidden_size=1024,
        intermediate_size=4096,
        num_layers=24,
        num_heads=16,
        image_size=336,
        patch_size=14,
    ),
    "siglip-base": dict(
        kind="siglip",
        hidden_size=768,
        intermediate_size=3072,
        num_layers=12,
        num_heads=12,
        image_size=224,
        patch_size=16,
    ),
}
