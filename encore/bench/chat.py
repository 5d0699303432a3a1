"""`encore bench --workload chat`: a scripted conversation, turn by turn, on both architectures.

Each turn appends `user_len` new tokens to the conversation and asks for `reply_len` tokens, which are
appended too (random token ids, EOS off: the cost is the shapes', not the words'). Each turn is one
request to `encore.Engine`:

- the encoder-decoder re-encodes the whole conversation every turn (bidirectional: no K/V of an earlier
  turn is valid once the input grows) and its decoder writes the reply;
- the decoder-only model prefills the whole conversation, or, with prefix reuse
  (`Engine(prefix_cache_bytes=...)`, vLLM's automatic prefix caching), only what is new since the
  K/V it kept from the previous turn: the user's tokens (and the last reply token).

Reported per turn: time to first token (median over `repeats` conversations) and the turn's total
time; over the conversation: total interaction latency. The cost model prices each turn's prefill
by its FLOPs (prefill at these lengths is compute-bound): encoder-decoder, the encoder over the
history; decoder-only, the decoder over the history, or over the new tokens against the cached ones.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from encore.bench.backends import BackendSpec, EncoreBackend
from encore.bench.costmodel import prefill_cost
from encore.infer.engine import Engine
from encore.model.io import spec_label


@dataclass
class ChatBenchConfig:
    model: str = "encdec-330m"
    baseline: str = "deconly-330m"
    turns: int = 8
    user_len: int = 64
    reply_len: int = 64
    quantize: str | None = None
    repeats: int = 3
    seed: int = 0
    peak_gflops: float | None = None


def _model(spec: str, max_len: int, quantize: str | None, seed: int) -> Any:
    """The model as the bench's encore backend builds it (random weights seeded, or a checkpoint)."""
    recipe = BackendSpec("encore", spec, max_len, "cpu", "float32", seed, quantize=quantize)
    return EncoreBackend(recipe).build()


def _conversation(engine: Engine, cfg: ChatBenchConfig, rng: torch.Generator, vocab: int) -> list[dict]:
    """One conversation through `engine`: per turn, (time to first token, turn time) in seconds."""
    history: list[int] = []
    turns = []
    for _ in range(cfg.turns):
        history += torch.randint(3, vocab, (cfg.user_len,), generator=rng).tolist()
        t0 = time.perf_counter()
        rid = engine.add(history, max_new_tokens=cfg.reply_len, eos_token_id=None)
        reply, t_first = [], None
        while engine.has_work():
            for event in engine.step():
                if event.request_id == rid:
                    reply.append(event.token)
                    t_first = t_first or time.perf_counter()
        turns.append({"ttft": t_first - t0, "total": time.perf_counter() - t0, "input": len(history)})
        history += reply
    return turns


def _predicted(config: Any, cfg: ChatBenchConfig, reuse: bool, peak_flops: float) -> list[float]:
    """Each turn's prefill seconds at `peak_flops` (the cost model's FLOPs)."""
    out, history = [], 0
    for _ in range(cfg.turns):
        history += cfg.user_len
        flops = prefill_cost(config, 1, history).flops
        if reuse and history > cfg.user_len:  # the cached positions' share is not recomputed
            flops -= prefill_cost(config, 1, history - cfg.user_len - 1).flops
        out.append(flops / peak_flops)
        history += cfg.reply_len
    return out


def run_chat_bench(cfg: ChatBenchConfig) -> dict[str, Any]:
    """Time the conversation on the model, the baseline, and the baseline with prefix reuse."""
    if min(cfg.turns, cfg.user_len, cfg.reply_len, cfg.repeats) < 1:
        raise ValueError("--turns, --user-len, --reply-len and --repeats must be >= 1")
    longest = cfg.turns * (cfg.user_len + cfg.reply_len)
    runs = [("encoder-decoder", cfg.model, False), ("decoder-only", cfg.baseline, False)]
    runs.append(("decoder-only + prefix reuse", cfg.baseline, True))
    peak = (cfg.peak_gflops or _probe_gflops(cfg.quantize)) * 1e9
    results = []
    for label, spec, reuse in runs:
        model = _model(spec, longest + cfg.reply_len + 1, cfg.quantize, cfg.seed)
        input_len = longest if model.config.arch == "encdec" else longest - cfg.reply_len
        budget = (256 << 20) if reuse else 0
        engine = Engine(model, 1, input_len, cfg.reply_len, prefix_cache_bytes=budget)
        rng = torch.Generator().manual_seed(cfg.seed)
        warm = ChatBenchConfig(**{**cfg.__dict__, "turns": 1})
        _conversation(engine, warm, rng, model.config.vocab_size)  # warm-up
        convs = []
        for _ in range(cfg.repeats):
            if engine.prefix is not None:
                engine.prefix.clear()
            convs.append(_conversation(engine, cfg, rng, model.config.vocab_size))
        per_turn = [
            {
                "turn": t + 1,
                "input_tokens": convs[0][t]["input"],
                "ttft_s": statistics.median(c[t]["ttft"] for c in convs),
                "turn_s": statistics.median(c[t]["total"] for c in convs),
            }
            for t in range(cfg.turns)
        ]
        predicted = _predicted(model.config, cfg, reuse, peak)
        for row, p in zip(per_turn, predicted):
            row["predicted_prefill_s"] = p
        total = statistics.median(sum(turn["total"] for turn in c) for c in convs)
        results.append({"label": label, "model": spec_label(spec), "arch": model.config.arch, "reuse": reuse,
                        "turns": per_turn, "total_s": total})  # fmt: skip
        del engine, model
    return {"workload": "chat", "config": {**cfg.__dict__, "peak_gflops": peak / 1e9}, "results": results,
            "crossover": crossover(results)}  # fmt: skip


def _probe_gflops(quantize: str | None) -> float:
    from encore.bench.machine import measure_machine, roofline_kernel

    kernel = roofline_kernel("cpu", torch.float32, quantize)
    return measure_machine("cpu", torch.float32, kernel=kernel).peak_flops / 1e9


def crossover(results: list[dict]) -> dict[str, dict[str, int | None]]:
    """For each decoder-only variant, the first turn at which it beats the encoder-decoder: on the
    first token ("ttft_s") and on the whole turn ("turn_s"); None: not within the conversation."""
    encdec = next(r for r in results if r["arch"] == "encdec")
    out = {}
    for r in results:
        if r["arch"] == "deconly":
            out[r["label"]] = {}
            for key in ("ttft_s", "turn_s"):
                wins = [t["turn"] for t, e in zip(r["turns"], encdec["turns"]) if t[key] < e[key]]
                out[r["label"]][key] = wins[0] if wins else None
    return out


def format_chat_report(data: dict) -> str:
    cfg, results = data["config"], data["results"]
    lines = [
        f"chat workload: {cfg['turns']} turns of {cfg['user_len']} user + {cfg['reply_len']} reply tokens, "
        f"{cfg['quantize'] or 'fp32'}, median of {cfg['repeats']} conversations",
        "| turn | input tokens | " + " | ".join(f"{r['label']} first token" for r in results) + " |",
        "|---:|---:|" + "---:|" * len(results),
    ]
    for t in range(cfg["turns"]):
        row = [str(t + 1), str(results[0]["turns"][t]["input_tokens"])]
        row += [f"{r['turns'][t]['ttft_s'] * 1000:.0f} ms" for r in results]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("| total interaction | | " + " | ".join(f"{r['total_s']:.2f} s" for r in results) + " |")
    for label, turns in data["crossover"].items():
        first, whole = (turns[k] or "never" for k in ("ttft_s", "turn_s"))
        lines.append(f"{label} beats the encoder-decoder: first token from turn {first}, whole turn from turn {whole}")
    return "\n".join(lines)


def plot_chat(data: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in data["results"]:
        turns = [t["turn"] for t in r["turns"]]
        ax.plot(turns, [t["ttft_s"] * 1000 for t in r["turns"]], marker="o", label=r["label"])
    ax.set_xlabel("turn")
    ax.set_ylabel("time to first token (ms)")
    ax.set_title("multi-turn chat: every turn's first token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
