"""`encore bench --serve`: the capacity of `encore serve` for two models at the same KV budget.

For each model a server process is started (`encore serve --random-weights`, same flags for both),
warmed up, and driven over loopback by a bounded, seeded workload: `requests` completions whose
arrival times are a Poisson process of `rate` requests/s (each rate of `rates` in turn, on the same
server) and whose lengths are drawn uniformly from
[(1 - spread) L, L] (prompts of exactly that many tokens, distinct words, so no two share a
prefill; outputs exactly that long: `ignore_eos`). Every request streams; the client records its
time to first token and the gaps between its tokens, and /metrics is polled for the slots in use.

Beside each measurement stands the cost model's prediction. A saturated server (every slot busy)
spends on each request its prefill plus its output tokens' share of the decode steps over all slots:

    capacity (requests/s) = 1 / (prefill(S_in) + n_out * step(slots) / slots)

with the roofline times of `encore.bench.costmodel` on this machine; at an offered load the server
completes min(rate, capacity) requests/s, n_out tokens each.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from encore.bench.costmodel import Machine, decode_step_cost, prefill_cost
from encore.bench.runner import _device_name, _quantile
from encore.model.kernels import bytes_per_weight

MiB = 1 << 20


@dataclass
class ServeBenchConfig:
    model: str = "encdec-330m"
    baseline: str | None = "deconly-330m"
    quantize: str | None = "int8"  # the servers' --quantize
    kv_cache_dtype: str = "auto"  # the servers' --kv-cache-dtype
    device: str = "cpu"
    kv_budget_mb: float = 256.0  # the same for both servers
    max_batch: int = 64
    requests: int = 48  # measured requests per model (after `warmup` unmeasured ones)
    warmup: int = 2
    rates: tuple[float, ...] = (1.0, 4.0)  # offered loads: Poisson arrivals, requests/s; one run each
    input_len: int = 512  # the longest prompt (tokens): the servers' --max-input-len
    output_len: int = 128  # the longest completion: the servers' --max-tokens-limit
    spread: float = 0.25  # lengths uniform in [(1 - spread) * L, L]
    prefill_chunk: int | None = None  # the servers' --prefill-chunk (None: whole prefills)
    seed: int = 0
    timeout_s: float = 900.0  # per model: requests still unanswered then count as failed
    json_path: str | None = "bench_serve.json"
    plot_path: str | None = "bench_serve.png"
    peak_flops: float | None = None  # the cost model's machine; None: probe it
    mem_bandwidth: float | None = None
    report: bool = True

    def validate(self) -> None:
        for name in ("requests", "max_batch", "input_len", "output_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"--serve-{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.spread < 1:
            raise ValueError(f"--serve-spread must be in [0, 1), got {self.spread}")
        if not self.rates or min(self.rates) <= 0 or self.kv_budget_mb <= 0 or self.warmup < 0:
            raise ValueError("--serve-rate and --kv-budget-mb must be > 0, --warmup >= 0")
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise ValueError(f"--prefill-chunk must be >= 1, got {self.prefill_chunk}")
        if self.input_len < 3:
            raise ValueError("--input-len must be >= 3 (a decoder-only prompt holds BOS and EOS besides its words)")


# --- the workload ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    arrival_s: float  # after the start of the run
    words: int  # prompt words: one token each
    max_tokens: int


def workload(cfg: ServeBenchConfig, rate: float) -> list[Request]:
    """The seeded requests at `rate`: Poisson arrivals, uniform lengths. The same for every model."""
    rng = random.Random(cfg.seed)
    t, out = 0.0, []
    low = lambda n: max(1, round((1 - cfg.spread) * n))  # noqa: E731
    for _ in range(cfg.requests):
        t += rng.expovariate(rate)
        words = rng.randint(low(cfg.input_len), cfg.input_len) - 2  # + BOS / EOS the server adds
        out.append(Request(t, max(1, words), rng.randint(low(cfg.output_len), cfg.output_len)))
    return out


def word_tokens(tokenizer: Any) -> list[str]:
    """Words that the tokenizer encodes as one token each (after a space): prompts of exact length."""
    words = sorted(
        t[1:] for t in tokenizer.get_vocab() if t.startswith("Ġ") and t[1:].isascii() and t[1:].isalpha() and len(t) > 3
    )
    if len(words) < 100:
        raise ValueError("the tokenizer has too few whole-word tokens to build benchmark prompts")
    return words


def prompt_text(words: list[str], n: int, rng: random.Random) -> str:
    return "".join(" " + w for w in rng.choices(words, k=n))


# --- one server -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(model: str, cfg: ServeBenchConfig, port: int) -> list[str]:
    """The `encore serve --random-weights` command line for `model` at the benchmark's limits."""
    command = [sys.executable, "-m", "encore", "serve", "--model", model, "--random-weights"]
    command += ["--port", str(port), "--device", cfg.device, "--quantize", cfg.quantize or "none"]
    command += ["--kv-budget-mb", str(cfg.kv_budget_mb), "--max-batch", str(cfg.max_batch)]
    command += ["--kv-cache-dtype", cfg.kv_cache_dtype]
    command += ["--max-input-len", str(cfg.input_len), "--max-tokens-limit", str(cfg.output_len)]
    command += ["--max-queue", str(cfg.requests + cfg.warmup), "--no-access-log", "--log-level", "warning"]
    return command + (["--prefill-chunk", str(cfg.prefill_chunk)] if cfg.prefill_chunk else [])


class ServerProcess:
    """`encore serve --random-weights` for one model, at the benchmark's limits."""

    def __init__(self, model: str, cfg: ServeBenchConfig, log_path: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        command = serve_command(model, cfg, self.port)
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.log_path = log_path

    def wait_ready(self, timeout_s: float = 300) -> dict[str, Any]:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text()[-2000:]
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{tail}")
            try:
                r = httpx.get(f"{self.url}/health", timeout=2)
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"the server did not answer /health in {timeout_s:.0f} s (log: {self.log_path})")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


# --- the client -----------------------------------------------------------------------------------


async def _one(client: Any, url: str, body: dict, t0: float, arrival: float) -> dict[str, Any]:
    """Send at `t0 + arrival`; stream; the timings of each chunk."""
    await asyncio.sleep(max(0.0, t0 + arrival - time.perf_counter()))
    sent = time.perf_counter()
    stamps, text, reason, status = [], [], None, None
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            status = r.status_code
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choice = json.loads(line[6:])["choices"][0]
                stamps.append(time.perf_counter())
                text.append(choice["text"])
                reason = choice["finish_reason"] or reason
    except Exception as e:  # a failed request is counted, not fatal
        return {"sent": sent, "ok": False, "error": f"{type(e).__name__}: {e}"}
    ok = status == 200 and reason is not None
    return {"sent": sent, "ok": ok, "stamps": stamps, "status": status, "finish_reason": reason}


async def _poll_slots(url: str, client: Any, out: list[tuple[float, float]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            text = (await client.get(f"{url}/metrics")).text
            slots = next(float(x.split()[-1]) for x in text.splitlines() if x.startswith("encore_slots_in_use "))
            out.append((time.perf_counter(), slots))
        except Exception:  # noqa: S112 (a missed sample is no error)
            pass
        await asyncio.sleep(0.5)


async def drive(url: str, requests: list[Request], words: list[str], seed: int, timeout_s: float) -> dict[str, Any]:
    """Run the workload against one server; per-request records and the slot samples."""
    import httpx

    rng = random.Random(seed + 1)
    bodies = [
        {
            "prompt": prompt_text(words, r.words, rng),
            "max_tokens": r.max_tokens,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
        }
        for r in requests
    ]
    limits = httpx.Limits(max_connections=len(requests) + 4, max_keepalive_connections=len(requests) + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        slots: list[tuple[float, float]] = []
        stop = asyncio.Event()
        poller = asyncio.create_task(_poll_slots(url, client, slots, stop))
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(_one(client, url, b, t0, r.arrival_s)) for b, r in zip(bodies, requests)]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        stop.set()
        await poller
    records = [t.result() if t in done else {"ok": False, "error": f"no answer in {timeout_s:.0f} s"} for t in tasks]
    for rec, req in zip(records, requests):
        rec.update(max_tokens=req.max_tokens, prompt_tokens=req.words + 2, arrival_s=req.arrival_s)
    return {"t0": t0, "records": records, "slots": slots}


# --- numbers ----------------------------------------------------------------------------------------


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """Requests/s, output tokens/s, TTFT and inter-token percentiles, slots in use, of one run."""
    records, t0 = run["records"], run["t0"]
    ok = [r for r in records if r["ok"]]
    ttft = [r["stamps"][0] - r["sent"] for r in ok if r["stamps"]]
    gaps = [b - a for r in ok for a, b in zip(r["stamps"], r["stamps"][1:])]
    end = max((r["stamps"][-1] for r in ok if r["stamps"]), default=t0)
    span = end - t0
    out_tokens = sum(r["max_tokens"] for r in ok)  # ignore_eos: each completion is exactly max_tokens long
    busy = [s for _, s in run["slots"]]
    return {
        "requests": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "errors": sorted({r.get("error") or f"HTTP {r.get('status')}" for r in records if not r["ok"]})[:5],
        "duration_s": span,
        "requests_per_s": len(ok) / span if span > 0 else None,
        "output_tokens_per_s": out_tokens / span if span > 0 else None,
        "mean_prompt_tokens": sum(r["prompt_tokens"] for r in records) / max(1, len(records)),
        "mean_output_tokens": sum(r["max_tokens"] for r in records) / max(1, len(records)),
        "ttft_p50_s": _quantile(ttft, 0.5),
        "ttft_p99_s": _quantile(ttft, 0.99),
        "itl_p50_s": _quantile(gaps, 0.5),
        "itl_p99_s": _quantile(gaps, 0.99),
        "slots_in_use_mean": sum(busy) / len(busy) if busy else None,
        "slots_in_use_max": max(busy, default=None),
    }


def predict(config: Any, slots: int, cfg: ServeBenchConfig, machine: Machine, weight_bytes: float | None) -> dict:
    """The saturated server as the cost model sees it (module docstring), at the workload's mean lengths:
    its capacity; `at(rate)` of an offered load is min(rate, capacity) requests/s."""
    s_in = round((2 - cfg.spread) / 2 * cfg.input_len)
    n_out = max(1, round((2 - cfg.spread) / 2 * cfg.output_len))
    prefill = prefill_cost(config, 1, s_in, 4, weight_bytes=weight_bytes).time(machine)
    step = decode_step_cost(config, slots, s_in, max(1, n_out // 2), 4, weight_bytes=weight_bytes).time(machine)
    capacity = 1 / (prefill + n_out * step / slots)
    return {
        "prefill_s": prefill,
        "decode_step_s": step,
        "capacity_requests_per_s": capacity,
        "capacity_output_tokens_per_s": capacity * n_out,
        "output_tokens_per_request": n_out,
    }


def at_rate(prediction: dict, rate: float) -> dict[str, Any]:
    rps = min(rate, prediction["capacity_requests_per_s"])
    n_out = prediction["output_tokens_per_request"]
    return {"requests_per_s": rps, "output_tokens_per_s": rps * n_out, "saturated": rate > rps}


# --- the run ----------------------------------------------------------------------------------------


def _machine(cfg: ServeBenchConfig) -> Machine:
    from encore.bench.machine import machine_for, roofline_kernel

    dtype = torch.bfloat16 if cfg.device == "cuda" else torch.float32
    kernel = roofline_kernel(cfg.device, dtype, cfg.quantize)
    return machine_for(kernel, cfg.device, dtype, cfg.peak_flops, cfg.mem_bandwidth)


def _serve_one(model: str, cfg: ServeBenchConfig, words: list[str], machine: Machine) -> dict:
    """Start the server, warm it up, run the workload at each rate, stop it (SIGTERM); the model's results."""
    from encore.convert import resolve_model

    log_path = Path(cfg.json_path or "bench_serve.json").with_suffix(f".{model.replace('/', '_')}.log")
    server = ServerProcess(model, cfg, log_path)
    runs = []
    try:
        health = server.wait_ready()
        warm = [Request(0.0, max(1, cfg.input_len - 2), cfg.output_len) for _ in range(cfg.warmup)]
        if warm:
            asyncio.run(drive(server.url, warm, words, cfg.seed + 99, cfg.timeout_s))
        for rate in cfg.rates:
            runs.append((rate, asyncio.run(drive(server.url, workload(cfg, rate), words, cfg.seed, cfg.timeout_s))))
    finally:
        exit_code = server.stop()
    config = resolve_model(model)[0].replace(vocab_size=health["vocab_size"])
    prediction = predict(
        config, health["slots"], cfg, machine, bytes_per_weight(cfg.quantize) if cfg.quantize else None
    )
    return {
        "model": model,
        "arch": health["arch"],
        "slots": health["slots"],
        "kv_budget_bytes": cfg.kv_budget_mb * MiB,
        "kv_reserved_bytes": health["kv_bytes"],
        "kv_bytes_per_slot": health["kv_bytes"] // health["slots"],
        "predicted": prediction,
        "runs": [
            {"rate": rate, "measured": summarize(run), "predicted": at_rate(prediction, rate)} for rate, run in runs
        ],
        "server_exit_code": exit_code,
        "server_log": str(log_path),
    }


def _ratio(x: float | None, y: float | None) -> float | None:
    return None if not x or not y else x / y


def ratios(a: dict, b: dict) -> list[dict[str, Any]]:
    """Model over baseline at each rate: output tokens/s measured and predicted, p99 TTFT; slots."""
    out = []
    for ra, rb in zip(a["runs"], b["runs"]):
        ma, mb = ra["measured"], rb["measured"]
        out.append(
            {
                "rate": ra["rate"],
                "output_tokens_per_s": _ratio(ma["output_tokens_per_s"], mb["output_tokens_per_s"]),
                "predicted_output_tokens_per_s": _ratio(
                    ra["predicted"]["output_tokens_per_s"], rb["predicted"]["output_tokens_per_s"]
                ),
                "ttft_p99": _ratio(ma["ttft_p99_s"], mb["ttft_p99_s"]),
                "slots": _ratio(a["slots"], b["slots"]),
            }
        )
    return out


def run_serve_bench(cfg: ServeBenchConfig) -> dict[str, Any]:
    """Both models under the same workloads and KV budget; returns (and writes) the JSON document."""
    from encore.bench.serving_report import format_serve_report, plot_serve
    from encore.data.vocab import default_tokenizer

    cfg.validate()
    machine = _machine(cfg)
    words = word_tokens(default_tokenizer())
    started = time.perf_counter()
    results = [_serve_one(m, cfg, words, machine) for m in (cfg.model, cfg.baseline) if m]
    doc: dict[str, Any] = {
        "kind": "serve",
        "device": cfg.device,
        "device_name": _device_name(torch.device(cfg.device)),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "machine": {"peak_flops": machine.peak_flops, "mem_bandwidth_bytes_per_s": machine.mem_bandwidth},
        "config": asdict(cfg),
        "results": results,
        "ratios": ratios(*results) if len(results) == 2 else [],
        "wall_s": time.perf_counter() - started,
    }
    if cfg.json_path:
        Path(cfg.json_path).write_text(json.dumps(doc, indent=2) + "\n")
    if cfg.plot_path:
        plot_serve(doc, cfg.plot_path)
    if cfg.report:
        print(format_serve_report(doc))
    return doc
