"""Many transcriptions at once through `encore.Engine`: continuous batching of Whisper windows.

    runner = TranscriptionRunner(engine)                  # an Engine over a Whisper model
    handle = runner.add(Transcription(model, audio, ...))
    while runner.has_work():
        for handle, result in runner.step():              # result: the transcription's dict, or an error
            ...

Each transcription is `Transcription.windows()`, openai/whisper's seek loop as a generator of `Try`s
(one window, one temperature). The runner turns each try into an engine request: the window's log-mel
features as the encoder's input, the try's prompt (previous text, start, language, task) as the
decoder's first tokens, Whisper's timestamp rules as the request's logits rule, its no-speech
probability read at the start token, the log-probabilities after the rules (what the fallback reads);
beam tries are the engine's beam requests (length penalty 1, stopping once K hypotheses end: the score
is then openai's sum of log-probabilities over the length). A finished request's result goes back into
its generator, which yields the next try (the next window, or the same window at the next temperature)
or returns its segments. Windows of different transcriptions, at different points of their audio,
share each decode step; one that arrives joins the next step.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from encore.audio.decoding import WindowResult, window_result

if TYPE_CHECKING:  # (transcribe's batched mode runs through this module: no import back at run time)
    from encore.audio.transcribe import Transcription, Try


@dataclass
class _Running:
    decoder: Any  # the transcription's `_Decoder`: its tokens, rules and sampling generator
    windows: Generator[Try, WindowResult, Any]  # the tries
    finish: Callable[[Any], Any]  # the generator's return value -> what `step` hands out
    tried: Try | None = None
    request: int = -1  # the engine's id of the try's request
    tokens: list[int] = field(default_factory=list)
    sum_logprob: float = 0.0


def speech_engine(model: Any, slots: int, **options: Any) -> Any:
    """An `Engine` for Whisper windows: `slots` rows, each of one window's cross K/V (the encoder's
    positions) and the decoder's positions; `options`: the engine's others."""
    from encore.infer.engine import Engine

    config = model.config
    return Engine(model, slots, config.encoder_config().max_seq_len, config.max_seq_len, **options)


class TranscriptionRunner:
    """Drives transcriptions' tries through one `Engine` (the engine's thread only)."""

    def __init__(self, engine: Any):
        if engine.config.encoder_input != "audio":
            raise ValueError("TranscriptionRunner needs an Engine over a speech model (Whisper)")
        self.engine = engine
        self.running: dict[int, _Running] = {}
        self._by_request: dict[int, int] = {}
        self._ids = itertools.count()
        self._done: list[tuple[int, Any]] = []

    def add(self, job: Transcription) -> int:
        """Start `job`; returns its handle (its result dict comes out of `step`)."""
        return self.add_tries(job.windows(), job.decoder, job.result)

    def add_tries(self, tries: Generator[Try, WindowResult, Any], decoder: Any, finish: Callable = lambda v: v) -> int:
        """Start any generator of tries (one window's fallback: `_Decoder.tries`); `finish` turns its
        return value into what `step` hands out. Returns its handle."""
        handle = next(self._ids)
        self.running[handle] = _Running(decoder, tries, finish)
        self._advance(handle, None)
        return handle

    def cancel(self, handle: int) -> None:
        """Drop a transcription (its request leaves the engine at once)."""
        run = self.running.pop(handle, None)
        if run is not None and run.request >= 0:
            self.engine.cancel(run.request)
            self._by_request.pop(run.request, None)

    def has_work(self) -> bool:
        return bool(self.running) or bool(self._done)

    @torch.inference_mode()
    def step(self) -> list[tuple[int, Any]]:
        """One engine step; (handle, the transcription's dict or the exception it raised) for each that
        ended."""
        if self.engine.has_work():
            for event in self.engine.step():
                handle = self._by_request.get(event.request_id)
                if handle is None:
                    continue
                run = self.running[handle]
                if event.tokens is not None:  # a beam request's one event
                    run.tokens = list(event.tokens)
                    run.sum_logprob = event.scores[0] * len(event.tokens)  # length penalty 1: score = sum / length
                else:
                    run.tokens.append(event.token)
                    run.sum_logprob += event.logprob
                if event.finished:
                    del self._by_request[event.request_id]
                    no_speech, eot = event.prompt_probs[0], run.decoder.tokens.eot
                    self._advance(
                        handle, window_result(run.tokens, run.sum_logprob, no_speech, run.tried.temperature, eot)
                    )
        done, self._done = self._done, []
        return done

    def _advance(self, handle: int, result: WindowResult | None) -> None:
        """Send `result` into the transcription; queue its next try, or record its end."""
        run = self.running[handle]
        try:
            tried = next(run.windows) if result is None else run.windows.send(result)
            run.tried, run.tokens, run.sum_logprob = tried, [], 0.0
            run.request = self.engine.add(tried.features, **self._request(run.decoder, tried))
        except StopIteration as stop:
            del self.running[handle]
            self._done.append((handle, run.finish(stop.value)))
            return
        except Exception as e:  # (one transcription's failure is its own; the others go on)
            del self.running[handle]
            self._done.append((handle, e))
            return
        self._by_request[run.request] = handle

    @staticmethod
    def _request(decoder: Any, tried: Try) -> dict[str, Any]:
        """A try as `Engine.add`'s keywords."""
        t = decoder.tokens
        common = dict(decoder_prompt=tried.prompt, max_new_tokens=tried.max_tokens, eos_token_id=t.eot,
                      logits_rule=decoder.rules, prompt_probs=(tried.prompt.index(t.sot), [t.no_speech]))  # fmt: skip
        if tried.beam_size > 1:
            return common | dict(num_beams=tried.beam_size, length_penalty=1.0, early_stopping=True,
                                 num_return_sequences=1)  # fmt: skip
        sampled = tried.temperature > 0.0  # (with the transcription's own generator, as `run_tries` samples)
        return common | dict(num_beams=1, do_sample=sampled, temperature=tried.temperature if sampled else 1.0,
                             generator=decoder.generator, logprobs=0, logprobs_mode="processed")  # fmt: skip
