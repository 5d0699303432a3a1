"""Audio in: any file FFmpeg reads (WAV, FLAC, MP3, OGG, M4A, video soundtracks), decoded by PyAV as
faster-whisper does, downmixed to mono and resampled to 16 kHz float32; a numpy array or tensor is
taken as 16 kHz mono samples as it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from encore.audio.features import SAMPLE_RATE

AudioInput = str | Path | bytes | np.ndarray  # or a torch tensor of samples; bytes: an encoded file


def load_audio(source: AudioInput, sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A file path, or samples at `sampling_rate` -> float32 mono samples at 16 kHz [N]. ValueError
    (FileNotFoundError for a missing file) naming the file and what is wrong with it."""
    if isinstance(source, (str, Path)):
        return decode_file(Path(source))
    if isinstance(source, bytes):
        return decode_file(source)
    samples = np.asarray(source.detach().cpu() if hasattr(source, "detach") else source, dtype=np.float32)
    if samples.ndim == 2:  # [channels, N] or [N, channels]: the shorter side is the channels
        samples = samples.mean(axis=0 if samples.shape[0] <= samples.shape[1] else 1)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"audio samples must be a non-empty [N] or [channels, N] array, got shape {samples.shape}")
    if sampling_rate != SAMPLE_RATE:
        samples = resample(samples, sampling_rate)
    return samples


def decode_file(path: Path | bytes, name: str = "the upload") -> np.ndarray:
    """Decode every audio frame of `path` (or an encoded file's bytes, called `name` in errors) to 16 kHz
    mono float32 through PyAV."""
    if isinstance(path, bytes):
        import io

        if not path:
            raise ValueError(f"{name}: is empty (0 bytes)")
        source, path = io.BytesIO(path), Path(name)
    elif not path.is_file():
        raise FileNotFoundError(f"{path}: no such audio file")
    else:
        source = str(path)
    try:
        import av
    except ImportError:
        raise ValueError(f"{path}: reading audio files needs PyAV (pip install 'encore[audio]')") from None
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    try:
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise ValueError(f"{path}: has no audio stream")
            for frame in container.decode(audio=0):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except av.error.FFmpegError as e:
        why = str(e).split(": '")[0]  # (without the path FFmpeg repeats)
        raise ValueError(f"{path}: not an audio file FFmpeg can decode ({why})") from None
    if not chunks or sum(c.size for c in chunks) == 0:
        raise ValueError(f"{path}: holds no audio samples (an empty recording)")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mono samples at `rate` -> 16 kHz, through FFmpeg's resampler (PyAV), as a decoded file is."""
    if rate <= 0:
        raise ValueError(f"sampling_rate must be positive, got {rate}")
    try:
        import av
    except ImportError:
        raise ValueError("resampling audio needs PyAV (pip install 'encore[audio]'), or pass 16 kHz samples") from None
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples, dtype=np.float32)[None], format="flt", layout="mono"
    )
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    out = [f.to_ndarray().reshape(-1) for f in (*resampler.resample(frame), *resampler.resample(None))]
    return np.concatenate(out).astype(np.float32, copy=False)
