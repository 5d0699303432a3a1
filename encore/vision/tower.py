"""Pixels -> `d_model` image tokens: the tower (transformers' CLIP / SigLIP vision model), token
selection, and the projector (LLaVA's MLP, or Gemma 3's pooling one that T5Gemma 2 uses).

    encoder = ImageEncoder(VisionConfig.preset("vit-tiny"), d_model=256, image_keep=0.33, selection="variance")
    tokens = encoder(pixel_values)                      # [B, k, d_model], k = config.kept(0.33)

Selection happens on the tower's output features, *before* the projector:
- `variance` (the paper's method) keeps the k tokens whose features vary most across channels:
  per token, the variance over the tower's hidden channels of its last hidden state. Before the
  projector because the tower's features are the image's own (frozen by default, so the ranking
  is stable while the projector and the language model train) and the projector then runs on the
  kept tokens only.
- `uniform` keeps a strided subset (the baseline any method must beat).
- `learned` scores each token with a linear layer trained with the task and keeps the top k,
  scaled by sigmoid(score) so the scorer receives gradients (learned token weighting).
Kept tokens stay in their original (raster) order.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from encore.vision.config import SELECTIONS, VisionConfig


def build_tower(config: VisionConfig) -> nn.Module:
    """The tower: pretrained from `config.tower` when given, else randomly initialised (offline)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    config.validate()
    cls, config_cls = (
        (CLIPVisionModel, CLIPVisionConfig) if config.kind == "clip" else (SiglipVisionModel, SiglipVisionConfig)
    )
    if config.tower is not None:
        return cls.from_pretrained(config.tower)
    hf = config_cls(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        **config.tower_options,
    )
    return cls(hf)


def select(features: Tensor, k: int, selection: str, scorer: nn.Module | None = None) -> Tensor:
    """Keep `k` of the N tokens of `features` [B, N, H] -> [B, k, H], in their original order."""
    B, N, _ = features.shape
    if k >= N:
        return features
    if selection == "uniform":
        index = torch.linspace(0, N - 1, k, device=features.device).round().long().expand(B, k)
        return features.gather(1, index[..., None].expand(-1, -1, features.shape[-1]))
    if selection == "variance":
        scores = features.float().var(dim=-1)  # [B, N]
    elif selection == "learned":
        scores = scorer(features).squeeze(-1).float()  # [B, N]
    else:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    index = scores.topk(k, dim=1).indices.sort(dim=1).values  # [B, k], raster order
    kept = features.gather(1, index[..., None].expand(-1, -1, features.shape[-1]))
    if selection == "learned":
        kept = kept * torch.sigmoid(scores.gather(1, index))[..., None].to(kept.dtype)
    return kept


class PoolProjector(nn.Module):
    """Gemma 3's projector (T5Gemma 2's): the tower's patch grid average-pooled to `pooled_tokens`
    (a square), a (1 + w) RMSNorm, one linear map into the text model's width."""

    def __init__(self, config: VisionConfig, d_model: int):
        from encore.model.layers import OffsetRMSNorm  # (here: encore.model imports this module)

        super().__init__()
        self.side = config.image_size // config.patch_size
        self.pool = nn.AvgPool2d(self.side // math.isqrt(config.pooled_tokens))
        self.norm = OffsetRMSNorm(config.hidden_size, config.norm_eps)
        self.proj = nn.Linear(config.hidden_size, d_model, bias=False)

    def forward(self, features: Tensor) -> Tensor:
        B, N, H = features.shape  # N = side * side patches, raster order
        grid = features.transpose(1, 2).reshape(B, H, self.side, self.side)
        pooled = self.pool(grid).flatten(2).transpose(1, 2)  # [B, k, H]
        return self.proj(self.norm(pooled))


class ImageEncoder(nn.Module):
    """Tower -> selection -> 2-layer MLP projector (LLaVA-1.5's) into the text model's `d_model`; or,
    with `projector="pool"`, tower -> Gemma 3's pooling projector (every image keeps `pooled_tokens`)."""

    def __init__(self, config: VisionConfig, d_model: int, image_keep: float = 1.0, selection: str = "variance"):
        super().__init__()
        if not 0 < image_keep <= 1:
            raise ValueError(f"image_keep must be in (0, 1], got {image_keep!r}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if config.projector == "pool" and image_keep != 1:
            raise ValueError(f"image_keep {image_keep}: a pooling projector keeps every pooled token (image_keep 1)")
        self.tower = build_tower(config)
        if config.tower is not None:  # the pretrained tower's own shape is the truth
            hf = self.tower.config
            config = dataclasses.replace(
                config,
                hidden_size=hf.hidden_size,
                intermediate_size=hf.intermediate_size,
                num_layers=hf.num_hidden_layers,
                num_heads=hf.num_attention_heads,
                image_size=hf.image_size,
                patch_size=hf.patch_size,
            )
        self.config, self.image_keep, self.selection = config, image_keep, selection
        if config.freeze_tower:
            self.tower.requires_grad_(False)
        self.scorer = nn.Linear(config.hidden_size, 1) if selection == "learned" else None
        if config.projector == "pool":
            self.projector = PoolProjector(config, d_model)
        else:
            hidden = config.projector_hidden or d_model
            self.projector = nn.Sequential(nn.Linear(config.hidden_size, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    @property
    def tokens(self) -> int:
        """Image tokens per image after selection."""
        return self.config.kept(self.image_keep)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """[B, 3, image_size, image_size] -> [B, k, d_model]."""
        expected = (3, self.config.image_size, self.config.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must be [B, {', '.join(map(str, expected))}], got {tuple(pixel_values.shape)}"
            )
        features = self.tower(pixel_values=pixel_values).last_hidden_state  # [B, N, H]
        if self.config.projector == "pool":  # pools the whole grid: nothing is selected first
            return self.projector(features)
        return self.projector(select(features, self.tokens, self.selection, self.scorer))


def preprocess(images: list, config: VisionConfig) -> Tensor:
    """PIL images -> normalised pixel values [B, 3, S, S] as the tower's processor makes them
    (RGB, resized to S x S with `config.resample`, scaled to [0, 1], normalised with the tower's mean /
    std)."""
    from PIL import Image

    mean, std = (torch.tensor(v).view(3, 1, 1) for v in config.mean_std)
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[config.resample]
    out = []
    for image in images:
        rgb = image.convert("RGB").resize((config.image_size, config.image_size), resample)
        pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        pixels = pixels.view(config.image_size, config.image_size, 3).permute(2, 0, 1).float() / 255
        out.append((pixels - mean) / std)
    return torch.stack(out)
