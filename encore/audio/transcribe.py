"""`transcribe`: audio of any length -> text with timestamped segments, openai/whisper's long-form
algorithm on encore's model: 30-s windows from a seek position that moves to the last timestamp the
decoder wrote, the previous text as the next window's prompt, a temperature fallback when a window's
text is too repetitive (gzip compression ratio) or unlikely (average log-probability), and windows the
model calls silent (no-speech probability) skipped.

`batch_size` > 1 is faster-whisper's batched pipeline: the audio is cut into 30-s windows decoded
together through `Engine`, each alone (no previous text), with timestamps. `word_timestamps` aligns each window's words
to its audio (`encore.audio.alignment`).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from encore.audio.decoding import LogitRules, WindowResult, compression_ratio, decode_windows
from encore.audio.features import (
    FRAME_SECONDS,
    FRAMES_PER_TOKEN,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    TOKEN_SECONDS,
    log_mel,
    pad_or_trim,
)
from encore.audio.io import AudioInput, load_audio
from encore.audio.tokens import WhisperTokens
from encore.progress import Progress

TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def transcribe(
    model: Any,
    audio: AudioInput,
    language: str | None = None,
    task: str = "transcribe",
    beam_size: int = 5,
    temperature: float | Sequence[float] = TEMPERATURES,
    initial_prompt: str | None = None,
    word_timestamps: bool = False,
    condition_on_previous_text: bool = True,
    compression_ratio_threshold: float | None = 2.4,
    logprob_threshold: float | None = -1.0,
    no_speech_threshold: float | None = 0.6,
    without_timestamps: bool = False,
    batch_size: int = 1,
    seed: int = 0,
    progress: bool = False,
    vad_filter: bool = False,
    vad_parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """{"text", "segments": [{"id", "seek", "start", "end", "text", "tokens", "temperature",
    "avg_logprob", "compression_ratio", "no_speech_prob"}], "language", "duration"} for `audio` (a file,
    or 16 kHz samples). Defaults are openai/whisper's (beam 5, temperatures 0 to 1 by 0.2, thresholds
    2.4 / -1.0 / 0.6); `language` None detects it on a multilingual model. `word_timestamps`: each
    segment also gets "words" [{"word", "start", "end", "probability"}] (`encore.audio.alignment`).
    `vad_filter`: transcribe only the speech Silero VAD finds (`encore.audio.vad`; `vad_parameters`
    over faster-whisper's defaults), times still those of the original audio."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    job = Transcription(model, audio, language, task, beam_size, temperature, initial_prompt, word_timestamps,
                        condition_on_previous_text, compression_ratio_threshold, logprob_threshold,
                        no_speech_threshold, without_timestamps, seed, vad_filter, vad_parameters)  # fmt: skip
    if batch_size > 1:
        segments = _windows_batched(job, batch_size, progress)
    else:
        segments = run_tries(job.windows(progress), job.decoder)
    return job.result(segments)


@dataclass
class Try:
    """One decoding of one 30-s window that a transcription asks its runner for (`Transcription.windows`
    yields them; the runner sends back the `WindowResult`): `run_tries` here, the server's engine there."""

    features: torch.Tensor  # [M, 3000]
    prompt: list[int]
    temperature: float
    beam_size: int
    max_tokens: int


class Transcription:
    """One audio's transcription as openai/whisper runs it: its checked options, log-mel frames and
    language (detected here on a multilingual model), then `windows()`: the seek loop as a generator
    of `Try`s, whose return value `result` turns into the transcription's dict."""

    def __init__(self, model, audio, language=None, task="transcribe", beam_size=5, temperature=TEMPERATURES,
                 initial_prompt=None, word_timestamps=False, condition_on_previous_text=True,
                 compression_ratio_threshold=2.4, logprob_threshold=-1.0, no_speech_threshold=0.6,
                 without_timestamps=False, seed=0, vad_filter=False, vad_parameters=None):  # fmt: skip
        if not isinstance(beam_size, int) or beam_size < 1:
            raise ValueError(f"beam_size must be an integer >= 1, got {beam_size!r}")
        tokens = WhisperTokens.from_model(model)
        if language is not None:
            language = language.lower()
            if tokens.multilingual:
                tokens.language(language)
            elif language != "en":
                raise ValueError(f"language {language!r}: this Whisper model is English-only (*.en)")
        tokens.start(language if tokens.multilingual else None, task, True)  # checks the task before any work
        self.samples, self.chunks = load_audio(audio), None
        speech = self.samples
        if vad_filter:  # the speech alone; `result` moves the times back
            from encore.audio.vad import keep, speech_chunks

            self.chunks = speech_chunks(self.samples, **(vad_parameters or {}))
            speech = keep(self.samples, self.chunks)
        device = model_device(model)
        mel = log_mel(torch.from_numpy(speech).to(device), model.config.audio_mels, padding=N_SAMPLES)[0]
        self.mel, self.frames = mel, mel.shape[-1] - N_FRAMES  # [M, frames]; the audio's own (then silence)
        if tokens.multilingual and language is None:
            language = detect_language(model, tokens, mel[None, :, :N_FRAMES])[0]
        self.language = language or "en"
        generation, vocab = model.generation_config, model.config.vocab_size
        in_vocab = lambda ids: [i for i in ids if 0 <= i < vocab]  # (a config may list ids of a larger vocabulary)
        rules = LogitRules(
            tokens,
            in_vocab(tokens.suppressed(generation.get("suppress_tokens") or [])),
            in_vocab(generation.get("begin_suppress_tokens") or [tokens.eot]),
            timestamps=not without_timestamps,
        )
        decoder = _Decoder(model, tokens, rules, temperature, beam_size, compression_ratio_threshold, logprob_threshold)
        decoder.no_speech_threshold = no_speech_threshold
        prompt_language = language if tokens.multilingual else None
        decoder.start = tokens.start(prompt_language, task, not without_timestamps)
        if word_timestamps:  # the start the alignment pass reads the text after (no timestamps)
            decoder.align_start = tokens.start(prompt_language, task, False)
        decoder.generator.manual_seed(seed)
        self.decoder, self.initial_prompt, self.condition = decoder, initial_prompt, condition_on_previous_text

    def windows(self, progress: bool = False) -> Generator[Try, WindowResult, list[dict[str, Any]]]:
        """openai/whisper's seek loop: one window at a time, each prompted with the text so far; each try
        of a window (the temperature fallback) is a `Try` its runner decodes."""
        decoder, mel, frames = self.decoder, self.mel, self.frames
        all_tokens = decoder.initial_tokens(self.initial_prompt)
        reset_since = len(all_tokens)
        segments: list[dict[str, Any]] = []
        seek = 0
        bar = Progress(frames, unit="frame", desc="transcribe") if progress else None
        while seek < frames:
            size = min(N_FRAMES, frames - seek)
            window = pad_or_trim(mel[:, seek : seek + size], N_FRAMES)
            result = yield from decoder.tries(window, all_tokens[reset_since:] if self.condition else [])
            offset, before = seek * FRAME_SECONDS, seek
            if _skip(result, decoder.no_speech_threshold, decoder.logprob_threshold):
                seek += size
            else:
                found, advance = split_segments(result, decoder, offset, size, seek)
                if decoder.align_start is not None:
                    add_words(found, result, decoder, offset, size, window)
                segments += found
                seek += advance
                all_tokens += [t for s in found for t in s["tokens"]]
            if not self.condition or result.temperature > 0.5:
                reset_since = len(all_tokens)
            if bar is not None:
                bar.update(seek - before)
        if bar is not None:
            bar.close()
        return segments

    def result(self, segments: list[dict[str, Any]]) -> dict[str, Any]:
        if self.chunks is not None:
            from encore.audio.vad import restore_times

            restore_times(segments, self.chunks)
        for i, segment in enumerate(segments):
            segment["id"] = i
        text = "".join(s["text"] for s in segments)
        return {"text": text, "segments": segments, "language": self.language,
                "duration": len(self.samples) / SAMPLE_RATE}  # fmt: skip


def model_device(model: Any) -> torch.device:
    """Where a model's tensors live: its embedding's device (an ONNX-backed model says its own)."""
    return model.device if getattr(model, "embed", None) is None else model.embed.weight.device


def run_tries(windows: Generator[Try, WindowResult, Any], decoder: _Decoder) -> Any:
    """Run a transcription's `Try`s here, one window at a time (`decode_windows`); its return value."""
    try:
        job = next(windows)
        while True:
            (result,) = decode_windows(decoder.model, job.features[None], job.prompt, decoder.rules,
                                       job.temperature, job.beam_size, job.max_tokens, decoder.generator)  # fmt: skip
            job = windows.send(result)
    except StopIteration as stop:
        return stop.value


class _Decoder:
    """A window's decoding with the temperature fallback."""

    def __init__(self, model, tokens, rules, temperature, beam_size, ratio_threshold, logprob_threshold):
        self.model, self.tokens, self.rules = model, tokens, rules
        temps = (temperature,) if isinstance(temperature, (int, float)) else tuple(temperature)
        if not temps or any(not isinstance(x, (int, float)) or x < 0 for x in temps):
            raise ValueError(f"temperature must be a number >= 0 or a sequence of them, got {temperature!r}")
        self.temperatures = tuple(float(x) for x in temps)
        self.beam_size, self.ratio_threshold, self.logprob_threshold = beam_size, ratio_threshold, logprob_threshold
        self.generator = torch.Generator(device=model_device(model))
        self.start: list[int] = []
        self.align_start: list[int] | None = None  # set: segments get "words" (`encore.audio.alignment`)
        self.last_speech = 0.0  # where the last segment with words ended
        self.no_speech_threshold: float | None = 0.6
        self.n_ctx = model.config.max_seq_len

    def prompt(self, previous: list[int]) -> list[int]:
        """<|startofprev|> + the last previous-text tokens (up to half the decoder's positions) + start."""
        keep = previous[-(self.n_ctx // 2 - 1) :] if previous else []
        return ([self.tokens.sot_prev, *keep] if keep else []) + self.start

    def initial_tokens(self, initial_prompt: str | None) -> list[int]:
        """`initial_prompt` as the text before the first window (a leading space, as openai's)."""
        if not initial_prompt:
            return []
        return self.model.tokenizer.encode(" " + initial_prompt.strip(), add_special_tokens=False)

    def max_tokens(self, prompt: list[int]) -> int:
        return min(self.n_ctx // 2, self.n_ctx - len(prompt))

    def tries(self, window: torch.Tensor, previous: list[int]) -> Generator[Try, WindowResult, WindowResult]:
        """One window [M, 3000] after the text `previous`: a `Try` per temperature until one passes the
        thresholds; the window's result (`pick` when none does)."""
        prompt, tries = self.prompt(previous), []
        for temperature in self.temperatures:
            beam = self.beam_size if temperature == 0.0 else 1
            result = yield Try(window, prompt, temperature, beam, self.max_tokens(prompt))
            tries.append(self.scored(result))
            if not self._needs_fallback(result):
                return result
        return self.pick(tries)

    def scored(self, result: WindowResult) -> WindowResult:
        result.text = self.text(result.tokens)
        result.compression_ratio = compression_ratio(result.text)
        return result

    def pick(self, tries: list[WindowResult]) -> WindowResult:
        """When no try passed (as faster-whisper chooses): the likeliest of the tries that are not too
        repetitive, else the likeliest of all."""
        fluent = [r for r in tries if self.ratio_threshold is None or r.compression_ratio <= self.ratio_threshold]
        return max(fluent or tries, key=lambda r: r.avg_logprob)

    def _needs_fallback(self, r: WindowResult) -> bool:
        too_repetitive = self.ratio_threshold is not None and r.compression_ratio > self.ratio_threshold
        too_unlikely = self.logprob_threshold is not None and r.avg_logprob < self.logprob_threshold
        threshold = self.no_speech_threshold
        silent = threshold is not None and r.no_speech_prob > threshold and too_unlikely  # openai: not retried
        return (too_repetitive or too_unlikely) and not silent

    def text(self, ids: list[int]) -> str:
        return self.model.tokenizer.decode([i for i in ids if i < self.tokens.eot])


def _skip(result: WindowResult, no_speech_threshold: float | None, logprob_threshold: float | None) -> bool:
    """openai's silence rule: the no-speech probability is high and the text is not confident."""
    if no_speech_threshold is None or result.no_speech_prob <= no_speech_threshold:
        return False
    return logprob_threshold is None or result.avg_logprob <= logprob_threshold


def _windows_batched(job: Transcription, batch_size: int, progress: bool) -> list[dict[str, Any]]:
    """faster-whisper's batched pipeline: fixed 30-s windows, each on its own (the initial prompt only),
    decoded together through `Engine` (`encore.audio.batching`): `batch_size` windows at a time (a beam
    window holds `beam_size` slots), a finished window's slots taken by the next one at once."""
    from encore.audio.batching import TranscriptionRunner, speech_engine

    decoder, mel, frames = job.decoder, job.mel, job.frames
    runner = TranscriptionRunner(speech_engine(decoder.model, batch_size * decoder.beam_size))
    previous = decoder.initial_tokens(job.initial_prompt)
    windows = {}
    for seek in range(0, frames, N_FRAMES):
        window = pad_or_trim(mel[:, seek : seek + N_FRAMES], N_FRAMES)
        windows[runner.add_tries(decoder.tries(window, previous), decoder)] = (seek, window)
    results: dict[int, WindowResult] = {}
    bar = Progress(len(windows), unit="window", desc="transcribe") if progress else None
    while runner.has_work():
        for handle, result in runner.step():
            if isinstance(result, Exception):
                raise result
            results[handle] = result
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    segments: list[dict[str, Any]] = []
    for handle, (seek, window) in windows.items():  # in the audio's order
        result = results[handle]
        if not _skip(result, decoder.no_speech_threshold, decoder.logprob_threshold):
            size = min(N_FRAMES, frames - seek)
            found = split_segments(result, decoder, seek * FRAME_SECONDS, size, seek, whole=True)[0]
            if decoder.align_start is not None:
                add_words(found, result, decoder, seek * FRAME_SECONDS, size, window)
            segments += found
    return segments


def split_segments(
    result: WindowResult, decoder: _Decoder, offset: float, size: int, seek: int, whole: bool = False
) -> tuple[list[dict[str, Any]], int]:
    """A window's tokens -> (its segments, cut after each pair of consecutive timestamps, and the frames
    to seek: to the last closed pair, or past the window). `whole`: the window is done whatever it
    ends with (batched windows: a text left open after the last pair is a segment too)."""
    begin = decoder.tokens.timestamp_begin
    tokens = result.tokens
    is_stamp = [t >= begin for t in tokens]
    single_ending = is_stamp[-2:] == [False, True]
    cuts = [i + 1 for i in range(len(tokens) - 1) if is_stamp[i] and is_stamp[i + 1]]
    seconds = lambda stamp: offset + (stamp - begin) * TOKEN_SECONDS
    segments, advance = [], size
    if cuts:
        if (single_ending or whole) and cuts[-1] < len(tokens):
            cuts.append(len(tokens))
        last = 0
        for cut in cuts:
            piece = tokens[last:cut]
            stamps = [t for t in piece if t >= begin] or [tokens[last - 1] if last else begin]
            end = seconds(stamps[-1]) if len(stamps) > 1 or stamps[-1] != stamps[0] else offset + size * FRAME_SECONDS
            segments.append(_segment(result, decoder, seek, seconds(stamps[0]), end, piece))
            last = cut
        if not (single_ending or whole):
            advance = (tokens[last - 1] - begin) * FRAMES_PER_TOKEN
    else:
        duration = size * FRAME_SECONDS
        stamps = [t for t in tokens if t >= begin]
        if stamps and stamps[-1] != begin:
            duration = (stamps[-1] - begin) * TOKEN_SECONDS
        segments.append(_segment(result, decoder, seek, offset, offset + duration, tokens))
    return [s for s in segments if s["text"].strip()], max(advance, 1)


def add_words(segments, result: WindowResult, decoder: _Decoder, offset: float, size: int, window: torch.Tensor):
    """Each segment's "words" [{"word", "start", "end", "probability"}] from the window's alignment
    (times from the audio's start); a segment with words spans them. The window [M, 3000] is encoded
    again when its result does not carry its cross K/V (a try run by the server's engine)."""
    from encore.audio.alignment import find_words, fit_to_segment, median_duration

    eot = decoder.tokens.eot
    text = [t for s in segments for t in s["tokens"] if t < eot]
    if result.cross is None:
        with torch.inference_mode():
            result.cross = decoder.model.cross_kv(window[None], None)
    words = find_words(decoder.model, decoder.tokens, decoder.align_start, text, result.cross, size)
    median = median_duration(words)
    for segment in segments:
        count, segment["words"] = sum(t < eot for t in segment["tokens"]), []
        while count > 0 and words:
            word = words.pop(0)
            count -= len(word.pop("tokens"))
            word["start"], word["end"] = offset + word["start"], offset + word["end"]
            segment["words"].append(word)
        fit_to_segment(segment["words"], segment, decoder.last_speech, median)
        decoder.last_speech = segment["end"]


def _segment(result: WindowResult, decoder: _Decoder, seek: int, start: float, end: float, tokens: list[int]):
    return {
        "id": 0,
        "seek": seek,
        "start": round(start, 3),
        "end": round(end, 3),
        "text": decoder.text(tokens),
        "tokens": list(tokens),
        "temperature": result.temperature,
        "avg_logprob": result.avg_logprob,
        "compression_ratio": result.compression_ratio,
        "no_speech_prob": result.no_speech_prob,
    }


@torch.inference_mode()
def detect_language(model: Any, tokens: WhisperTokens, features: torch.Tensor) -> list[str]:
    """The likeliest language of each window [B, M, 3000]: the decoder's first step after
    <|startoftranscript|>, over the language tokens."""
    if not tokens.languages:
        return ["en"] * features.shape[0]
    start = torch.full((features.shape[0], 1), tokens.sot, dtype=torch.long, device=features.device)
    logits, _ = model.prefill(features, None, 1, decoder_prompt=start)
    codes, ids = list(tokens.languages), torch.tensor(list(tokens.languages.values()), device=logits.device)
    return [codes[i] for i in logits[:, ids].argmax(dim=-1).tolist()]
