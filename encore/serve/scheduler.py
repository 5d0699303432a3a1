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


@dataclass
class Job:
    """One HTTP completion request: its choices, settings, and where its updates go."""

    choices: list[Choice]
    max_tokens: int
    sampling: dict[str, Any]  # do_sample, temperature, top_k, top_p, and the logits processors' keywords
    stop: list[str]
    loop: asyncio.AbstractEventLoop
    updates: asyncio.Queue  # (choice index, text delta, finish_reason or None)
    t_arrival: float = field(default_factory=time.perf_counter)

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
        self._running: dict[int, tuple[Job, Choice]] = {}  # engine request id -> its job and choice
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
        return self.engine.queued + sum(len(j.choices) for j in self._incoming)

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closing:
                raise Closed()
            free = self.engine.max_batch - self.engine.running
            if self._waiting() + len(job.choices) > self.max_queue + free:
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
                    self._advance(*self._running[event.request_id], event, now)
            self._update_gauges()
        self._cut_all()

    def _take_requests(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, []
            cancelled, self._cancelled = self._cancelled, []
        for job in incoming:
            for choice in job.choices:
                try:
                    choice.rid = self.engine.add(
                        choice.ids, max_new_tokens=job.max_tokens, seed=choice.seed, **job.sampling
                    )
                except ValueError as e:  # checked by the handler already; a safety net, not a crash
                    log.error("request refused by the engine: %s", e)
                    choice.finish_reason = "error"
                    job.loop.call_soon_threadsafe(job.updates.put_nowait, (choice.index, "", "error"))
                    continue
                self._running[choice.rid] = (job, choice)
            self.metrics.prompt_tokens.inc(sum(len(c.ids) for c in job.choices))
        for job in cancelled:
            unfinished = [c for c in job.choices if c.finish_reason is None]
            for choice in unfinished:
                self.engine.cancel(choice.rid)
                self._running.pop(choice.rid, None)
                choice.finish_reason = "cancelled"
            if unfinished:
                self.metrics.requests.labels("cancelled").inc()

    def _advance(self, job: Job, choice: Choice, event: Any, now: float) -> None:
        """One token of a choice: text delta (held back while it may still grow into a stop string or
        complete a character), finish reason, metrics."""
        if choice.t_last == 0.0:
            self.metrics.ttft.observe(now - job.t_arrival)
        else:
            self.metrics.inter_token.observe(now - choice.t_last)
        choice.t_last = now
        self.metrics.generation_tokens.inc()
        if not (event.finish_reason == STOP and event.token in self.eos):  # the closing EOS is no text
            choice.tokens.append(event.token)
        text = self.tokenizer.decode(choice.tokens, skip_special_tokens=True)
        reason = event.finish_reason if event.finished else None
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
            job.loop.call_soon_threadsafe(job.updates.put_nowait, (choice.index, delta, reason))

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(self.waiting())
        self.metrics.slots_in_use.set(self.engine.running)
        self.metrics.kv_in_use.set(self.engine.kv_bytes_in_use())

    def _finish_all(self, reason: str, outcome: str) -> None:
        """End every request the engine holds with `reason`, sending the text held back so far."""
        jobs = {id(job): job for job, _ in self._running.values()}
        for job, choice in list(self._running.values()):
            self.engine.cancel(choice.rid)
            choice.finish_reason = reason
            text = self.tokenizer.decode(choice.tokens, skip_special_tokens=True).rstrip("\ufffd")
            delta = text[choice.sent :] if reason != "error" else ""
            job.loop.call_soon_threadsafe(job.updates.put_nowait, (choice.index, delta, reason))
        for _ in jobs:
            self.metrics.requests.labels(outcome).inc()
        self._running.clear()

    def _fail_running(self) -> None:
        self._finish_all("error", "failed")

    def _cut_all(self) -> None:
        self._take_requests()
        self._finish_all(LENGTH, "cut")
