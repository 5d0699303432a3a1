"""`encore bench`'s run: an encoder-decoder against a decoder-only model of the same size, measured on
the machine at hand and explained by the cost model (`encore.bench.costmodel`).

Per point (model, input length, output length, batch size) it measures time to first token, decode
tokens/s, end-to-end tokens/s, the median gap between tokens, peak memory and KV-cache bytes, and puts
the cost model's FLOPs, bytes moved and roofline predictions beside them. Python API:
``run_bench(BenchConfig(...)) -> dict`` (the JSON written by ``--json``).

How a point is timed: greedy generation of exactly N tokens (EOS stopping disabled) from random token
ids, after warm-up runs. Time to first token = call -> first yielded token (encoder pass or prompt
prefill, plus the first decoder step); decode tokens/s = B * (N - 1) / (last token - first token);
end-to-end tokens/s = B * N / (call -> last token). CUDA is synchronised at the first and the last
token. Median over the repeats, with [min, max] as the spread. Each model runs in a worker process of
its own (clean peak RSS), and the models' repetitions are interleaved so that load from other
processes on a shared machine hits every model alike.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import torch

from encore.bench.backends import Backend, BackendSpec, EncoreBackend
from encore.bench.config import METRICS, PAPER, BenchConfig, Point, plan_points
from encore.bench.costmodel import Machine, dtype_bytes, generation_cost, kv_cache_bytes
from encore.bench.machine import machine_for
from encore.bench.registry import make_backend
from encore.bench.report import format_report, plot, validate_bench_json
from encore.bench.same_weights import imported
from encore.bench.workers import ProcessWorker, Worker
from encore.convert import resolve_model
from encore.lazy import require
from encore.progress import Progress


def _median_spread(values: list[float]) -> tuple[float | None, list[float] | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.median(values), [min(values), max(values)]


def _result(
    backend: Backend, params: int, kv_bytes: int, point: Point, runs: list[dict], dtype: str, machine: Machine
) -> dict:
    B, S, N = point.batch_size, point.input_len, point.output_len
    cost = generation_cost(backend.cost_config, B, S, N, dtype_bytes(dtype), weight_bytes=backend.weight_bytes)
    result: dict[str, Any] = {
        "model": backend.label,
        "arch": backend.arch,
        "backend": backend.name,
        "params": params,
        "input_len": point.input_len,
        "output_len": point.output_len,
        "batch_size": point.batch_size,
        "dtype": dtype,
        "kernel": backend.kernel,
        "weight_bytes": backend.weight_bytes,
        "anchor": backend.mirror is not None,  # another library's model of the same shape
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
            "model_config": backend.cost_config.to_dict(),  # the shapes the cost model priced
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
    out["baseline_anchor"] = bool(baseline.get("anchor", False))

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
def _progress(cfg: BenchConfig, total: int) -> Iterator[Progress]:
    bar = Progress(total, unit="run", enabled=cfg.progress)
    try:
        yield bar
    finally:
        bar.close()


def _machines(cfg: BenchConfig, backends: list[Backend]) -> dict[str, Machine]:
    """The roofline of every kernel the models run (given, or probed through that kernel)."""
    # probed before any worker starts building, so the probes have the machine to themselves
    dtype = getattr(torch, cfg.resolved_dtype())
    return {
        kernel: machine_for(kernel, cfg.device, dtype, cfg.peak_flops, cfg.mem_bandwidth)
        for kernel in dict.fromkeys(b.kernel for b in backends)
    }


def _specs(cfg: BenchConfig, points: list[Point]) -> list[BackendSpec]:
    """The model and the baseline at each quantization, then the anchors (--vs-hf, --vs-ct2) copying them."""
    max_len = max(p.input_len + p.output_len for p in points)
    full_len = max(p.input_len + p.output_len for p in points if p.kind == "full")
    dtype = cfg.resolved_dtype()

    def spec(kind: str, model: str, length: int, quantize: str | None) -> BackendSpec:
        return BackendSpec(
            kind, model, length, cfg.device, dtype, cfg.seed, cfg.cpu_linear, quantize, cfg.retain_memory,
            cfg.num_beams, cfg.prefill_products, cfg.kv_cache_dtype,
        )  # fmt: skip

    models = [cfg.model] + ([cfg.baseline] if cfg.baseline else [])
    specs = [spec("encore", m, max_len, q) for q in cfg.quantize for m in models]
    if cfg.onnx:
        specs += [spec("onnx", m, full_len, q) for q in cfg.quantize for m in models]
    if cfg.vs_hf:
        specs += [spec("hf", m, full_len, None) for m in models]
    if cfg.vs_ct2:
        # encore's encoder-decoders get a T5 of their shape; a transformers family's model (either
        # architecture) its own weights through CTranslate2's converter
        ct2 = [m for m in models if (c := resolve_model(m)[0]).arch == "encdec" or imported(c)]
        specs += [spec("ct2", m, full_len, q) for q in cfg.quantize if q != "int4" for m in ct2]  # CT2: no int4 on CPU
    if cfg.vs_llamacpp:
        require("llama_cpp", "llamacpp")  # before any model is built
        # the decoder-only models (llama.cpp's Python API runs no encoder-decoder), on their own weights
        deconly = [m for m in models if resolve_model(m)[0].arch == "deconly"]
        if not deconly:
            raise ValueError("--vs-llamacpp runs decoder-only models: give one as --model or --baseline")
        specs += [spec("llamacpp", m, full_len, q) for q in cfg.quantize for m in deconly]
    return specs


class _Measured(NamedTuple):
    params: list[int]  # per model
    runs: dict[tuple[int, int], list[dict]]  # (model, point) -> its timed runs
    kv: dict[tuple[int, int], int]  # (model, point) -> KV-cache bytes
    failed: dict[str, str]  # anchors that crashed: label -> why
    profiles: dict[tuple[int, int], dict]  # (model, point) -> its prefill profile (--profile-prefill)
    alone: bool  # each model measured alone (their weights did not fit side by side), not interleaved


def _groups(cfg: BenchConfig, specs: list[BackendSpec], backends: list[Backend]) -> list[list[int]]:
    """The models measured side by side (interleaved, the default), or one at a time when their weights
    together would not fit in the CPU's available memory (a 10B pair at int8 on a 24 GB machine): each
    model then has the machine to itself, and the report says so."""
    if cfg.device != "cpu" or len(specs) < 2:
        return [list(range(len(specs)))]
    # at least a byte a weight (int4's priced average leaves out an encoder kept int8) and the runtime
    need = [max(_weight_bytes(b), b.cost_config.param_counts()["total"]) + (1 << 29) for b in backends]
    available = _available_memory()
    if sum(need) < 0.8 * available:
        return [list(range(len(specs)))]
    print(f"encore bench: the models' weights ({sum(need) / 2**30:.1f} GiB) do not fit side by side in "
          f"{available / 2**30:.1f} GiB available: each model is measured alone", file=sys.stderr)  # fmt: skip
    return [[i] for i in range(len(specs))]


def _weight_bytes(backend: Backend) -> float:
    """A model's weights in memory, roughly: its parameters at the bytes per weight its kernel reads."""
    return backend.cost_config.param_counts()["total"] * backend.weight_bytes


def _available_memory() -> int:
    """The memory this machine has available now, in bytes."""
    return require("psutil", "bench").virtual_memory().available


def _measure(
    cfg: BenchConfig,
    specs: list[BackendSpec],
    backends: list[Backend],
    points: list[Point],
    threads: int,
    machines: dict[str, Machine],
) -> _Measured:
    """Build every model in its worker and time every point: params, runs, KV bytes (and prefill
    profiles) per (model, point), and the anchors that crashed (label -> why): an anchor's crash
    (llama.cpp's segfault, a converter's error) ends its own row, not the bench; encore's own models
    still raise."""

    def active(point: Point) -> list[int]:
        def runs(b: Backend) -> bool:  # an anchor of batch 1 only (llama.cpp) skips larger batches
            return point.batch_size <= getattr(b, "max_batch", point.batch_size)

        return [i for i, b in enumerate(backends) if (b.sweep or point.kind == "full") and runs(b)]

    total = sum((p.warmup + p.repeats) * len(active(p)) for p in points)
    runs: dict[tuple[int, int], list[dict]] = {}
    profiles: dict[tuple[int, int], dict] = {}
    workers: dict[int, Any] = {}
    failed: dict[str, str] = {}

    def call(i: int, *args: Any) -> Any:
        """workers[i].call(*args); None once an anchor has crashed (recorded in `failed`)."""
        if backends[i].label in failed:
            return None
        try:
            return workers[i].call(*args) if args else workers[i].wait_ready()
        except RuntimeError as e:
            if backends[i].mirror is None:  # encore's own model: the bench has nothing to compare
                raise
            failed[backends[i].label] = str(e)
            print(f"encore bench: {backends[i].label} failed ({e}); its row is left out", file=sys.stderr)
            return None

    params = [0] * len(specs)
    kv: dict[tuple[int, int], int] = {}
    groups = _groups(cfg, specs, backends)
    with _progress(cfg, total) as bar:
        for group in groups:
            try:
                bar.describe("building models")
                # worker processes build in parallel; in-process workers one after the other
                workers = {i: (ProcessWorker if cfg.isolate else Worker)(specs[i], threads) for i in group}
                for i in group:
                    params[i] = call(i) or 0
                for k, point in enumerate(points):
                    B, S, n = point.batch_size, point.input_len, point.output_len
                    who = [i for i in active(point) if i in workers]
                    bar.describe(f"{S}->{n} x{B} warm-up")
                    for i in who:
                        for _ in range(point.warmup):
                            call(i, "run", B, S, min(n, 8), n)
                            bar.update(1)
                    # interleave the models, alternating who goes first: a burst of load from another
                    # process then hits both sides instead of skewing one model's numbers
                    for rep in range(point.repeats):
                        for i in who if rep % 2 == 0 else who[::-1]:
                            bar.describe(f"{S}->{n} x{B} {backends[i].label}")
                            if (run := call(i, "run", B, S, n, n)) is not None:
                                runs.setdefault((i, k), []).append(run)
                            bar.update(1)
                for i in group:  # a row cut short by a crash is left out whole
                    if backends[i].label in failed:
                        runs = {key: value for key, value in runs.items() if key[0] != i}
                for i, k in [key for key in runs if key[0] in workers]:
                    kv[(i, k)] = workers[i].call("kv_bytes", points[k].batch_size, points[k].input_len,
                                                 points[k].output_len)  # fmt: skip
                    B, S = points[k].batch_size, points[k].input_len
                    if cfg.profile_prefill and isinstance(backends[i], EncoreBackend) and points[k].kind == "full":
                        peak = machines[backends[i].kernel].peak_flops
                        profiles[(i, k)] = workers[i].call("profile_prefill", B, S, peak)
            finally:
                for w in workers.values():
                    w.close()
    return _Measured(params, runs, kv, failed, profiles, len(groups) > 1)


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Measure every model at every point; return (and write) the JSON document; print the tables."""
    cfg.validate()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    dtype_name = cfg.resolved_dtype()
    points = plan_points(cfg)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    specs = _specs(cfg, points)
    backends = [make_backend(s) for s in specs]  # configs and labels only; workers build the weights
    if len({b.label for b in backends}) < len(backends):
        raise ValueError(f"--model and --baseline name the same model ({backends[0].label}); pick two")
    _check_memory(backends, points)
    machines = _machines(cfg, backends)
    params, runs, kv, failed, profiles, alone = _measure(cfg, specs, backends, points, threads, machines)
    order = sorted(
        runs, key=lambda ik: (ik[0], points[ik[1]].kind != "full", points[ik[1]].batch_size, points[ik[1]].input_len)
    )
    results = [
        _result(backends[i], params[i], kv[(i, k)], points[k], runs[(i, k)], dtype_name, machines[backends[i].kernel])
        | ({"prefill_profile": profiles[(i, k)]} if (i, k) in profiles else {})
        for i, k in order
    ]
    machine = machines[backends[0].kernel]
    from encore import __version__

    doc: dict[str, Any] = {
        "device": cfg.device,
        "torch": torch.__version__,
        "threads": threads,
        "results": results,
        "device_name": _device_name(torch.device(cfg.device)),
        "dtype": dtype_name,
        "cpu_linear": backends[0].kernel if cfg.device == "cpu" else None,
        "machine": _machine_doc(machine),  # the first model's kernel; every kernel's in "machines"
        "machines": {kernel: _machine_doc(m) for kernel, m in machines.items()},
        "load_average_before": load_before,
        "cpu_count": os.cpu_count(),
        "paper": PAPER,
        "comparisons": _comparisons(results, backends, bool(cfg.baseline)),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "wall_s": time.perf_counter() - started,
        "encore": __version__,
        "failed": failed,  # anchors that crashed: label -> why (their rows are left out)
        "models_measured": "one at a time" if alone else "interleaved",
    }
    if cfg.vs_hf:
        import transformers

        doc["transformers"] = transformers.__version__
    if cfg.vs_ct2:
        import ctranslate2

        doc["ctranslate2"] = ctranslate2.__version__
    if cfg.vs_llamacpp:
        import llama_cpp

        doc["llama_cpp_python"] = llama_cpp.__version__
    validate_bench_json(doc)
    if cfg.json_path:
        Path(cfg.json_path).write_text(json.dumps(doc, indent=2) + "\n")
    if cfg.plot_path:
        plot(doc, cfg.plot_path)
    if cfg.report:
        print(format_report(doc, cfg))
    return doc


def _check_memory(backends: list[Backend], points: list[Point]) -> None:
    """Refuse, before building anything, a point that cannot fit this machine's available memory:
    weights + K/V cache + the prefill's activations (a rough lower bound), per model (the workers
    run one model each, but one after another they must all fit while the bench runs)."""
    available = _available_memory()
    for b in backends:
        c = b.cost_config
        weights = _weight_bytes(b)
        for p in points:
            kv = kv_cache_bytes(c, p.batch_size, p.input_len, p.output_len, 4)
            activations = p.batch_size * p.input_len * (6 * c.d_model + 2 * c.mlp_dim) * 4
            need = weights + kv + activations
            if need > 0.9 * available:
                raise ValueError(
                    f"--input-len {p.input_len} x --batch-size {p.batch_size} (+ {p.output_len} new tokens): "
                    f"{b.label} needs at least {need / 2**30:.1f} GiB (weights, K/V cache, activations); this "
                    f"machine has {available / 2**30:.1f} GiB available"
                )


def _machine_doc(machine: Machine) -> dict[str, Any]:
    return {
        "peak_flops": machine.peak_flops,
        "mem_bandwidth_bytes_per_s": machine.mem_bandwidth,
        "measured": machine.measured,
    }


def _comparisons(results: list[dict], backends: list[Backend], baseline: bool) -> list[dict]:
    """model vs baseline (each at the same quantization) at every point both measured; each anchor vs
    the encore model it mirrors; a `rival` anchor of the baseline (llama.cpp) vs the model too (the
    user's choice: encore's encoder-decoder, or the other engine running the decoder-only model)."""
    by_key = {(r["model"], r["input_len"], r["batch_size"]): r for r in results}
    own = [b for b in backends if b.mirror is None]  # model, baseline for each quantization (see _specs)
    partner = {b.label: a.label for a, b in zip(own[0::2], own[1::2])} if baseline else {}
    pairs = [(a, b) for b, a in partner.items()]
    labels = {b.label for b in own}
    pairs += [(b.mirror, b.label) for b in backends if b.mirror in labels]
    pairs += [(partner[b.mirror], b.label) for b in backends if getattr(b, "rival", False) and b.mirror in partner]
    out = []
    for a, b in pairs:
        for r in results:
            if r["model"] == a and (b, r["input_len"], r["batch_size"]) in by_key:
                out.append(compare(r, by_key[(b, r["input_len"], r["batch_size"])]))
    return out
