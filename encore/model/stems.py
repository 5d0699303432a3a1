"""What an encoder reads its input through, one module per `ModelConfig.encoder_input`, chosen when the
model is built: an embedding table for tokens, Whisper's convolution stem for audio."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from encore.config import ModelConfig
from encore.model.inputs import check_ids
from encore.model.layers import make_embedding


class AudioStem(nn.Module):
    """Whisper's stem: log-mel frames [B, M, 2S] -> conv (width 3) -> GELU -> conv (width 3, stride 2)
    -> GELU -> [B, S, D]. 30 s of audio are 3,000 frames: 1,500 encoder positions."""

    def __init__(self, mels: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv1d(mels, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)

    def forward(self, features: Tensor) -> Tensor:
        x = F.gelu(self.conv1(features.to(self.conv1.weight.dtype)))  # [B, D, 2S]
        return F.gelu(self.conv2(x)).transpose(1, 2)  # [B, S, D]


def make_encoder_input(config: ModelConfig) -> nn.Module:
    """The encoder's own input module (`config` is the encoder's): a token table or the audio stem."""
    if config.encoder_input == "audio":
        return AudioStem(config.audio_mels, config.d_model)
    return make_embedding(config)


def check_encoder_input(config: ModelConfig, inputs: Tensor, attention_mask: Tensor | None) -> None:
    """Raise ValueError naming what is wrong with an encoder's input: token ids [B, S] in the vocabulary,
    or log-mel features [B, audio_mels, frames] of a floating dtype."""
    if config.encoder_input == "tokens":
        return check_ids(inputs, attention_mask, config.vocab_size)
    shape = tuple(inputs.shape) if hasattr(inputs, "shape") else type(inputs).__name__
    if not hasattr(inputs, "dtype") or not inputs.dtype.is_floating_point or inputs.dim() != 3:
        raise ValueError(f"input_features must be a float tensor [batch, {config.audio_mels}, frames], got {shape}")
    if inputs.shape[1] != config.audio_mels or inputs.shape[2] < 1:
        raise ValueError(f"input_features has shape {shape}; this model reads [batch, {config.audio_mels}, frames]")
    if attention_mask is not None:
        raise ValueError("an audio encoder takes no attention_mask: windows are padded to 30 s with silence")
