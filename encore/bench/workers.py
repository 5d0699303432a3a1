"""Where the models run while the bench times them: a `Worker` builds one backend's model and times
requests on it, in this process or in a process of its own (`ProcessWorker`: a clean heap, so peak
memory is the model's own, and the parent can interleave the models' repetitions)."""

from __future__ import annotations

import contextlib
import gc
import math
import time
from typing import Any

import torch

from encore.bench.backends import BackendSpec
from encore.bench.registry import make_backend
from encore.infer.memory import release_freed_memory, retain_freed_memory
from encore.lazy import require


def _read_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory over a block. CUDA: torch.cuda.max_memory_allocated (weights + cache + activations).
    CPU: the process's peak RSS; on Linux VmHWM reset through /proc/self/clear_refs (exact, free),
    elsewhere sampled every 2 ms by a thread."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        self._thread = None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (peak RSS) to the current RSS
            self._hwm = _read_status_kb("VmHWM") is not None
        except OSError:
            self._hwm = False
        if not self._hwm:
            self._start_sampler()
        return self

    def _start_sampler(self) -> None:
        import threading

        psutil = require("psutil", "bench")

        proc, self._stop = psutil.Process(), threading.Event()
        self.peak = proc.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(0.002):
                self.peak = max(self.peak, proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._hwm:
            self.peak = _read_status_kb("VmHWM") or 0
        else:
            self._stop.set()
            self._thread.join()
            psutil = require("psutil", "bench")

            self.peak = max(self.peak, psutil.Process().memory_info().rss)


def _release_memory(device: torch.device) -> None:
    """Give freed model memory back, so the next model's peak RSS is its own."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
    else:
        release_freed_memory()


class Worker:
    """Builds one backend's model in this process and times requests on it."""

    def __init__(self, spec: BackendSpec, threads: int):
        torch.set_num_threads(threads)
        if spec.retain_memory:
            retain_freed_memory()
        self.backend = make_backend(spec)
        self.device = torch.device(spec.device)
        self.seed = spec.seed
        self.model = self.backend.build()
        self.params = self.backend.params(self.model)

    def wait_ready(self) -> int:
        return self.params

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self, method)(*args)

    def _ids(self, batch_size: int, input_len: int) -> torch.Tensor:
        """The same random ids [batch_size, input_len] for every request of a point (seeded by its length)."""
        vocab = self.backend.cost_config.vocab_size
        gen = torch.Generator().manual_seed(self.seed + input_len)
        low = min(3, vocab - 1)  # skip pad / bos / eos where the vocabulary allows
        return torch.randint(low, vocab, (batch_size, input_len), generator=gen).to(self.device)

    def run(self, batch_size: int, input_len: int, n: int, capacity: int) -> dict[str, float]:
        """One timed request: n tokens per row from the same random ids every time (an engine sizes its
        cache for `capacity` >= n new tokens: the point's, so warm-up and timed runs share it)."""
        ids = self._ids(batch_size, input_len)
        cpu0 = time.process_time()
        with torch.inference_mode(), PeakMemory(self.device) as mem:
            t = self.backend.timed_generate(self.model, ids, n, capacity)
        if t.tokens != n:
            raise RuntimeError(f"{self.backend.label}: generated {t.tokens} tokens per row, expected exactly {n}")
        wall = t.t_last - t.t_call
        decode = None if t.t_first is None else t.t_last - t.t_first
        rate = None if decode is None else batch_size * (n - 1) / decode if decode > 0 else math.inf
        return {
            "first_token_latency_s": None if t.t_first is None else t.t_first - t.t_call,
            "decode_tokens_per_s": rate,
            "throughput_tokens_per_s": batch_size * n / wall,
            "intervals": t.intervals,
            "peak": mem.peak,
            # CPU time over (wall time x threads): well under 1 when other processes take the cores
            "cpu_utilization": (time.process_time() - cpu0) / (wall * torch.get_num_threads()),
        }

    def profile_prefill(self, batch_size: int, input_len: int, peak_ops: float | None) -> dict[str, Any]:
        """Where one prefill of the point's ids goes (`encore.bench.prefill_profile`)."""
        from encore.bench.prefill_profile import profile_prefill

        return profile_prefill(self.model, self._ids(batch_size, input_len), peak_ops)

    def kv_bytes(self, batch_size: int, input_len: int, output_len: int) -> int:
        return self.backend.kv_cache_bytes(self.model, batch_size, input_len, output_len)

    def close(self) -> None:
        self.model = None
        _release_memory(self.device)


def _serve(conn, spec: BackendSpec, threads: int) -> None:
    """A worker process: build, then answer (method, args) requests until told to stop."""
    try:
        worker = Worker(spec, threads)
        conn.send(("ok", worker.params))
        while True:
            message = conn.recv()
            if message is None:
                return
            conn.send(("ok", worker.call(*message)))
    except Exception as e:  # the parent re-raises it with the same type when it is a ValueError
        conn.send(("error", type(e).__name__, str(e)))


class ProcessWorker:
    """The same interface, in a process of its own: each model gets a clean heap, so its peak RSS is
    its own, and the parent can interleave the models' repetitions (fair under shared-machine noise)."""

    def __init__(self, spec: BackendSpec, threads: int):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, spec, threads), daemon=True)
        self.process.start()
        child.close()

    def _receive(self) -> Any:
        try:
            reply = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"bench worker died (exit code {self.process.exitcode})") from None
        if reply[0] == "error":
            raise (ValueError if reply[1] == "ValueError" else RuntimeError)(reply[2])
        return reply[1]

    def wait_ready(self) -> int:
        return self._receive()

    def call(self, method: str, *args: Any) -> Any:
        self.conn.send((method, *args))
        return self._receive()

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(None)
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
