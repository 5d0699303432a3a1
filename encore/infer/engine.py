"""`encore.Engine`: continuous batching over a slot cache, the primitive a server drives.

    engine = Engine(encore.optimize(model, quantize="int8"), max_batch=16, max_input_len=512, max_new_tokens=128)
    rid = engine.add(ids, max_new_tokens=64)          # queued until a slot is free
    while engine.has_work():
        for event in engine.step():                   # event.request_id, .token, .finished, .finish_reason
            ...

The engine owns one `GenerationCache` with a row (*slot*) per concurrent request: self-attention K/V
(the outputs of an encoder-decoder; prompt + outputs of a decoder-only model), cross-attention K/V
and its mask (encoder-decoder), and each slot's position in a tensor. A `step()`:

1. admits queued requests into free slots: they are prefilled together (right-padded; for an
   encoder-decoder one encoder pass and one cross-K/V projection), their caches copied into their
   slots, and their first token sampled: one event each;
2. runs one decode step for every running slot (the new ones included): each slot writes its K/V at
   its own position, so requests at different points of their generation share the step. One event
   per running request.

A request leaves its slot the moment it finishes (EOS, its `max_new_tokens`, or `cancel`), so the next
step can admit another.

With `prefill_chunk=N` a long prompt is prefilled over several steps between the running requests'
decode steps (`encore.infer.chunked`).

A beam request (`num_beams` K > 1, `encore.infer.beam`'s search with transformers' results) holds K
slots: its prompt is prefilled once and copied into them, each step scores its K rows with the rest of
the batch, and its hypotheses' self-attention rows follow them by index (only the rows whose source
changed are copied, over the positions written). It does not stream: one finished event carries its
best sequence (`tokens`), its `num_return_sequences` best (`sequences`) and their scores, and its K
slots are free at once. What a request generates does not depend on what else is in the batch:
greedy in fp32 it is token for token what `model.generate` gives it alone (tested).

The decode step sees fixed shapes: eagerly, a view of the slots in use and the positions written so
far (the engine knows both without reading the device); on CUDA, a captured graph per batch bucket
over the whole cache (`encore.infer.graphs`).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from encore.infer.beam import Beams, Search
from encore.infer.chunked import ChunkedPrefill
from encore.infer.generate import beam_settings, check_max_new_tokens, request_processors
from encore.infer.processors import Processors, sequence_start
from encore.infer.requests import log_mel_window, token_ids
from encore.infer.sampling import FROM_CONFIG, Sampling, _FromConfig, resolve_eos, step_logprobs
from encore.model.cache import GenerationCache

STOP, LENGTH, CANCELLED = "stop", "length", "cancelled"


@dataclass
class Event:
    """One generated token of one request. `finish_reason` ("stop": EOS, "length": its max_new_tokens)
    is set on a request's last event. `logprob` / `top_logprobs` (requests that asked, `logprobs=`): the
    token's log-probability under the model's distribution, and the `logprobs` likeliest (token, log-prob).
    A beam request's one event: `token` its best sequence's last, `tokens` that sequence (new tokens, EOS
    included when it ended so), `sequences` / `scores` its `num_return_sequences` best, best first, with
    their length-penalised scores (transformers' `sequences_scores`)."""

    request_id: int
    token: int
    finished: bool
    finish_reason: str | None = None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    tokens: list[int] | None = None
    sequences: list[list[int]] | None = None
    scores: list[float] | None = None
    prompt_probs: list[float] | None = None  # a request's last event: what `prompt_probs=` asked for


@dataclass
class _Request:
    id: int
    ids: list[int]
    max_new_tokens: int
    sampling: Sampling
    eos: tuple[int, ...] | None
    generator: torch.Generator | None
    processors: Processors = Processors()
    beams: Beams = Beams()
    logprobs: int | None = None  # None: none; N: the token's log-prob and the N likeliest
    slots: list[int] = field(default_factory=list)  # a beam request's K slots (slot = slots[0])
    search: Search | None = None
    slot: int = -1
    produced: int = 0
    cache_len: int = 0  # the slot's positions written (a host-side mirror of the cache's `length`)
    tokens: list[int] = field(default_factory=list)  # generated so far
    features: Tensor | None = None  # a speech request's log-mel window [M, 3000] (`ids`: its decoder prompt)
    rule: Callable[[Tensor, list[list[int]]], None] | None = None  # edits its logits rows in place
    probs_asked: tuple[int, list[int]] | None = None  # `prompt_probs=`: (a decoder-prompt position, token ids)
    prompt_probs: list[float] | None = None  # their probabilities there, from the prefill
    processed_logprobs: bool = False  # `logprobs` after the processors and the rule (not the model's own)
    input_len: int = 0  # what its prefill reads: prompt tokens, or a speech window's encoder positions
    pending: bool = False  # seated, its prefill still going in pieces (`prefill_chunk`): not running yet

    @property
    def key(self) -> tuple:
        """What requests that share one prefill have in common: the prompt (a speech window: none)."""
        return tuple(self.ids) if self.features is None else ("speech", self.id)


class Engine:
    def __init__(
        self,
        model: Any,
        max_batch: int = 8,
        max_input_len: int = 512,
        max_new_tokens: int = 128,
        graphs: bool | None = None,
        compile_backend: str = "inductor",
        prefill_tokens: int | None = None,
        max_prefill_tokens: int | None = None,
        prefix_cache_bytes: int = 0,
        prefix_block: int = 32,
        prefill_chunk: int | None = None,
    ):
        """`model`: an encore model, ready for inference (see `encore.optimize`). The cache for
        `max_batch` slots of `max_input_len` input and `max_new_tokens` output tokens is allocated
        here. `graphs`: capture the decode step (CUDA graphs on a GPU, `torch.compile` with
        `compile_backend` on the CPU); default: on CUDA only. `prefill_tokens`: requests admitted
        together are prefilled in groups of at most this many (padded) tokens (at least one request
        per group); default 1024 on the CPU, where a group's activations then stay in the caches
        (16 x 512 tokens prefill 25% faster in groups of 2 than in one batch), 16384 on a GPU.
        `max_prefill_tokens`: a step admits queued requests while their prompts (distinct ones) sum to at
        most this many tokens (always at least one request), so a burst of arrivals does not stall the
        running requests' next token for all their prefills at once; default: no limit.
        `prefix_cache_bytes` > 0 (decoder-only): keep the K/V of prompts and replies in blocks of
        `prefix_block` tokens (`encore.infer.prefix.PrefixStore`, LRU within that many bytes) and
        prefill a prompt that starts with a stored prefix from where the prefix ends. `prefill_chunk` N:
        a prompt longer than N tokens prefilled over several steps, N tokens' worth each, between the
        decode steps (`encore.infer.chunked`); default None: every prompt in one piece."""
        for name, value in (("max_batch", max_batch), ("max_input_len", max_input_len)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Engine {name} must be a positive integer, got {value!r}")
        check_max_new_tokens(max_new_tokens, low=1)
        for name, value in (("max_prefill_tokens", max_prefill_tokens), ("prefill_chunk", prefill_chunk)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"Engine {name} must be a positive integer or None, got {value!r}")
        config = model.config
        longest = config.positions_needed(max_input_len, max_new_tokens)
        if config.encoder_input == "audio":  # the encoder reads 30-s windows; the decoder has its own positions
            frames = config.encoder_config().max_seq_len
            if max_input_len != frames:
                raise ValueError(f"Engine max_input_len must be the encoder's {frames} positions for a speech model")
            longest = max_new_tokens
        if longest > config.max_seq_len:
            raise ValueError(
                f"Engine max_input_len {max_input_len} and max_new_tokens {max_new_tokens} need {longest} "
                f"positions, more than the model's max_seq_len={config.max_seq_len}"
            )
        self.model = model.eval()
        self.config = config
        self.max_batch, self.max_input_len, self.max_new_tokens = max_batch, max_input_len, max_new_tokens
        self.device = model.embed.weight.device
        self.prefill_tokens = prefill_tokens or (16384 if self.device.type == "cuda" else 1024)
        self.max_prefill_tokens = max_prefill_tokens
        self.cache = model.new_cache(max_batch, max_input_len, max_new_tokens)
        if self.cache.cross_k is not None:
            self.cache.cross_mask = torch.zeros(max_batch, max_input_len, dtype=torch.bool, device=self.device)
            self.cache.cross_from = torch.arange(max_batch, device=self.device)  # a beam slot: its request's first
        self.tokens = torch.zeros(max_batch, dtype=torch.long, device=self.device)  # each slot's next input
        self.slots: list[_Request | None] = [None] * max_batch
        self.prefilled_rows = 0  # prompts prefilled so far (requests sharing a prompt count once)
        self.queue: deque[_Request] = deque()
        self._ids = itertools.count()
        self.prefix = None
        if prefix_cache_bytes and config.arch == "deconly":
            from encore.infer.prefix import PrefixStore

            self.prefix = PrefixStore(prefix_block, prefix_cache_bytes)
        self.chunks = None if prefill_chunk is None else ChunkedPrefill(model, self.cache, prefill_chunk)
        self._graphs = None
        if graphs or (graphs is None and self.device.type == "cuda"):
            from encore.infer.graphs import GraphedStep

            self._graphs = GraphedStep(model, self.cache, self.tokens, backend=compile_backend)

    # --- requests ------------------------------------------------------------------------------------

    def add(
        self,
        input_ids: Sequence[int] | Tensor,
        max_new_tokens: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        eos_token_id: int | list[int] | None | _FromConfig = FROM_CONFIG,
        logprobs: int | None = None,
        logprobs_mode: str = "raw",
        decoder_prompt: Sequence[int] | None = None,
        logits_rule: Callable[[Tensor, list[list[int]]], None] | None = None,
        prompt_probs: tuple[int, Sequence[int]] | None = None,
        generator: torch.Generator | None = None,
        **processing: Any,
    ) -> int:
        """Queue a request; returns its id. `input_ids`: a 1-D sequence of token ids (list or LongTensor),
        laid out as the model expects (`encore.data.prompt_ids`); for a speech model (Whisper), the
        window's log-mel features [M, 3000] and `decoder_prompt` its decoder's first tokens.
        `processing`: the logits processors `generate` takes (`encore.infer.processors`) and its beam
        settings (`num_beams`, `length_penalty`, `early_stopping`, `num_return_sequences`), over the
        checkpoint's generation config (a sampling request that names no `num_beams` samples).
        `logprobs` N >= 0: each event carries its token's log-probability and the N likeliest, under the
        model's distribution (`logprobs_mode` "raw") or after the processors ("processed", before the
        temperature: what Whisper's fallback reads). `logits_rule(logits [n, V], tokens so far per row)`
        edits the request's logits rows in place after the processors (Whisper's timestamp rules).
        `prompt_probs` (position, token ids): the request's last event carries those tokens'
        probabilities at that decoder-prompt position (Whisper's no-speech probability). `generator`:
        sample with it instead of one seeded with `seed` (a caller's stream of requests). Bad input
        raises ValueError naming what is wrong, and nothing is queued."""
        features = None
        if self.config.encoder_input == "audio":
            shape = (self.config.audio_mels, 2 * self.max_input_len)
            features = log_mel_window(input_ids, shape).to(self.device, self.model.embed.weight.dtype)
            ids = token_ids(decoder_prompt, self.config.vocab_size, "decoder_prompt")
        else:
            if decoder_prompt is not None or prompt_probs is not None:
                raise ValueError("decoder_prompt and prompt_probs are for a speech model's requests")
            ids = token_ids(input_ids, self.config.vocab_size, "input_ids", self.max_input_len)
        max_new = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        check_max_new_tokens(max_new, low=1)
        if (max_new if features is None else len(ids) - 1 + max_new) > self.max_new_tokens:  # (the prompt's too)
            what = "" if features is None else f" + the decoder prompt's {len(ids)} - 1"
            raise ValueError(f"max_new_tokens {max_new}{what} is more than this engine's {self.max_new_tokens}")
        if logprobs_mode not in ("raw", "processed"):
            raise ValueError(f"logprobs_mode must be 'raw' or 'processed', got {logprobs_mode!r}")
        if prompt_probs is not None:
            position, wanted = prompt_probs
            if not isinstance(position, int) or not 0 <= position < len(ids):
                raise ValueError(f"prompt_probs position {position!r} is outside the decoder prompt's {len(ids)}")
            prompt_probs = (position, token_ids(wanted, self.config.vocab_size, "prompt_probs ids"))
        sampling = Sampling(do_sample, temperature, top_k, top_p, seed).check()
        eos = resolve_eos(eos_token_id, self.config)
        beams = beam_settings(self.model, processing, do_sample)
        if beams.num_beams > self.max_batch:
            raise ValueError(f"num_beams {beams.num_beams} is more than this engine's {self.max_batch} slots")
        if logprobs is not None:
            if (
                isinstance(logprobs, bool)
                or not isinstance(logprobs, int)
                or not 0 <= logprobs <= self.config.vocab_size
            ):
                raise ValueError(f"logprobs must be an integer in [0, {self.config.vocab_size}], got {logprobs!r}")
            if beams.num_beams > 1:
                raise ValueError("logprobs is not given for beam search: a beam request returns its sequences' scores")
        processors = request_processors(self.model, processing, len(ids))
        generator = generator if generator is not None else sampling.generator(self.device)
        request = _Request(next(self._ids), ids, max_new, sampling, eos, generator, processors, beams, logprobs)
        request.features, request.rule, request.probs_asked = features, logits_rule, prompt_probs
        request.processed_logprobs = logprobs_mode == "processed"
        request.input_len = len(ids) if features is None else self.max_input_len
        self.queue.append(request)
        return request.id

    def _cross_positions(self, r: _Request) -> int:
        """Cross-attention positions a request reads: its input's (a speech window's encoder frames)."""
        return self.max_input_len if r.features is not None else self.config.cache_positions(len(r.ids), 0)[1]

    def cancel(self, request_id: int) -> bool:
        """Drop a queued request or free a running one's slot at once; False if it is not here (finished
        or unknown)."""
        for request in self.queue:
            if request.id == request_id:
                self.queue.remove(request)
                return True
        for request in self.slots:
            if request is not None and request.id == request_id:
                self._release(request)
                return True
        return False

    def _release(self, r: _Request) -> None:
        """Free `r`'s slots; with prefix reuse, keep the K/V of what it wrote (prompt + reply so far)."""
        for slot in r.slots:
            self.slots[slot] = None
        if r.pending:
            self.chunks.drop(r)
        if self.prefix is not None and r.search is None:
            written = (r.ids + r.tokens)[: r.cache_len]
            self.prefix.put(written, self.cache.k[:, r.slot], self.cache.v[:, r.slot])

    def has_work(self) -> bool:
        return bool(self.queue) or any(r is not None for r in self.slots)

    @property
    def running(self) -> int:
        return sum(r is not None for r in self.slots)

    @property
    def queued(self) -> int:
        return len(self.queue)

    def kv_bytes_in_use(self) -> int:
        """Bytes of K/V the running requests have written (their positions so far, cross K/V included)."""
        per_position = GenerationCache.bytes_for(self.config, 0, 1, self.cache.k.element_size())  # one position
        used = 0
        for r in self._running():
            used += per_position * (r.cache_len + self._cross_positions(r)) * len(r.slots)
        return used

    def _running(self) -> list[_Request]:
        """The running requests (not those still prefilled in pieces), each once, in slot order."""
        return [r for i, r in enumerate(self.slots) if r is not None and r.slot == i and not r.pending]

    # --- the step ------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[Event]:
        """Admit queued requests into free slots (prefill: their first token), then one decode step for
        every running slot. Returns the events of this step, in slot order within each phase."""
        events = self.admit()
        return events + self.decode()

    def admit(self) -> list[Event]:
        """Phase 1 of `step`: prefill queued requests into free slots, and this step's pieces of the
        prompts prefilled in pieces (`prefill_chunk`); the first tokens of those whose prefill completed."""
        free = [i for i, r in enumerate(self.slots) if r is None]
        batch: list[_Request] = []
        prompts: set[tuple] = set()
        tokens = seats = 0
        while self.queue and seats + self.queue[0].beams.num_beams <= len(free):  # a beam request: K slots
            ids = self.queue[0].key
            cost = 0 if ids in prompts else self.queue[0].input_len
            if batch and self.max_prefill_tokens is not None and tokens + cost > self.max_prefill_tokens:
                break
            batch.append(self.queue.popleft())
            prompts.add(ids)
            tokens += cost
            seats += batch[-1].beams.num_beams
        events: list[Event] = []
        fresh = []
        keys = [r.key for r in batch]
        for r in batch:  # a prompt that starts with a stored prefix is prefilled from its end
            n = self.prefix.match(r.ids) if self.prefix is not None else 0
            if self.chunks is not None and keys.count(r.key) == 1 and self.chunks.takes(r, n):
                self._seat(r, free)
                self.chunks.begin(r, n, self.prefix.gather(r.ids, n) if n else None)
            elif n:
                events += self._prefill_after(r, n, self._seat(r, free))
            else:
                fresh.append(r)
        for group in self._groups(fresh):
            events += self._prefill(group, [self._seat(r, free) for r in group])
        return events + self._pieces()

    def _pieces(self) -> list[Event]:
        """This step's pieces of the prompts prefilled in pieces; first tokens of those now complete."""
        done = self.chunks.advance() if self.chunks is not None and self.chunks.pending else []
        for r, _ in done:
            if self.prefix is not None:  # as `_prefill` does
                self.prefix.put(r.ids, self.cache.k[:, r.slot], self.cache.v[:, r.slot])
        self.prefilled_rows += len(done)
        return self._first([r for r, _ in done], torch.cat([logits for _, logits in done])) if done else []

    def _seat(self, r: _Request, free: list[int]) -> list[int]:
        """Give `r` its slots (one, or a beam request's K) from `free` (taken out of it)."""
        r.slots = [free.pop(0) for _ in range(r.beams.num_beams)]
        r.slot = r.slots[0]
        for slot in r.slots:
            self.slots[slot] = r
        if self.cache.cross_from is not None:  # the beams read the first slot's copy of the cross K/V
            self.cache.cross_from[r.slots] = r.slot
        return r.slots

    def _prefill_after(self, r: _Request, n: int, slots: list[int]) -> list[Event]:
        """Prefill `r` after its first `n` tokens, whose K/V the prefix store holds, into its `slots`."""
        past_k, past_v = self.prefix.gather(r.ids, n)
        ids = torch.tensor([r.ids[n:]], device=self.device)
        logits, fresh = self.model.prefill_after(ids, past_k, past_v, 1)
        self.cache.install(fresh, slots, [0] * len(slots))
        r.cache_len = len(r.ids)
        self.prefilled_rows += 1
        return self._first([r], logits)

    def _groups(self, batch: list[_Request]) -> list[list[_Request]]:
        """Consecutive requests, at most `prefill_tokens` padded tokens per group."""
        groups: list[list[_Request]] = []
        for r in batch:
            group = groups[-1] if groups else None
            if group and (len(group) + 1) * max(g.input_len for g in (r, *group)) <= self.prefill_tokens:
                group.append(r)
            else:
                groups.append([r])
        return groups

    def _prefill(self, group: list[_Request], slots: list[list[int]]) -> list[Event]:
        """Prefill `group` together (right-padded), copy its cache into each request's `slots`, sample
        first tokens. Requests with the same prompt (n samples of one prompt, a beam request's K rows)
        share one prefill: one encoder pass and one cross-K/V projection, copied into each slot."""
        if group[0].features is not None:
            return self._prefill_speech(group, slots)
        prompts = list(dict.fromkeys(r.key for r in group))
        rows = [prompts.index(r.key) for r in group]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, : len(p)] = torch.tensor(p)
            mask[row, : len(p)] = 1
        # a cache for the first token only: the slots hold room for the rest
        logits, fresh = self.model.prefill(ids.to(self.device), mask.to(self.device), 1)
        self.cache.install(fresh, [s for seats in slots for s in seats], [row for r, row in zip(group, rows)
                                                                             for _ in r.slots])  # fmt: skip
        for r in group:
            r.cache_len = self.config.cache_positions(len(r.ids), 0)[0]  # written by the prefill
            if self.prefix is not None:  # the prompt's blocks, for requests that share them meanwhile
                self.prefix.put(r.ids, self.cache.k[:, r.slot], self.cache.v[:, r.slot])
        self.prefilled_rows += len(prompts)
        return self._first(group, logits[rows])

    def _prefill_speech(self, group: list[_Request], slots: list[list[int]]) -> list[Event]:
        """Speech windows: one encoder pass over their features [B, M, 3000], their decoder prompts
        right-padded (each row causal: its padding comes after what it reads) and its own length kept;
        logits at each row's last prompt token and the position its `prompt_probs` asked about."""
        width = max(len(r.ids) for r in group)
        prompt = torch.tensor([r.ids + [r.ids[-1]] * (width - len(r.ids)) for r in group], device=self.device)
        asked = [r.probs_asked[0] if r.probs_asked is not None else 0 for r in group]
        at = torch.tensor([[a, len(r.ids) - 1] for a, r in zip(asked, group)], device=self.device)  # [B, 2]
        features = torch.stack([r.features for r in group])
        both, fresh = self.model.prefill(features, None, 1, decoder_prompt=prompt, logits_at=at)  # [B, 2, V]
        fresh.length = torch.tensor([len(r.ids) for r in group], device=self.device)
        self.cache.install(fresh, [s for seats in slots for s in seats], [i for i, r in enumerate(group)
                                                                          for _ in r.slots])  # fmt: skip
        probs = torch.softmax(both[:, 0].float(), dim=-1)
        for i, r in enumerate(group):
            r.cache_len = len(r.ids)
            if r.probs_asked is not None:
                r.prompt_probs = probs[i, r.probs_asked[1]].tolist()
        self.prefilled_rows += len(group)
        return self._first(group, both[:, 1])

    def _first(self, requests: list[_Request], logits: Tensor) -> list[Event]:
        """First tokens from the prefill's `logits` (a row per request): sampled, or a beam search begun."""
        plain = [i for i, r in enumerate(requests) if r.beams.num_beams == 1]
        events = self._emit([requests[i] for i in plain], logits[plain]) if plain else []
        beams = [i for i, r in enumerate(requests) if r.beams.num_beams > 1]
        for i in beams:
            r = requests[i]
            r.search = Search(1, len(r.slots), logits.shape[-1], r.max_new_tokens, r.beams, r.eos or ())
        if beams:  # each beam row starts from its request's one row (the search continues the first)
            rows = [i for i in beams for _ in requests[i].slots]
            events += self._beam_steps([requests[i] for i in beams], logits[rows])
        return events

    def _start(self, r: _Request) -> list[int]:
        """What its processors' history starts with: the decoder's prompt (speech) or `sequence_start`."""
        return list(r.ids) if r.features is not None else sequence_start(self.config, r.ids)

    def _process(self, r: _Request, logits: Tensor) -> Tensor:
        """A request's logits processors over its row [1, V] (its history: the decoder's start token or
        the prompt, then its tokens)."""
        eos = r.eos or self.config.eos_token_ids
        history = [self._start(r) + r.tokens]
        return r.processors(logits, history, r.produced, r.produced == r.max_new_tokens - 1, eos)

    @staticmethod
    def _apply_rules(requests: list[_Request], logits: Tensor) -> None:
        """Each logits rule over its requests' rows of `logits` at once (requests share one: a server's
        Whisper windows), in place."""
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            if r.rule is not None:
                groups.setdefault(id(r.rule), []).append(i)
        for rows in groups.values():
            part = logits[rows]
            requests[rows[0]].rule(part, [requests[i].tokens for i in rows])
            logits[rows] = part

    def decode(self) -> list[Event]:
        """Phase 2 of `step`: one decode step for every running slot; one token each."""
        running = self._running()
        if not running:
            return []
        rows = max(i for i, r in enumerate(self.slots) if r is not None) + 1
        if self._graphs is not None:
            logits = self._graphs(rows)
        else:
            self_len = max(r.cache_len for r in self.slots if r is not None) + 1  # (pending slots': see chunked)
            cross_len = max(self._cross_positions(r) for r in running) or None
            view = self.cache.view(rows, self_len, cross_len)
            logits = self.model.decode_step(self.tokens[:rows], view)
        for r in running:
            r.cache_len += 1
        plain = [r for r in running if r.search is None]
        events = self._emit(plain, logits[[r.slot for r in plain]] if rows != len(plain) else logits) if plain else []
        beams = [r for r in running if r.search is not None]
        if beams:
            events += self._beam_steps(beams, logits[[slot for r in beams for slot in r.slots]])
        return events

    def _beam_steps(self, requests: list[_Request], logits: Tensor) -> list[Event]:
        """One step of the beam requests `requests` from their slots' rows of `logits` (in that order),
        batched: one log-softmax and one row-wise top-k over all their rows, one read to the host, each
        search advanced there (`encore.infer.search`), then one copy of the self-attention rows whose
        hypothesis now continues another's (over the positions written), one write of the next tokens.
        A request that ends gives its one event."""
        scores = torch.log_softmax(logits.float(), dim=-1)
        at = 0
        for r in requests:
            n = len(r.slots)
            if r.processors.active:
                history = [self._start(r) + h for h in r.search.histories()]
                last, eos = r.produced == r.max_new_tokens - 1, r.eos or self.config.eos_token_ids
                scores[at : at + n] = r.processors(scores[at : at + n], history, r.produced, last, eos)
            if r.rule is not None:  # (its bans on log-probabilities; the rows renormalised after it)
                r.rule(scores[at : at + n], r.search.histories())
                scores[at : at + n] = torch.log_softmax(scores[at : at + n], dim=-1)
            at += n
        keep = min(max(r.search.keep for r in requests), scores.shape[-1])
        row_scores, row_tokens = (t.cpu().numpy() for t in scores.topk(keep, dim=-1))  # [rows, keep]
        events, dst, src, slots, tokens, written, at = [], [], [], [], [], 0, 0
        for r in requests:
            n, search = len(r.slots), r.search
            source = search.advance(*search.merge(row_scores[at : at + n], row_tokens[at : at + n]), r.produced)
            at += n
            r.produced += 1
            if not search.going(r.produced - 1):
                events.append(self._beam_result(r))
                continue
            for slot, s in zip(r.slots, source.tolist()):  # only rows whose hypothesis continues another's
                if r.slots[s] != slot:
                    dst.append(slot), src.append(r.slots[s])
                    written = max(written, r.cache_len)
            slots += r.slots
            tokens.append(search.tokens())
        if dst:  # a beam's positions past its request's length are never read before they are written
            dst_t, src_t = torch.tensor(dst, device=self.device), torch.tensor(src, device=self.device)
            self.cache.k[:, dst_t, :, :written] = self.cache.k[:, src_t, :, :written]
            self.cache.v[:, dst_t, :, :written] = self.cache.v[:, src_t, :, :written]
        if slots:
            self.tokens[slots] = torch.from_numpy(np.concatenate(tokens)).to(self.device)
        return events

    def _beam_result(self, r: _Request) -> Event:
        """A finished beam request's one event; its slots freed."""
        sequences, scores = r.search.sequences()
        r.tokens = best = sequences[0]
        reason = STOP if r.eos is not None and best and best[-1] in r.eos else LENGTH
        self._release(r)
        return Event(r.id, best[-1], True, reason, tokens=best, sequences=sequences, scores=scores,
                     prompt_probs=r.prompt_probs)  # fmt: skip

    def _emit(self, requests: list[_Request], logits: Tensor) -> list[Event]:
        """Sample each request's next token from its row of `logits`, record it, free finished slots."""
        raw = logits
        processed = [i for i, r in enumerate(requests) if r.processors.active]
        ruled = any(r.rule is not None for r in requests)
        if processed or ruled:
            logits = logits.clone()
            for i in processed:
                logits[i : i + 1] = self._process(requests[i], logits[i : i + 1])
            if ruled:
                self._apply_rules(requests, logits)
        greedy = [i for i, r in enumerate(requests) if not r.sampling.do_sample]
        chosen = torch.empty(len(requests), dtype=torch.long, device=logits.device)
        if greedy:
            chosen[greedy] = logits[greedy].argmax(dim=-1)
        for i, r in enumerate(requests):
            if r.sampling.do_sample:
                chosen[i] = r.sampling.choose(logits[i : i + 1], r.generator)[0]
        self.tokens[[r.slot for r in requests]] = chosen
        logprobs = step_logprobs(requests, raw, logits, chosen)
        events = []
        for i, (r, token) in enumerate(zip(requests, chosen.tolist())):  # the step's one host read
            r.produced += 1
            r.tokens.append(token)
            reason = (
                STOP if r.eos is not None and token in r.eos else LENGTH if r.produced == r.max_new_tokens else None
            )
            finished = reason is not None
            if finished:
                self._release(r)
            logprob, top = logprobs.get(i, (None, None))
            answered = r.prompt_probs if finished else None
            events.append(Event(r.id, token, finished, reason, logprob, top, prompt_probs=answered))
        return events
