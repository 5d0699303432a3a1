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
