"""Speech into the encoder: audio files and samples in (`load_audio`), Whisper's log-mel front end
(`log_mel`), and transcription with timestamps (`transcribe`, also `model.transcribe`)."""

from encore.audio.features import SAMPLE_RATE, log_mel, window_features
from encore.audio.io import load_audio
from encore.audio.transcribe import transcribe

__all__ = ["SAMPLE_RATE", "load_audio", "log_mel", "transcribe", "window_features"]
