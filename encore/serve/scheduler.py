"""The server's engine thread: continuous batching for HTTP requests.

One thread owns the model and `encore.Engine`; request handlers (asyncio) talk to it through
`submit` / `cancel` and receive text deltas on their own asyncio queue. Each loop iteration moves
new requests into the engine, applies cancellations (a client that went away frees its slot at the
next step), runs one `engine.step()` (admit queued requests into free slots, one decode step for
every running one), and turns each token into text: incremental detokenization, `stop` strings,
finish reasons. A failing step fails the requests it was running and the loop goes on: the server
keeps serving the others.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from encore.infer.engine import Engine

log = logging.getLogger("encore.serve")
STOP, LENGTH = "stop", "length"


class QueueFull(Exception):
    """More requests wait for a slot than --max-queue allows."""


class Closed(Exception):
    """The server is shutting down and admits nothing new."""


@dataclass
class Choice:
    """One generated sequence of a request (one of its `n`, for one of its prompts)."""

    index: int
    ids: list[int]  # the prompt's input ids
    seed: int | None
    rid: int | None = None  # the engine's request id once added
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of text already sent
    finish_reason: str | None = None
    t_last: float = 0.0
    logprobs: list[tuple[int, float, list]] = field(default_factory=list)  # (token, log-prob, top) not yet sent
    logprob_sum: float = 0.0  # of its tokens (`best_of` keeps the best by the mean)


@dataclass
class Job:
    """One HTTP completion request: its choices, settings, and where its updates go."""

    choices: list[Choice]
    max_tokens: int
    sampling: dict[str, Any]  # do_sample, temperature, top_k, top_p, and the logits processors' keywords
    stop: list[str]
    loop: asyncio.AbstractEventLoop
    updates: asyncio.Queue  # (choice index, text delta, finish_reason or None, [(token, log-prob, top)])
    t_arrival: float = field(default_factory=time.perf_counter)
    per_request: int = 1  # choices one engine request serves: a beam request's n returned sequences
    group: int = 1  # choices per prompt (n, or best_of)
    keep: int = 0  # best_of: the choices of each prompt kept (its `n`; 0: all)
    report_logprobs: bool = False  # the answer carries each token's log-probs

    @property
    def done(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)


class Scheduler:
    def __init__(self, model: Any, tokenizer: Any, engine: Engine, max_queue: int, metrics: Any):
        self.model, self.tokenizer, self.engine, self.max_queue, self.metrics = (
            model,
            tokenizer,
            engine,
            max_queue,
            metrics,
        )
        self.eos = set(model.config.eos_token_ids)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._incoming: list[Job] = []
        self._cancelled: list[Job] = []
        self._running: dict[int, tuple[Job, list[Choice]]] = {}  # engine request id -> its job and choices
        self._closing = False
        self._cut_at = float("inf")
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="encore-engine", daemon=True)
        metrics.slots_total.set(engine.max_batch)
        metrics.kv_reserved.set(engine.cache.nbytes)

    # --- the handlers' side (any thread) -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def closing(self) -> bool:
        return self._closing

    def waiting(self) -> int:
        """Choices waiting for a slot (queued in the engine or not yet handed to it)."""
        with self._lock:
            return self._waiting()

    def _waiting(self) -> int:  # with the lock held
        return self.engine.queued + sum(len(j.choices) // j.per_request for j in self._incoming)

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closing:
                raise Closed()
            free = self.engine.max_batch - self.engine.running
            if self._waiting() + len(job.choices) // job.per_request > self.max_queue + free:
                raise QueueFull()
            self._incoming.append(job)
        self._wake.set()

    def cancel(self, job: Job) -> None:
        with self._lock:
            self._cancelled.append(job)
        self._wake.set()

    def close(self, grace_s: float) -> None:
        """Admit nothing new; running and queued requests go on for up to `grace_s` seconds, then the
        rest are cut (finish_reason "length", with the text so far). Returns at once."""
        with self._lock:
            if not self._closing:
                self._closing, self._cut_at = True, time.monotonic() + grace_s
        self._wake.set()

    def stop(self) -> None:
        """Cut whatever still runs and end the engine thread."""
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    # --- the engine thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop:
            self._take_requests()
            if self._closing and time.monotonic() >= self._cut_at and self._running:
                log.info("shutdown grace over: cutting %d running request(s)", len(self._running))
                self._finish_all(LENGTH, "cut")
            if not self.engine.has_work():
                self._update_gauges()
                self._wake.wait(timeout=0.05)
                self._wake.clear()
                continue
            try:
                events = self.engine.step()
            except Exception:  # a bug: fail what was running, keep serving
                log.exception("engine step failed; failing its running requests")
                self._fail_running()
                continue
            now = time.perf_counter()
            for event in events:
                if event.request_id in self._running:
                    job, choices = self._running[event.request_id]
                    if event.sequences is None:
                        self._advance(job, choices[0], event, now)
                    else:  # a beam request: its sequences at once, one per choice
                        self._running.pop(event.request_id)
                        for choice, sequence in zip(choices, event.sequences):
                            self._advance(job, choice, event, now, sequence)
            self._update_gauges()
        self._cut_all()

    def _take_requests(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, []
            cancelled, self._cancelled = self._cancelled, []
        for job in incoming:
            for start in range(0, len(job.choices), job.per_request):
                served = job.choices[start : start + job.per_request]
                first = served[0]
                try:
                    rid = self.engine.add(first.ids, max_new_tokens=job.max_tokens, seed=first.seed, **job.sampling)
                except ValueError as e:  # checked by the handler already; a safety net, not a crash
                    log.error("request refused by the engine: %s", e)
                    for choice in served:
                        choice.finish_reason = "error"
                        job.loop.call_soon_threadsafe(job.updates.put_nowait, (choice.index, "", "error", []))
                    continue
                for choice in served:
                    choice.rid = rid
                self._running[rid] = (job, served)
            self.metrics.prompt_tokens.inc(sum(len(c.ids) for c in job.choices))
        for job in cancelled:
            unfinished = [c for c in job.choices if c.finish_reason is None]
            for choice in unfinished:
                self.engine.cancel(choice.rid)
                self._running.pop(choice.rid, None)
                choice.finish_reason = "cancelled"
            if unfinished:
                self.metrics.requests.labels("cancelled").inc()

    def _advance(self, job: Job, choice: Choice, event: Any, now: float, sequence: list[int] | None = None) -> None:
        """One token of a choice (or a beam request's whole `sequence`): text delta (held back while it
        may still grow into a stop string or complete a character), finish reason, log-probs, metrics."""
        if choice.t_last == 0.0:
            self.metrics.ttft.observe(now - job.t_arrival)
        else:
            self.metrics.inter_token.observe(now - choice.t_last)
        choice.t_last = now
        reason = event.finish_reason if event.finished else None
        if sequence is not None:
            ended = bool(sequence) and sequence[-1] in self.eos
            choice.tokens, reason = sequence[:-1] if ended else list(sequence), STOP if ended else LENGTH
            self.metrics.generation_tokens.inc(len(sequence))
        else:
            self.metrics.generation_tokens.inc()
            if not (event.finish_reason == STOP and event.token in self.eos):  # the closing EOS is no text
                choice.tokens.append(event.token)
                if event.logprob is not None:
                    choice.logprobs.append((event.token, event.logprob, event.top_logprobs))
                    choice.logprob_sum += event.logprob
        text = self.tokenizer.decode(choice.tokens, skip_special_tokens=True)
        for stop in job.stop:
            hit = text.find(stop, max(0, choice.sent - len(stop)))
            if hit != -1:
                text, reason = text[:hit], STOP
                if not event.finished:
                    self.engine.cancel(choice.rid)
        if reason is None:
            hold = max((len(s) - 1 for s in job.stop), default=0)
            end = len(text) - hold
            while end > choice.sent and text[end - 1] == "\ufffd":  # a character still being completed
                end -= 1
            text = text[: max(end, choice.sent)]
        delta, choice.sent = text[choice.sent :], max(choice.sent, len(text))
        if reason is not None:
            choice.finish_reason = reason
            self._running.pop(choice.rid, None)
            if job.done:
                self.metrics.requests.labels("finished").inc()
                self.metrics.duration.observe(now - job.t_arrival)
        if delta or reason is not None:
            logprobs, choice.logprobs = choice.logprobs, []
            job.loop.call_soon_threadsafe(job.updates.put_nowait, (choice.index, delta, reason, logprobs))

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(self.waiting())
        self.metrics.slots_in_use.set(self.engine.running)
        self.metrics.kv_in_use.set(self.engine.kv_bytes_in_use())

    def _finish_all(self, reason: str, outcome: str) -> None:
        """End every request the engine holds with `reason`, sending the text held back so far."""
        jobs = {id(job): job for job, _ in self._running.values()}
        for rid, (job, choices) in list(self._running.items()):
            self.engine.cancel(rid)
            for choice in choices:
                choice.finish_reason = reason
                text = self.tokenizer.decode(choice.tokens, skip_special_tokens=True).rstrip("\ufffd")
                delta, logprobs = (text[choice.sent :], choice.logprobs) if reason != "error" else ("", [])
                job.loop.call_soon_threadsafe(job.updates.put_nowait, (choice.index, delta, reason, logprobs))
        for _ in jobs:
            self.metrics.requests.labels(outcome).inc()
        self._running.clear()

    def _fail_running(self) -> None:
        self._finish_all("error", "failed")

    def _cut_all(self) -> None:
        self._take_requests()
        self._finish_all(LENGTH, "cut")
