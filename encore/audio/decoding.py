"""One 30-s window of Whisper decoding, as openai/whisper's `DecodingTask` does it: the decoder prompt
(previous text, start, language, task) in one pass, the no-speech probability at the start token, then
greedy, sampled or beam-searched tokens under Whisper's logit rules (suppressed tokens, timestamps in
pairs and increasing, a first timestamp within 1 s, timestamps when their total probability beats any
text token's), with each sequence's log-probability for the caller's fallback."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import Tensor

from encore.audio.features import TOKEN_SECONDS
from encore.audio.tokens import WhisperTokens

NEG_INF = float("-inf")


@dataclass
class WindowResult:
    tokens: list[int]  # what the decoder wrote, EOT excluded
    sum_logprob: float
    avg_logprob: float  # sum / (tokens + 1): EOT's log-probability counts, as in openai/whisper
    no_speech_prob: float
    temperature: float
    text: str = ""
    compression_ratio: float = 0.0
    cross: tuple[Tensor, Tensor] | None = None  # the window's cross K/V [L, 1, K, S, Dh] (word timestamps read it)


class LogitRules:
    """Whisper's logit filters: `__call__(logits [B, V], sampled)` edits the rows in place, row b after
    the tokens `sampled[b]` (per-row bounds in Python, the reductions batched)."""

    def __init__(
        self,
        tokens: WhisperTokens,
        suppress: list[int],
        begin_suppress: list[int],
        timestamps: bool,
        max_initial_timestamp: float = 1.0,
    ):
        self.t, self.timestamps = tokens, timestamps
        self.suppress = torch.tensor(suppress, dtype=torch.long)
        self.begin_suppress = torch.tensor(begin_suppress, dtype=torch.long)
        self.max_initial = round(max_initial_timestamp / TOKEN_SECONDS)

    def __call__(self, logits: Tensor, sampled: list[list[int]]) -> None:
        first = [b for b, seq in enumerate(sampled) if not seq]
        if first:  # no blank and no EOT first
            logits[torch.tensor(first)[:, None], self.begin_suppress[None]] = NEG_INF
        logits[:, self.suppress] = NEG_INF
        if self.timestamps:
            for row, seq in zip(logits, sampled):
                self._pairs(row, seq)
            begin = self.t.timestamp_begin
            logprobs = torch.log_softmax(logits, dim=-1)
            stamp = torch.logsumexp(logprobs[:, begin:], dim=-1)
            likelier = stamp > logprobs[:, :begin].max(dim=-1).values  # a timestamp beats every text token
            logits[likelier, :begin] = NEG_INF

    def _pairs(self, logits: Tensor, sampled: list[int]) -> None:
        """One row's timestamp bounds: in pairs, never decreasing, the first within max_initial."""
        begin, eot = self.t.timestamp_begin, self.t.eot
        logits[self.t.no_timestamps] = NEG_INF
        last = len(sampled) >= 1 and sampled[-1] >= begin
        penultimate = len(sampled) < 2 or sampled[-2] >= begin
        if last:
            if penultimate:  # a pair closed: text (or EOT) next
                logits[begin:] = NEG_INF
            else:  # a timestamp after text: another timestamp (the pair's end) or EOT
                logits[:eot] = NEG_INF
        stamps = [s for s in sampled if s >= begin]
        if stamps:  # timestamps never decrease; a new pair starts after the last one ended
            floor = stamps[-1] if last and not penultimate else stamps[-1] + 1
            logits[begin:floor] = NEG_INF
        if not sampled:  # the first token is a timestamp within max_initial_timestamp
            logits[:begin] = NEG_INF
            logits[begin + self.max_initial + 1 :] = NEG_INF


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


@torch.inference_mode()
def decode_windows(
    model,
    features: Tensor,
    prompt: list[int],
    rules: LogitRules,
    temperature: float = 0.0,
    beam_size: int = 1,
    max_tokens: int = 224,
    generator: torch.Generator | None = None,
) -> list[WindowResult]:
    """Decode windows `features` [B, M, 3000] after the same `prompt`: one `WindowResult` each. Beam
    search (`beam_size` > 1, at temperature 0) takes one window at a time."""
    if beam_size > 1 and temperature == 0.0:
        return [_beam(model, features[b : b + 1], prompt, rules, beam_size, max_tokens) for b in range(len(features))]
    t = rules.t
    B = features.shape[0]
    ids = torch.tensor([prompt] * B, dtype=torch.long, device=features.device)
    at = [prompt.index(t.sot), len(prompt) - 1]
    both, cache = model.prefill(features, None, max_tokens, decoder_prompt=ids, logits_at=at)
    no_speech = torch.softmax(both[:, 0].float(), dim=-1)[:, t.no_speech].tolist()
    logits = both[:, 1]
    sampled: list[list[int]] = [[] for _ in range(B)]
    sums, done = [0.0] * B, [False] * B
    for step in range(max_tokens):
        logits = logits.float()
        rules(logits, sampled)
        logprobs = torch.log_softmax(logits, dim=-1)
        if temperature == 0.0:
            tokens = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            tokens = torch.multinomial(probs, 1, generator=generator)[:, 0]
        chosen = logprobs.gather(1, tokens[:, None])[:, 0].tolist()
        for b, token in enumerate(tokens.tolist()):
            if not done[b]:
                sums[b] += chosen[b]
                sampled[b].append(token)
                done[b] = token == t.eot
        if all(done) or step + 1 == max_tokens:
            break
        tokens = tokens.masked_fill(torch.tensor(done, device=tokens.device), t.eot)
        logits = model.decode_step(tokens, cache)
    results = [window_result(s, lp, ns, temperature, t.eot) for s, lp, ns in zip(sampled, sums, no_speech)]
    for b, result in enumerate(results):
        result.cross = (cache.cross_k[:, b : b + 1], cache.cross_v[:, b : b + 1])
    return results


def window_result(
    sampled: list[int], sum_logprob: float, no_speech: float, temperature: float, eot: int
) -> WindowResult:
    """A try's result from what it sampled (EOT and what follows dropped) and its summed log-probability."""
    tokens = sampled[: sampled.index(eot)] if eot in sampled else sampled
    return WindowResult(tokens, sum_logprob, sum_logprob / (len(tokens) + 1), no_speech, temperature)


def _beam(model, features: Tensor, prompt: list[int], rules: LogitRules, K: int, max_tokens: int) -> WindowResult:
    """openai/whisper's beam search (patience 1): K running sequences, each offering its K + 1 best
    continuations; finished when K sequences have ended; the best by log-probability / length."""
    t = rules.t
    ids = torch.tensor([prompt], dtype=torch.long, device=features.device)
    both, cache = model.prefill(features, None, max_tokens, decoder_prompt=ids, logits_at=[prompt.index(t.sot), -1])
    no_speech = torch.softmax(both[:, 0].float(), dim=-1)[0, t.no_speech].item()
    logits = both[:, 1]
    running: list[tuple[list[int], float]] = [([], 0.0)]
    finished: dict[tuple[int, ...], float] = {}
    for step in range(max_tokens):
        logits = logits.float()
        rules(logits, [seq for seq, _ in running])
        top = torch.log_softmax(logits, dim=-1).topk(K + 1, dim=-1)
        candidates: dict[tuple[int, ...], tuple[float, int]] = {}
        for row, ((seq, score), values, tokens) in enumerate(zip(running, top.values.tolist(), top.indices.tolist())):
            for value, token in zip(values, tokens):
                candidates.setdefault((*seq, token), (score + value, row))
        kept, ended = [], {}
        for seq, (score, row) in sorted(candidates.items(), key=lambda kv: -kv[1][0]):
            if seq[-1] == t.eot:
                ended[seq] = score
            else:
                kept.append((list(seq), score, row))
                if len(kept) == K:
                    break
        for seq, score in sorted(ended.items(), key=lambda kv: -kv[1]):
            if len(finished) >= K:
                break
            finished[seq] = score
        if len(finished) >= K or not kept or step + 1 == max_tokens:
            break
        rows = torch.tensor([row for *_, row in kept], device=features.device)
        cache = cache.select_rows(rows, cross=False)  # the hypotheses share the window's one cross K/V
        running = [(seq, score) for seq, score, _ in kept]
        logits = model.decode_step(torch.tensor([seq[-1] for seq, _ in running], device=features.device), cache)
    pool = finished or {tuple(seq): score for seq, score in running}
    length = lambda seq: len(seq) - (1 if seq and seq[-1] == t.eot else 0)
    best = max(pool, key=lambda seq: pool[seq] / max(1, length(seq)))
    result = window_result(list(best), pool[best], no_speech, 0.0, t.eot)
    result.cross = (cache.cross_k, cache.cross_v)  # (one window: batch 1, shared by the hypotheses)
    return result
