"""Whisper's front end: 16 kHz audio -> log-mel frames, as openai/whisper and transformers'
`WhisperFeatureExtractor` compute them: a 400-sample Hann STFT every 160 samples (centered, reflect
padded; the last frame dropped), power through a Slaney mel bank (80 or 128 bins, 0-8 kHz), log10
clamped at 1e-10 and at the input's max - 8, then (x + 4) / 4. 30 s of audio are 3,000 frames.

Batched and in torch: a [B, N] batch is one STFT and one matrix product.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

SAMPLE_RATE = 16000
N_FFT, HOP_LENGTH = 400, 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480,000 samples in a window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3,000 frames in a window
FRAME_SECONDS = HOP_LENGTH / SAMPLE_RATE  # 0.01 s
FRAMES_PER_TOKEN = 2  # mel frames per encoder position (the stem's stride 2), and per timestamp step
TOKEN_SECONDS = FRAMES_PER_TOKEN * FRAME_SECONDS  # 0.02 s: one encoder position, a timestamp's step


@lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> Tensor:
    """[n_mels, N_FFT // 2 + 1]: Slaney-scale, Slaney-normalised triangles from 0 to 8 kHz (librosa's,
    through transformers' `mel_filter_bank`)."""
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(np.asarray(bank, dtype=np.float32)).T.contiguous()


def pad_or_trim(audio: Tensor, length: int = N_SAMPLES) -> Tensor:
    """[..., N] -> [..., length]: zeros appended (silence) or the end cut."""
    n = audio.shape[-1]
    if n >= length:
        return audio[..., :length]
    return torch.nn.functional.pad(audio, (0, length - n))


def log_mel(audio: Tensor | np.ndarray, n_mels: int = 80, padding: int = 0) -> Tensor:
    """16 kHz samples [N] or [B, N] -> log-mel frames [B, n_mels, (N + padding) // 160]. `padding`
    zeros are appended first (openai's transcribe appends 30 s so the last window is complete); the
    max - 8 clamp reads each row's own maximum."""
    x = torch.as_tensor(audio, dtype=torch.float32)
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2 or x.shape[-1] == 0:
        raise ValueError(f"audio must be samples [N] or [batch, N] with N > 0, got shape {tuple(x.shape)}")
    if padding:
        x = torch.nn.functional.pad(x, (0, padding))
    window = torch.hann_window(N_FFT, device=x.device)
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = stft[..., :-1].abs() ** 2  # [B, 201, frames]
    mel = mel_filters(n_mels).to(x.device) @ power  # [B, n_mels, frames]
    log = mel.clamp(min=1e-10).log10()
    log = torch.maximum(log, log.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (log + 4.0) / 4.0


def window_features(audio: Tensor | np.ndarray, n_mels: int = 80) -> Tensor:
    """`WhisperFeatureExtractor`'s features: each row padded or trimmed to 30 s -> [B, n_mels, 3000]."""
    x = torch.as_tensor(audio, dtype=torch.float32)
    return log_mel(pad_or_trim(x if x.dim() == 2 else x[None]), n_mels)
