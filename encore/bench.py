"""`encore bench`: an encoder-decoder against a decoder-only model of the same size, measured on the
machine at hand and explained by the cost model (`encore.costmodel`).

Per point (model, input length, output length, batch size) it measures time to first token, decode
tokens/s, end-to-end tokens/s, the median gap between tokens, peak memory and KV-cache bytes, and puts
the cost model's FLOPs, bytes moved and roofline predictions beside them. Python API:
``run_bench(BenchConfig(...)) -> dict`` (the JSON written by ``--json``); the command is a thin wrapper.

How a point is timed: greedy generation of exactly N tokens (EOS stopping disabled) from random token
ids, after warm-up runs. Time to first token = call -> first yielded token (encoder pass or prompt
prefill, plus the first decoder step); decode tokens/s = B * (N - 1) / (last token - first token);
end-to-end tokens/s = B * N / (call -> last token). CUDA is synchronised at the first and the last
token. Median over the repeats, with [min, max] as the spread. Each model runs in a worker process of
its own (clean peak RSS), and the models' repetitions are interleaved so that load from other
processes on a shared machine hits every model alike.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from encore.config import ModelConfig
from encore.costmodel import Machine, dtype_bytes, generation_cost, measure_machine
from encore.model.layers import CPU_LINEAR_BACKENDS, cpu_linear, set_cpu_linear

# The paper's headline (arXiv 2501.16273, 330M models): the encoder-decoder's first-token latency is
# 47% lower and its throughput 4.7x higher than the decoder-only model's.
PAPER = {"first_token_latency_reduction": 0.47, "throughput_ratio": 4.7}
SWEEP_CPU = (128, 256, 512, 1024, 2048)
SWEEP_CUDA = (128, 256, 512, 1024, 2048, 4096, 8192)
METRICS = ("first_token_latency_s", "decode_tokens_per_s", "throughput_tokens_per_s")


@dataclass
class BenchConfig:
    """What to measure. `sweep=None` means the device's default input-length sweep, `()` none."""

    model: str = "encdec-330m"  # a preset name, a config .json, or a checkpoint directory
    baseline: str | None = "deconly-330m"  # None: measure `model` alone
    input_lens: tuple[int, ...] = (512,)  # full points: `output_len` tokens, `repeats` repetitions
    output_len: int = 128
    batch_sizes: tuple[int, ...] = (1,)
    device: str = "cpu"
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    repeats: int = 3
    warmup: int = 1
    # quick points (time to first token + a short decode) at these input lengths, first batch size only
    sweep: tuple[int, ...] | None = None
    sweep_output_len: int = 16
    sweep_repeats: int = 3
    vs_hf: bool = False  # also time the same shapes built with Hugging Face transformers
    json_path: str | None = "bench.json"
    plot_path: str | None = "bench.png"
    peak_flops: float | None = None  # FLOP/s for the cost model; None: probe it
    mem_bandwidth: float | None = None  # bytes/s for the cost model; None: probe it
    threads: int | None = None  # torch.set_num_threads; None: leave torch's default
    cpu_linear: str | None = None  # encore's fp32 CPU kernel, "onednn" | "aten" (F.linear); None: encore's setting
    seed: int = 0
    progress: bool | None = None  # None: a progress bar on a terminal, none under CI / ENCORE_QUIET
    report: bool = True  # print the tables
    isolate: bool = True  # each model in a worker process of its own (False: all in this process)

    def resolved_dtype(self) -> str:
        return self.dtype or ("bfloat16" if self.device == "cuda" else "float32")

    def resolved_sweep(self) -> tuple[int, ...]:
        if self.sweep is not None:
            return tuple(self.sweep)
        return SWEEP_CUDA if self.device == "cuda" else SWEEP_CPU

    def validate(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ValueError(f"BenchConfig.{name}: {why} (got {getattr(self, name)!r})")

        if self.device not in ("cpu", "cuda"):
            fail("device", "must be 'cpu' or 'cuda'")
        if self.device == "cuda" and not torch.cuda.is_available():
            fail("device", "CUDA is not available in this torch build / on this machine")
        dtype_bytes(self.resolved_dtype())  # raises on an unknown dtype
        for name in ("input_lens", "batch_sizes"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                fail(name, "must be one or more positive integers")
        if self.sweep and any(not isinstance(v, int) or v < 1 for v in self.sweep):
            fail("sweep", "input lengths must be positive integers")
        for name in ("output_len", "sweep_output_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 2:
                fail(name, "must be an integer >= 2 (the decode rate needs a first and a last token)")
        for name, low in (("repeats", 1), ("sweep_repeats", 1), ("warmup", 0)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                fail(name, f"must be an integer >= {low}")
        if self.threads is not None and self.threads < 1:
            fail("threads", "must be >= 1")
        if self.cpu_linear is not None and self.cpu_linear not in CPU_LINEAR_BACKENDS:
            fail("cpu_linear", f"must be None or one of {CPU_LINEAR_BACKENDS}")
        for name in ("peak_flops", "mem_bandwidth"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                fail(name, "must be positive")


# --- what gets measured ---------------------------------------------------------------------------


@dataclass
class Timing:
    """One request's clock readings (perf_counter seconds) and the gaps between consecutive tokens."""

    t_call: float
    t_first: float
    t_last: float
    tokens: int  # tokens yielded per row
    intervals: list[float]  # tokens - 1 gaps (seconds); on CUDA from events, without host syncs


@dataclass
class Subject:
    """One model to time: how to build it, how to generate with timestamps, and its cost config."""

    label: str
    arch: str
    backend: str
    cost_config: ModelConfig  # the shapes the cost model prices (for HF: the equivalent encore shapes)
    build: Callable[[], Any]
    # (model, input_ids, n) -> when the call started, the first and the last token came, ...
    timed_generate: Callable[[Any, torch.Tensor, int], Timing]
    kv_cache_bytes: Callable[[Any, int, int, int], int]  # (model, batch, input_len, output_len)
    sweep: bool = True  # measured at the sweep lengths too


@dataclass(frozen=True)
class SubjectSpec:
    """A picklable recipe for one model to time; each worker process builds its own from it."""

    kind: str  # "encore" | "hf"
    model: str  # encore: preset / config .json / checkpoint dir; hf: the encore model whose shape it copies
    max_len: int  # longest input + output it will see (RoPE tables / positions must cover it)
    device: str
    dtype: str
    seed: int
    cpu_linear: str | None = None  # set in the worker before it builds (only encore models use it)


def make_subject(spec: SubjectSpec) -> Subject:
    """Cheap: resolves the config; the weights are built only by `Subject.build`."""
    device, dtype = torch.device(spec.device), getattr(torch, spec.dtype)
    if spec.kind == "encore":
        return encore_subject(spec.model, spec.max_len, device, dtype, spec.seed)
    label, config, _ = _resolve_model(spec.model, spec.max_len)
    return hf_subject(config, label, spec.max_len, device, dtype, spec.seed)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resolve_model(spec: str, max_len: int) -> tuple[str, ModelConfig, Path | None]:
    """A preset name, a config .json, or a checkpoint directory -> (label, config, weights dir)."""
    path = Path(spec)
    if spec in ModelConfig.preset_names():
        config, weights = ModelConfig.preset(spec), None
    elif path.is_dir():
        config, weights = ModelConfig.load(path / "config.json"), path
    elif path.suffix == ".json" and path.exists():
        config, weights = ModelConfig.load(path), None
    else:
        raise ValueError(
            f"model {spec!r}: not a preset ({', '.join(ModelConfig.preset_names())}), "
            "nor a config .json, nor a checkpoint directory"
        )
    if config.max_seq_len < max_len:  # random weights: RoPE tables simply cover the longest point
        if weights is not None:
            print(f"encore bench: {spec}: max_seq_len {config.max_seq_len} < {max_len}; extending RoPE tables")
        config = config.replace(max_seq_len=max_len)
    label = spec if weights is None and path.suffix != ".json" else path.stem or path.name
    return label, config, weights


def encore_subject(spec: str, max_len: int, device: torch.device, dtype: torch.dtype, seed: int) -> Subject:
    from encore import DecoderOnly, EncoderDecoder, load

    label, config, weights = _resolve_model(spec, max_len)

    def build():
        if weights is not None:
            model = load(weights, device=device, dtype=dtype)
            if model.config.max_seq_len < config.max_seq_len:
                model.config = config
                model.rope.max_seq_len = config.max_seq_len
                model.rope.reset_tables(device)
            return model.eval()
        torch.manual_seed(seed)
        with torch.device(device):
            model = (EncoderDecoder if config.arch == "encdec" else DecoderOnly)(config)
        return model.to(dtype=dtype).eval()

    def timed_generate(model, ids: torch.Tensor, n: int) -> Timing:
        cuda = device.type == "cuda"
        marks: list = []  # host clock per token on CPU; CUDA events (no host sync) on GPU
        _sync(device)
        t0 = time.perf_counter()
        t_first = None
        for _ in model.generate_stream(ids, max_new_tokens=n, eos_token_id=None, do_sample=False):
            if t_first is None:
                _sync(device)
                t_first = time.perf_counter()
            if cuda:
                marks.append(torch.cuda.Event(enable_timing=True))
                marks[-1].record()
            else:
                marks.append(time.perf_counter())
        _sync(device)
        t_last = time.perf_counter()
        if cuda:
            intervals = [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:])]
        else:
            intervals = [b - a for a, b in zip(marks, marks[1:])]
        return Timing(t0, t_first, t_last, len(marks), intervals)

    def kv_bytes(model, batch: int, input_len: int, output_len: int) -> int:
        return int(model.new_cache(batch, input_len, output_len, device=device, dtype=dtype).nbytes)

    return Subject(label, config.arch, "torch", config, build, timed_generate, kv_bytes)


# --- Hugging Face transformers: the same shapes, the library users would otherwise reach for --------


def hf_t5_config(config: ModelConfig):
    """A T5 of the encoder-decoder's shape: same widths and layer counts; T5 has no GQA (every head
    has its own K/V) and relative position buckets instead of RoPE."""
    from transformers import T5Config

    return T5Config(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        d_kv=config.head_dim,
        d_ff=config.mlp_dim,
        num_layers=config.n_encoder_layers,
        num_decoder_layers=config.n_decoder_layers,
        num_heads=config.n_heads,
        feed_forward_proj="gelu_new" if config.mlp_type == "gelu" else "gated-silu",
        dropout_rate=0.0,
        layer_norm_epsilon=config.norm_eps,
        tie_word_embeddings=True,
        use_cache=True,
        pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id,
        decoder_start_token_id=config.bos_token_id,
    )


def hf_llama_intermediate(config: ModelConfig) -> int:
    """Llama's MLP is SwiGLU (3 matrices): 2/3 of a 2-matrix GELU MLP's width keeps the parameters."""
    return config.mlp_dim if config.mlp_type == "swiglu" else round(2 * config.mlp_dim / 3)


def hf_llama_config(config: ModelConfig):
    from transformers import LlamaConfig

    class _LlamaConfig(LlamaConfig):
        # transformers 5 insists on hidden_size % num_attention_heads == 0, although the model uses
        # the explicit head_dim; our 330M shape (1024 wide, 6 heads of 64) fails that check only.
        def validate_architecture(self) -> None:
            pass

    return _LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=hf_llama_intermediate(config),
        num_hidden_layers=config.n_decoder_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        use_cache=True,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )


class _TokenClock:
    """A transformers streamer that only timestamps: the first put() is the prompt (decoder-only) or
    the decoder start token (T5), every later put() one generated token per row (already on the host,
    so CUDA work up to it is done)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def hf_subject(config: ModelConfig, label: str, max_len: int, device: torch.device, dtype: torch.dtype, seed: int):
    from transformers import GenerationConfig, LlamaForCausalLM, T5ForConditionalGeneration
    from transformers.generation.streamers import BaseStreamer

    config = config.replace(max_seq_len=max(config.max_seq_len, max_len))
    if config.arch == "encdec":
        cls, hf_config, name = T5ForConditionalGeneration, hf_t5_config(config), "hf-t5"
        cost_config = config.replace(n_kv_heads=config.n_heads)  # T5: no grouped K/V
    else:
        cls, hf_config, name = LlamaForCausalLM, hf_llama_config(config), "hf-llama"
        cost_config = config.replace(mlp_type="swiglu", mlp_dim=hf_llama_intermediate(config))

    clock_cls = type("TokenClock", (_TokenClock, BaseStreamer), {})

    def build():
        torch.manual_seed(seed)
        with torch.device(device):
            model = cls(hf_config)
        return model.to(dtype=dtype).eval()

    def timed_generate(model, ids: torch.Tensor, n: int) -> Timing:
        gen = GenerationConfig(
            max_new_tokens=n,
            min_new_tokens=n,  # EOS is suppressed until n tokens: exactly n, as our eos_token_id=None
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=config.pad_token_id,
            eos_token_id=config.eos_token_id,
            decoder_start_token_id=config.bos_token_id,
        )
        clock = clock_cls()
        mask = torch.ones_like(ids)
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, generation_config=gen, streamer=clock)
        _sync(device)
        t_end = time.perf_counter()
        tokens = clock.times[1:]  # times[0]: the prompt / start token
        intervals = [b - a for a, b in zip(tokens, tokens[1:])]
        return Timing(t0, tokens[0] if tokens else t_end, tokens[-1] if tokens else t_end, len(tokens), intervals)

    def kv_bytes(model, batch: int, input_len: int, output_len: int) -> int:
        # HF grows its cache step by step; at the end it holds what the cost model counts
        from encore.costmodel import kv_cache_bytes

        return kv_cache_bytes(cost_config, batch, input_len, output_len, dtype_bytes(dtype))

    return Subject(
        f"{name} ({label})", config.arch, "transformers", cost_config, build, timed_generate, kv_bytes, False
    )


# --- memory -----------------------------------------------------------------------------------------


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

        import psutil

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
            import psutil

            self.peak = max(self.peak, psutil.Process().memory_info().rss)


def _release_memory(device: torch.device) -> None:
    """Give freed model memory back, so the next model's peak RSS is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif platform.system() == "Linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class Point:
    input_len: int
    batch_size: int
    output_len: int
    repeats: int
    warmup: int
    kind: str  # "full" | "sweep"


def plan_points(cfg: BenchConfig) -> list[Point]:
    points = [
        Point(s, b, cfg.output_len, cfg.repeats, cfg.warmup, "full") for b in cfg.batch_sizes for s in cfg.input_lens
    ]
    full = {(p.input_len, p.batch_size) for p in points}
    b0 = cfg.batch_sizes[0]
    for s in sorted(set(cfg.resolved_sweep())):
        if (s, b0) not in full:
            # no warm-up: the model is warm from the full points; the first repetition pays new shapes
            points.append(Point(s, b0, cfg.sweep_output_len, cfg.sweep_repeats, 0, "sweep"))
    return points


def _progress_enabled(cfg: BenchConfig) -> bool:
    if cfg.progress is not None:
        return cfg.progress
    quiet = os.environ.get("CI") or os.environ.get("ENCORE_QUIET")
    return not quiet and sys.stderr.isatty()


def _median_spread(values: list[float]) -> tuple[float | None, list[float] | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.median(values), [min(values), max(values)]


class Worker:
    """Builds one subject's model in this process and times requests on it."""

    def __init__(self, spec: SubjectSpec, threads: int):
        torch.set_num_threads(threads)
        if spec.cpu_linear:
            set_cpu_linear(spec.cpu_linear)
        self.subject = make_subject(spec)
        self.device = torch.device(spec.device)
        self.seed = spec.seed
        self.model = self.subject.build()
        self.params = sum(p.numel() for p in self.model.parameters())

    def wait_ready(self) -> int:
        return self.params

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self, method)(*args)

    def run(self, batch_size: int, input_len: int, n: int) -> dict[str, float]:
        """One timed request: n tokens per row from the same random ids every time."""
        vocab = self.subject.cost_config.vocab_size
        gen = torch.Generator().manual_seed(self.seed + input_len)
        low = min(3, vocab - 1)  # skip pad / bos / eos where the vocabulary allows
        ids = torch.randint(low, vocab, (batch_size, input_len), generator=gen).to(self.device)
        cpu0 = time.process_time()
        with torch.inference_mode(), PeakMemory(self.device) as mem:
            t = self.subject.timed_generate(self.model, ids, n)
        if t.tokens != n:
            raise RuntimeError(f"{self.subject.label}: generated {t.tokens} tokens per row, expected exactly {n}")
        wall = t.t_last - t.t_call
        decode = t.t_last - t.t_first
        return {
            "first_token_latency_s": t.t_first - t.t_call,
            "decode_tokens_per_s": batch_size * (n - 1) / decode if decode > 0 else math.inf,
            "throughput_tokens_per_s": batch_size * n / wall,
            "intervals": t.intervals,
            "peak": mem.peak,
            # CPU time over (wall time x threads): well under 1 when other processes take the cores
            "cpu_utilization": (time.process_time() - cpu0) / (wall * torch.get_num_threads()),
        }

    def kv_bytes(self, batch_size: int, input_len: int, output_len: int) -> int:
        return self.subject.kv_cache_bytes(self.model, batch_size, input_len, output_len)

    def close(self) -> None:
        self.model = None
        _release_memory(self.device)


def _serve(conn, spec: SubjectSpec, threads: int) -> None:
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

    def __init__(self, spec: SubjectSpec, threads: int):
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


def _result(
    subject: Subject, params: int, kv_bytes: int, point: Point, runs: list[dict], dtype: str, machine: Machine
) -> dict:
    cost = generation_cost(subject.cost_config, point.batch_size, point.input_len, point.output_len, dtype_bytes(dtype))
    result: dict[str, Any] = {
        "model": subject.label,
        "arch": subject.arch,
        "backend": subject.backend,
        "params": params,
        "input_len": point.input_len,
        "output_len": point.output_len,
        "batch_size": point.batch_size,
        "dtype": dtype,
    }
    spread = {}
    for metric in METRICS:
        result[metric], spread[metric] = _median_spread([r[metric] for r in runs])
    result.update(
        {
            "peak_memory_bytes": int(max(r["peak"] for r in runs)),
            "kv_cache_bytes": int(kv_bytes),
            "flops": cost.flops,
            "bytes_moved": cost.bytes,
            # extras beyond the documented core fields
            "kind": point.kind,
            "repeats": point.repeats,
            "spread": spread,
            "cpu_utilization": statistics.median(r["cpu_utilization"] for r in runs),
            # median / 90th percentile gap between consecutive tokens over every step of every repetition:
            # a burst of load from another process moves the mean decode rate, hardly the median gap
            "inter_token_latency_s": _quantile([x for r in runs for x in r["intervals"]], 0.5),
            "inter_token_latency_p90_s": _quantile([x for r in runs for x in r["intervals"]], 0.9),
            "model_config": subject.cost_config.to_dict(),  # the shapes the cost model priced
            "prefill_flops": cost.prefill.flops,
            "prefill_bytes": cost.prefill.bytes,
            "decode_flops": cost.decode_flops,
            "decode_bytes": cost.decode_bytes,
            "predicted": cost.predict(machine),
        }
    )
    return result


def _quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile (no interpolation); None for no values."""
    if not values:
        return None
    values = sorted(values)
    return values[round(q * (len(values) - 1))]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def compare(model: dict, baseline: dict) -> dict[str, Any]:
    """Ratios of two results at the same point: measured and as the cost model predicts them."""
    out: dict[str, Any] = {
        key: model[key] for key in ("input_len", "output_len", "batch_size", "backend", "kind") if key in model
    }
    out.update({"model": model["model"], "baseline": baseline["model"], "baseline_backend": baseline["backend"]})

    def ratios(m: dict, b: dict) -> dict[str, float | None]:
        ttft = _ratio(m["first_token_latency_s"], b["first_token_latency_s"])
        return {
            "first_token_latency_ratio": ttft,
            "first_token_latency_reduction": None if ttft is None else 1 - ttft,
            "decode_speedup": _ratio(m["decode_tokens_per_s"], b["decode_tokens_per_s"]),
            "throughput_ratio": _ratio(m["throughput_tokens_per_s"], b["throughput_tokens_per_s"]),
        }

    out["measured"] = ratios(model, baseline)
    out["measured"]["inter_token_speedup"] = _ratio(baseline["inter_token_latency_s"], model["inter_token_latency_s"])
    out["measured"]["peak_memory_ratio"] = _ratio(model["peak_memory_bytes"], baseline["peak_memory_bytes"])
    out["measured"]["kv_cache_ratio"] = _ratio(model["kv_cache_bytes"], baseline["kv_cache_bytes"])
    out["predicted"] = ratios(model["predicted"], baseline["predicted"])
    out["predicted"]["flops_ratio"] = _ratio(model["flops"], baseline["flops"])
    out["predicted"]["bytes_moved_ratio"] = _ratio(model["bytes_moved"], baseline["bytes_moved"])
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def _progress(cfg: BenchConfig, total: int) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, disable=not _progress_enabled(cfg), unit="run", file=sys.stderr, leave=False)
    try:
        yield bar
    finally:
        bar.close()


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Measure every subject at every point; return (and write) the JSON document; print the tables."""
    cfg.validate()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    device = torch.device(cfg.device)
    dtype_name = cfg.resolved_dtype()
    points = plan_points(cfg)
    max_len = max(p.input_len + p.output_len for p in points)
    full_len = max(p.input_len + p.output_len for p in points if p.kind == "full")
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    started = time.perf_counter()
    previous_linear = set_cpu_linear(cfg.cpu_linear or cpu_linear())  # the probes use the models' kernel
    try:
        cpu_linear_used = cpu_linear()
        if cfg.peak_flops and cfg.mem_bandwidth:
            machine = Machine(cfg.peak_flops, cfg.mem_bandwidth, measured=False)
        else:  # probe before any worker starts building, so the probes have the machine to themselves
            probed = measure_machine(cfg.device, getattr(torch, dtype_name))
            machine = Machine(cfg.peak_flops or probed.peak_flops, cfg.mem_bandwidth or probed.mem_bandwidth, True)
    finally:
        set_cpu_linear(previous_linear)

    def spec(kind: str, model: str, length: int) -> SubjectSpec:
        return SubjectSpec(kind, model, length, cfg.device, dtype_name, cfg.seed, cpu_linear_used)

    specs = [spec("encore", cfg.model, max_len)]
    if cfg.baseline:
        specs.append(spec("encore", cfg.baseline, max_len))
    if cfg.vs_hf:
        specs += [spec("hf", s.model, full_len) for s in list(specs)]
    subjects = [make_subject(s) for s in specs]  # configs and labels only; workers build the weights
    if len({s.label for s in subjects}) < len(subjects):
        raise ValueError(f"--model and --baseline name the same model ({subjects[0].label}); pick two")

    def active(point: Point) -> list[int]:
        return [i for i, s in enumerate(subjects) if s.sweep or point.kind == "full"]

    total = sum((p.warmup + p.repeats) * len(active(p)) for p in points)
    runs: dict[tuple[int, int], list[dict]] = {}
    workers: list[Any] = []
    with _progress(cfg, total) as bar:
        try:
            bar.set_description("building models")
            # worker processes build in parallel; in-process workers one after the other
            workers = [(ProcessWorker if cfg.isolate else Worker)(spec, threads) for spec in specs]
            params = [w.wait_ready() for w in workers]
            for k, point in enumerate(points):
                B, S, n = point.batch_size, point.input_len, point.output_len
                who = active(point)
                bar.set_description(f"{S}->{n} x{B} warm-up")
                for i in who:
                    for _ in range(point.warmup):
                        workers[i].call("run", B, S, min(n, 8))
                        bar.update(1)
                # interleave the models, alternating who goes first: a burst of load from another
                # process then hits both sides instead of skewing one model's numbers
                for rep in range(point.repeats):
                    for i in who if rep % 2 == 0 else who[::-1]:
                        bar.set_description(f"{S}->{n} x{B} {subjects[i].label}")
                        runs.setdefault((i, k), []).append(workers[i].call("run", B, S, n))
                        bar.update(1)
            kv = {
                (i, k): workers[i].call("kv_bytes", points[k].batch_size, points[k].input_len, points[k].output_len)
                for (i, k) in runs
            }
        finally:
            for w in workers:
                w.close()

    order = sorted(
        runs, key=lambda ik: (ik[0], points[ik[1]].kind != "full", points[ik[1]].batch_size, points[ik[1]].input_len)
    )
    results = [
        _result(subjects[i], params[i], kv[(i, k)], points[k], runs[(i, k)], dtype_name, machine) for i, k in order
    ]
    doc: dict[str, Any] = {
        "device": cfg.device,
        "torch": torch.__version__,
        "threads": threads,
        "results": results,
        "device_name": _device_name(device),
        "dtype": dtype_name,
        "cpu_linear": cpu_linear_used if cfg.device == "cpu" else None,
        "machine": {
            "peak_flops": machine.peak_flops,
            "mem_bandwidth_bytes_per_s": machine.mem_bandwidth,
            "measured": machine.measured,
        },
        "load_average_before": load_before,
        "cpu_count": os.cpu_count(),
        "paper": PAPER,
        "comparisons": _comparisons(results, subjects),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "wall_s": time.perf_counter() - started,
    }
    from encore import __version__

    doc["encore"] = __version__
    if cfg.vs_hf:
        import transformers

        doc["transformers"] = transformers.__version__
    validate_bench_json(doc)
    if cfg.json_path:
        Path(cfg.json_path).write_text(json.dumps(doc, indent=2) + "\n")
    if cfg.plot_path:
        plot(doc, cfg.plot_path)
    if cfg.report:
        print(format_report(doc, cfg))
    return doc


def _comparisons(results: list[dict], subjects: list[Subject]) -> list[dict]:
    """model vs baseline at every point both measured; each HF model vs the encore model it mirrors."""
    by_key = {(r["model"], r["input_len"], r["batch_size"]): r for r in results}
    pairs = []
    encore = [s for s in subjects if s.backend == "torch"]
    if len(encore) == 2:
        pairs.append((encore[0].label, encore[1].label))
    for s in subjects:
        if s.backend == "transformers":
            mirror = next(e for e in encore if s.label.endswith(f"({e.label})"))
            pairs.append((mirror.label, s.label))
    out = []
    for a, b in pairs:
        for r in results:
            if r["model"] == a and (b, r["input_len"], r["batch_size"]) in by_key:
                out.append(compare(r, by_key[(b, r["input_len"], r["batch_size"])]))
    return out


# --- JSON schema ------------------------------------------------------------------------------------

_NUM = (int, float)
TOP_FIELDS: dict[str, tuple] = {"device": (str,), "torch": (str,), "threads": (int,), "results": (list,)}
RESULT_FIELDS: dict[str, tuple] = {
    "model": (str,),
    "arch": (str,),
    "backend": (str,),
    "params": (int,),
    "input_len": (int,),
    "output_len": (int,),
    "batch_size": (int,),
    "dtype": (str,),
    "first_token_latency_s": _NUM,
    "decode_tokens_per_s": _NUM,
    "throughput_tokens_per_s": _NUM,
    "peak_memory_bytes": (int,),
    "kv_cache_bytes": (int,),
    "flops": _NUM,
    "bytes_moved": _NUM,
}


def validate_bench_json(doc: Any) -> None:
    """Raise ValueError naming every field that breaks the documented schema (docs/bench.md)."""
    problems = []
    if not isinstance(doc, dict):
        raise ValueError(f"bench JSON: expected an object, got {type(doc).__name__}")
    for key, types in TOP_FIELDS.items():
        if not isinstance(doc.get(key), types) or isinstance(doc.get(key), bool):
            problems.append(f"{key}: expected {'/'.join(t.__name__ for t in types)}, got {doc.get(key)!r}")
    for i, r in enumerate(doc.get("results") or []):
        if not isinstance(r, dict):
            problems.append(f"results[{i}]: expected an object")
            continue
        for key, types in RESULT_FIELDS.items():
            value = r.get(key)
            if key not in r or isinstance(value, bool) or not isinstance(value, types):
                problems.append(f"results[{i}].{key}: expected {'/'.join(t.__name__ for t in types)}, got {value!r}")
        if r.get("arch") not in ("encdec", "deconly"):
            problems.append(f"results[{i}].arch: expected 'encdec' or 'deconly', got {r.get('arch')!r}")
    if problems:
        raise ValueError("bench JSON does not match its schema:\n  " + "\n  ".join(problems))


# --- report -----------------------------------------------------------------------------------------


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _f(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_report(doc: dict, cfg: BenchConfig | None = None) -> str:
    m = doc["machine"]
    how = "probed" if m["measured"] else "given"
    kernel = f", encore linear: {doc['cpu_linear']}" if doc.get("cpu_linear") else ""
    lines = [
        f"encore bench: {doc['device']} ({doc['device_name']}), {doc['dtype']}, {doc['threads']} threads, "
        f"torch {doc['torch']}{kernel}; roofline {how}: {m['peak_flops'] / 1e9:.0f} GFLOP/s, "
        f"{m['mem_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s",
        "",
        f"{'model':<30} {'backend':<12} {'params':>7} {'in->out':>10} {'B':>3} {'TTFT s':>8} {'decode tok/s':>13} "
        f"{'p50 gap ms':>10} {'e2e tok/s':>10} {'peak mem':>10} {'KV cache':>10}",
    ]
    for r in doc["results"]:
        lines.append(
            f"{r['model']:<30} {r['backend']:<12} {r['params'] / 1e6:>6.0f}M "
            f"{str(r['input_len']) + '->' + str(r['output_len']):>10} {r['batch_size']:>3} "
            f"{_f(r['first_token_latency_s'], '.3f'):>8} {_f(r['decode_tokens_per_s'], '.1f'):>13} "
            f"{_f(_times(r.get('inter_token_latency_s'), 1e3), '.1f'):>10} "
            f"{_f(r['throughput_tokens_per_s'], '.1f'):>10} {_fmt_bytes(r['peak_memory_bytes']):>10} "
            f"{_fmt_bytes(r['kv_cache_bytes']):>10}"
        )
    for c in doc["comparisons"]:
        if c["kind"] != "full":
            continue
        me, pr = c["measured"], c["predicted"]
        paper = c["baseline_backend"] == "torch"
        title = f"{c['model']} vs {c['baseline']}, {c['input_len']}->{c['output_len']}, batch {c['batch_size']}"
        rows = [
            ("first-token latency", _ttft(me), _ttft(pr), _pct(PAPER["first_token_latency_reduction"])),
            ("decode tokens/s", _x(me["decode_speedup"]), _x(pr["decode_speedup"]), ""),
            ("p50 token gap speedup", _x(me.get("inter_token_speedup")), "", ""),
            ("end-to-end tokens/s", _x(me["throughput_ratio"]), _x(pr["throughput_ratio"]), "4.70x"),
            ("peak memory", _x(me["peak_memory_ratio"]), "", ""),
            ("KV cache", _x(me["kv_cache_ratio"]), "", ""),
            ("FLOPs / bytes moved", "", f"{_x(pr['flops_ratio'])} / {_x(pr['bytes_moved_ratio'])}", ""),
        ]
        lines += [
            "",
            title + ":",
            f"  {'':<24} {'measured':>14} {'cost model':>14}" + (f" {'paper':>7}" if paper else ""),
        ]
        for name, measured, predicted, from_paper in rows:
            line = f"  {name:<24} {measured:>14} {predicted:>14}" + (f" {from_paper:>7}" if paper else "")
            lines.append(line.rstrip())
    sweep = [c for c in doc["comparisons"] if c["baseline_backend"] == "torch"]
    if len({c["input_len"] for c in sweep}) > 1:
        b0 = sweep[0]["batch_size"]
        lines += [
            "",
            f"input-length sweep, {sweep[0]['model']} vs {sweep[0]['baseline']}, batch {b0}:",
            f"  {'input':>6} {'TTFT measured':>16} {'cost model':>16} {'decode measured':>16} {'cost model':>11}",
        ]
        for c in sorted((c for c in sweep if c["batch_size"] == b0), key=lambda c: c["input_len"]):
            me, pr = c["measured"], c["predicted"]
            lines.append(
                f"  {c['input_len']:>6} {_ttft(me):>16} {_ttft(pr):>16} {_x(me['decode_speedup']):>16} "
                f"{_x(pr['decode_speedup']):>11}"
            )
    notes = []
    load, cpus = doc.get("load_average_before"), doc.get("cpu_count") or 1
    if load is not None and load >= 0.5 * cpus:
        notes.append(f"load average {load:.1f} on {cpus} CPUs before the run: other processes share this machine")
    utils = [r["cpu_utilization"] for r in doc["results"] if r.get("cpu_utilization") is not None]
    if doc["device"] == "cpu" and utils and min(utils) < 0.9:
        notes.append(f"the bench got as little as {min(utils):.0%} of its {doc['threads']} threads' CPU time")
    if notes:
        lines += ["", "note: " + "; ".join(notes) + ". Timings are noisy: see the spreads in the JSON."]
    lines.append("")
    lines.append(f"finished in {doc['wall_s']:.0f} s")
    if cfg is not None and cfg.json_path:
        lines[-1] += f"; wrote {cfg.json_path}" + (f" and {cfg.plot_path}" if cfg.plot_path else "")
    return "\n".join(lines)


def _times(x: float | None, k: float) -> float | None:
    return None if x is None else x * k


def _ttft(ratios: dict) -> str:
    r = ratios["first_token_latency_ratio"]
    return "-" if r is None else f"{_pct(1 - r)} ({r:.2f}x)"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{-100 * x:+.0f}%"


def _x(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}x"


# --- plot -------------------------------------------------------------------------------------------


def plot(doc: dict, path: str) -> None:
    """First-token latency and decode throughput against input length (measured points, cost-model
    lines), and the model / baseline ratios beside the paper's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, ScalarFormatter

    results, dtype = doc["results"], doc["dtype"]
    machine = Machine(doc["machine"]["peak_flops"], doc["machine"]["mem_bandwidth_bytes_per_s"])
    b0 = results[0]["batch_size"]
    fig, (ax_t, ax_d, ax_r) = plt.subplots(1, 3, figsize=(15, 4.4))
    colors = {"encdec": "tab:blue", "deconly": "tab:orange"}
    grids: dict[str, list] = {}
    for label in dict.fromkeys(r["model"] for r in results):
        rows = sorted(
            (r for r in results if r["model"] == label and r["batch_size"] == b0), key=lambda r: r["input_len"]
        )
        if not rows:
            continue
        hf = rows[0]["backend"] != "torch"
        color = colors[rows[0]["arch"]]
        cost_config = ModelConfig.from_dict(rows[0]["model_config"])
        style = dict(color=color, marker="s" if hf else "o", linestyle="none", mfc="none" if hf else color)
        lens = [r["input_len"] for r in rows]
        ax_t.plot(lens, [r["first_token_latency_s"] for r in rows], label=f"{label} measured", **style)
        ax_d.plot(lens, [r["decode_tokens_per_s"] for r in rows], label=f"{label} measured", **style)
        if hf:
            continue
        lo, hi = min(lens) / 1.5, max(lens) * 1.5
        grid = sorted({max(1, round(lo * (hi / lo) ** (i / 32))) for i in range(33)})
        n = rows[-1]["output_len"]
        preds = [generation_cost(cost_config, b0, s, n, dtype_bytes(dtype)).predict(machine) for s in grid]
        grids[label] = [grid, preds]
        ax_t.plot(grid, [p["first_token_latency_s"] for p in preds], color=color, label=f"{label} cost model")
        ax_d.plot(grid, [p["decode_tokens_per_s"] for p in preds], color=color, label=f"{label} cost model")

    # ratios of the first two encore models (model / baseline) against input length
    pairs = sorted(
        (c for c in doc["comparisons"] if c["baseline_backend"] == "torch" and c["batch_size"] == b0),
        key=lambda c: c["input_len"],
    )
    if pairs:
        lens = [c["input_len"] for c in pairs]
        ax_r.plot(
            lens,
            [c["measured"]["first_token_latency_ratio"] for c in pairs],
            "o",
            color="tab:green",
            label="TTFT ratio, measured",
        )
        ax_r.plot(
            lens,
            [c["measured"]["decode_speedup"] for c in pairs],
            "o",
            color="tab:purple",
            label="decode speedup, measured",
        )
        (grid, pm), (_, pb) = grids[pairs[0]["model"]], grids[pairs[0]["baseline"]]
        ax_r.plot(
            grid,
            [m["first_token_latency_s"] / b["first_token_latency_s"] for m, b in zip(pm, pb)],
            color="tab:green",
            label="TTFT ratio, cost model",
        )
        ax_r.plot(
            grid,
            [m["decode_tokens_per_s"] / b["decode_tokens_per_s"] for m, b in zip(pm, pb)],
            color="tab:purple",
            label="decode speedup, cost model",
        )
        ax_r.axhline(
            1 - PAPER["first_token_latency_reduction"],
            color="tab:green",
            linestyle=":",
            label="TTFT ratio, paper (0.53)",
        )
        ax_r.axhline(PAPER["throughput_ratio"], color="tab:purple", linestyle=":", label="throughput, paper (4.7x)")
        ax_r.set_title(f"{pairs[0]['model']} / {pairs[0]['baseline']}")
        ax_r.legend(fontsize=7)
    for ax, title in ((ax_t, "time to first token (s)"), (ax_d, "decode throughput (tokens/s)"), (ax_r, None)):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("input length (tokens)")
        if title:
            ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
        for fmt in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            fmt(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_d.legend(fontsize=7)
    fig.suptitle(
        f"{doc['device_name']} ({doc['threads']} threads), {dtype}, batch {b0}; cost model lines: roofline at "
        f"{machine.peak_flops / 1e9:.0f} GFLOP/s, {machine.mem_bandwidth / 1e9:.0f} GB/s",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- command line -----------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Compare an encoder-decoder with a decoder-only model of matched size on this machine: time to first "
        "token, decode and end-to-end tokens/s, peak memory, KV cache, and the cost model's prediction. "
        "With no flags: encdec-330m vs deconly-330m at 512 -> 128, batch 1, plus an input-length sweep."
    )
    d = BenchConfig()
    parser.add_argument("--model", default=d.model, help="preset, config .json or checkpoint dir (%(default)s)")
    parser.add_argument("--baseline", default=d.baseline, help="the same, or 'none' (%(default)s)")
    parser.add_argument("--input-len", type=int, nargs="+", default=list(d.input_lens), help="input tokens (512)")
    parser.add_argument("--output-len", type=int, default=d.output_len, help="generated tokens (%(default)s)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=list(d.batch_sizes), help="rows per request (1)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=d.device)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--repeats", type=int, default=d.repeats, help="timed repetitions per point (%(default)s)")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="untimed runs per full point (%(default)s)")
    parser.add_argument(
        "--sweep", type=int, nargs="*", help="quick input-length sweep (default: 128..2048 on CPU, ..8192 on CUDA)"
    )
    parser.add_argument("--no-sweep", action="store_true", help="measure only --input-len")
    parser.add_argument("--sweep-output-len", type=int, default=d.sweep_output_len, help="(%(default)s)")
    parser.add_argument("--sweep-repeats", type=int, default=d.sweep_repeats, help="(%(default)s)")
    parser.add_argument("--vs-hf", action="store_true", help="also time HF T5 / Llama of the same shapes")
    parser.add_argument("--json", default=d.json_path, metavar="PATH", help="results ('' to skip; %(default)s)")
    parser.add_argument("--plot", default=d.plot_path, metavar="PATH", help="plot ('' to skip; %(default)s)")
    parser.add_argument("--peak-gflops", type=float, help="cost model FLOP/s in GFLOP/s (default: probe)")
    parser.add_argument("--bandwidth-gbs", type=float, help="cost model memory bandwidth in GB/s (default: probe)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--cpu-linear",
        choices=CPU_LINEAR_BACKENDS,
        help="encore's fp32 CPU projection kernel ('aten' = F.linear, torch's BLAS; default: onednn on x86-64, "
        "else aten, or ENCORE_CPU_LINEAR)",
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--from-json", metavar="PATH", help="measure nothing: print the report and draw --plot from a saved JSON"
    )
    parser.add_argument(
        "--in-process", action="store_true", help="build every model in this process (peak memory then counts them all)"
    )


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    baseline = None if str(args.baseline).lower() in ("", "none") else args.baseline
    sweep = () if args.no_sweep else (tuple(args.sweep) if args.sweep is not None else None)
    return BenchConfig(
        model=args.model,
        baseline=baseline,
        input_lens=tuple(args.input_len),
        output_len=args.output_len,
        batch_sizes=tuple(args.batch_size),
        device=args.device,
        dtype=args.dtype,
        repeats=args.repeats,
        warmup=args.warmup,
        sweep=sweep,
        sweep_output_len=args.sweep_output_len,
        sweep_repeats=args.sweep_repeats,
        vs_hf=args.vs_hf,
        json_path=args.json or None,
        plot_path=args.plot or None,
        peak_flops=None if args.peak_gflops is None else args.peak_gflops * 1e9,
        mem_bandwidth=None if args.bandwidth_gbs is None else args.bandwidth_gbs * 1e9,
        threads=args.threads,
        cpu_linear=args.cpu_linear,
        seed=args.seed,
        progress=False if args.quiet else None,
        isolate=not args.in_process,
    )


def run(args: argparse.Namespace) -> int:
    if args.from_json:
        path = Path(args.from_json)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no bench JSON here") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        validate_bench_json(doc)
        if args.plot:
            plot(doc, args.plot)
        print(format_report(doc))
        return 0
    run_bench(config_from_args(args))
    return 0


__all__ = [
    "BenchConfig",
    "run_bench",
    "compare",
    "validate_bench_json",
    "format_report",
    "plot",
    "plan_points",
    "PAPER",
]
