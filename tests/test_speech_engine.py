"""Whisper windows through `encore.Engine` (`encore.audio.batching`): many transcriptions decoded
together give what each gives alone, and speech requests are checked where they enter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_whisper import whisper_dir  # noqa: F401 (the fixture)

import encore
from encore.audio.batching import TranscriptionRunner
from encore.audio.features import N_FRAMES
from encore.audio.transcribe import Transcription
from encore.infer.engine import Engine

pytest.importorskip("transformers")


def _audio(seconds: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randn(16000 * seconds).astype(np.float32) * 0.1


def _run_all(runner: TranscriptionRunner, handles: list[int]) -> list:
    results = {}
    while runner.has_work():
        results.update(runner.step())
    return [results[h] for h in handles]


@pytest.mark.parametrize(
    "beam_size, temperature",
    [(1, 0.0), (2, 0.0), (1, (0.0, 0.4, 0.8))],  # greedy, beams, the fallback's sampling
)
def test_transcriptions_through_the_engine_are_the_librarys(whisper_dir, beam_size, temperature):  # noqa: F811
    """Three audios of different lengths (one window, several), decoded at once: each transcription is
    the one `transcribe` gives it alone, segment for segment (the same tries, the same sampled tokens:
    the transcription's own generator)."""
    model = encore.load(whisper_dir)
    audios = [_audio(3, 1), _audio(40, 2), _audio(8, 3)]
    expected = [model.transcribe(a, beam_size=beam_size, temperature=temperature) for a in audios]
    engine = Engine(model, max_batch=6, max_input_len=N_FRAMES // 2, max_new_tokens=model.config.max_seq_len)
    runner = TranscriptionRunner(engine)
    handles = [runner.add(Transcription(model, a, beam_size=beam_size, temperature=temperature)) for a in audios]
    for got, want in zip(_run_all(runner, handles), expected):
        assert got["text"] == want["text"]
        assert [(s["start"], s["end"], s["tokens"], s["temperature"]) for s in got["segments"]] == [
            (s["start"], s["end"], s["tokens"], s["temperature"]) for s in want["segments"]
        ]
        for g, w in zip(got["segments"], want["segments"]):
            assert g["avg_logprob"] == pytest.approx(w["avg_logprob"], rel=1e-4)  # (beams: float32 sums)
            assert g["no_speech_prob"] == pytest.approx(w["no_speech_prob"], abs=1e-5)
    assert engine.prefilled_rows >= sum(len(e["segments"]) > 0 for e in expected) and not engine.has_work()


def test_one_failing_transcription_leaves_the_others_running(whisper_dir):  # noqa: F811
    """A transcription whose seek loop raises ends with that error; the others finish as they would."""
    model = encore.load(whisper_dir)
    engine = Engine(model, max_batch=4, max_input_len=N_FRAMES // 2, max_new_tokens=model.config.max_seq_len)
    runner = TranscriptionRunner(engine)
    broken = Transcription(model, _audio(40, 2), beam_size=1, temperature=0.0)
    tries = broken.decoder.tries

    def second_window_fails(window, previous):
        if broken.decoder.last_speech or previous:
            raise RuntimeError("window 2 failed")
        return (yield from tries(window, previous))

    broken.decoder.tries = second_window_fails
    good = Transcription(model, _audio(8, 3), beam_size=1, temperature=0.0)
    failed, finished = _run_all(runner, [runner.add(broken), runner.add(good)])
    assert isinstance(failed, RuntimeError) and "window 2" in str(failed)
    assert finished["text"] == model.transcribe(_audio(8, 3), beam_size=1, temperature=0.0)["text"]


def test_speech_requests_are_checked_where_they_enter(whisper_dir):  # noqa: F811
    model = encore.load(whisper_dir)
    with pytest.raises(ValueError, match="max_input_len must be the encoder's 1500 positions"):
        Engine(model, max_batch=2, max_input_len=512, max_new_tokens=64)
    engine = Engine(model, max_batch=2, max_input_len=1500, max_new_tokens=64)
    window = torch.zeros(80, N_FRAMES)
    cases = [
        (dict(input_ids=torch.zeros(80, 100), decoder_prompt=[101]), r"log-mel features of shape \(80, 3000\)"),
        (dict(input_ids=[1, 2, 3], decoder_prompt=[101]), "got list"),
        (dict(input_ids=window), "decoder_prompt must be a 1-D sequence of token ids, got NoneType"),
        (dict(input_ids=window, decoder_prompt=[101, 10**6]), r"decoder_prompt\[1\] = 1000000 is outside"),
        (dict(input_ids=window, decoder_prompt=[101] * 10, max_new_tokens=60), "the decoder prompt's 10 - 1"),
        (dict(input_ids=window, decoder_prompt=[101], prompt_probs=(3, [1])), "prompt_probs position 3"),
        (dict(input_ids=window, decoder_prompt=[101], logprobs=0, logprobs_mode="cooked"), "logprobs_mode"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            engine.add(**kwargs)
    assert not engine.has_work()  # nothing was queued


def test_vad_filter_transcribes_the_speech_and_keeps_the_original_times(whisper_dir, monkeypatch):  # noqa: F811
    """`vad_filter=True`: the chunks the VAD finds are transcribed as one audio (the same text as that
    audio without VAD) and every time moves back to the original audio (Silero replaced by known chunks)."""
    from encore.audio import vad

    rate = 16000
    audio = np.concatenate([_audio(3, 4), np.zeros(rate * 20, np.float32), _audio(33, 5)])
    chunks = [(0, 3 * rate), (23 * rate, 56 * rate)]
    monkeypatch.setattr(vad, "speech_chunks", lambda samples, **parameters: chunks)
    model = encore.load(whisper_dir)
    filtered = model.transcribe(audio, beam_size=1, temperature=0.0, vad_filter=True)
    plain = model.transcribe(vad.keep(audio, chunks), beam_size=1, temperature=0.0)
    assert filtered["text"] == plain["text"] and filtered["duration"] == 56.0
    times = vad.TimeMap(chunks)
    for f, p in zip(filtered["segments"], plain["segments"]):
        assert f["start"] == times.original(p["start"]) and f["start"] >= (23.0 if p["start"] > 3.0 else 0.0)
    # kept: chunk 1 at 0-3 s, 1 s of silence, chunk 2 from 4 s; a time in the gap is where speech begins / ended
    assert [times.original(t) for t in (2.5, 3.5, 4.0, 5.25)] == [2.5, 23.0, 23.0, 24.25]
    assert times.original(3.5, end=True) == 3.0 and len(vad.keep(audio, chunks)) == (3 + 1 + 33) * rate


def test_silero_vad_finds_spoken_words_between_silences(tmp_path):
    """The real VAD on espeak-ng speech between 5-s silences: one chunk around the words."""
    pytest.importorskip("silero_vad")
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from encore.audio.io import load_audio
    from encore.audio.vad import speech_chunks

    wav = tmp_path / "said.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "The quick brown fox jumps over the lazy dog."], check=True)
    said = load_audio(str(wav))
    silence = np.zeros(5 * 16000, np.float32)
    chunks = speech_chunks(np.concatenate([silence, said, silence]))
    assert len(chunks) == 1
    start, end = chunks[0]
    assert 4.5 * 16000 <= start <= 5.2 * 16000 and 5 * 16000 + len(said) - 8000 <= end <= 10.5 * 16000
    with pytest.raises(ValueError, match="vad_parameters: unknown"):
        speech_chunks(said, min_silence_ms=10)


@pytest.mark.parametrize("beam_size", [1, 2])
def test_the_batched_mode_decodes_each_window_as_alone(whisper_dir, beam_size):  # noqa: F811
    """`batch_size` > 1: fixed windows through the engine, several at a time; each window's segments are
    what it gives decoded one at a time (the same engine path, one window in flight)."""
    from encore.audio.transcribe import _windows_batched

    model = encore.load(whisper_dir)
    job = Transcription(model, _audio(95, 6), beam_size=beam_size, temperature=0.0)
    one = _windows_batched(job, 1, False)
    together = model.transcribe(_audio(95, 6), beam_size=beam_size, temperature=0.0, batch_size=3)
    assert one and {s["seek"] for s in together["segments"]} <= {0, 3000, 6000, 9000}
    assert [(s["start"], s["end"], s["tokens"]) for s in together["segments"]] == [
        (s["start"], s["end"], s["tokens"]) for s in one
    ]
