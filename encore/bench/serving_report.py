"""The table and the plot of `encore bench --serve` (`encore.bench.serving`)."""

from __future__ import annotations

from typing import Any

from encore.lazy import require


def _f(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def format_serve_report(doc: dict) -> str:
    cfg = doc["config"]
    low_in, low_out = (round((1 - cfg["spread"]) * cfg[k]) for k in ("input_len", "output_len"))
    lines = [
        f"encore serve capacity on {doc['device_name']} ({doc['cpu_count']} cores), --quantize "
        f"{cfg['quantize'] or 'none'}, --kv-budget-mb {cfg['kv_budget_mb']:g} for each model",
        f"workload: {cfg['requests']} requests per load, Poisson arrivals, prompts {low_in}..{cfg['input_len']} "
        f"tokens -> {low_out}..{cfg['output_len']} new (seed {cfg['seed']})",
        "",
        f"{'model':<16} {'slots':>5} {'load':>5} {'done':>6} {'req/s':>6} {'out tok/s':>9} {'pred.':>7} "
        f"{'TTFT p50':>9} {'p99':>7} {'ITL p50':>8} {'p99':>7} {'in use':>6}",
    ]
    for r in doc["results"]:
        for run in r["runs"]:
            m, p = run["measured"], run["predicted"]
            lines.append(
                f"{r['model']:<16} {r['slots']:>5} {run['rate']:>5g} {m['completed']:>3}/{m['requests']:<2} "
                f"{_f(m['requests_per_s']):>6} {_f(m['output_tokens_per_s'], digits=1):>9} "
                f"{_f(p['output_tokens_per_s'], digits=1):>7} {_f(m['ttft_p50_s']):>8}s {_f(m['ttft_p99_s']):>6}s "
                f"{_f(m['itl_p50_s'], 1e3, 0):>6}ms {_f(m['itl_p99_s'], 1e3, 0):>5}ms "
                f"{_f(m['slots_in_use_mean'], digits=1):>6}"
            )
            if m["failed"]:
                lines.append(f"  {m['failed']} failed: {'; '.join(m['errors'])}")
    if doc.get("ratios"):
        a, b = (r["model"] for r in doc["results"])
        lines += ["", f"{a} / {b} ({_f(doc['ratios'][0]['slots'])}x the slots):"]
        for q in doc["ratios"]:
            lines.append(
                f"  load {q['rate']:g} req/s: output tokens/s {_f(q['output_tokens_per_s'])}x measured, "
                f"{_f(q['predicted_output_tokens_per_s'])}x predicted; p99 TTFT {_f(q['ttft_p99'])}x"
            )
    lines.append(
        "load = offered requests/s; pred. = the cost model: min(load, capacity), capacity = 1 / (roofline prefill "
        "+ output tokens x decode step / slots)"
    )
    return "\n".join(lines)


def plot_serve(doc: dict, path: str) -> None:
    """Output tokens/s against the offered load (measured, and the cost model dashed), and p99 time
    to first token against the load, per model."""
    matplotlib = require("matplotlib", "bench")

    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "bench")

    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in doc["results"]:
        color = "tab:blue" if r["arch"] == "encdec" else "tab:orange"
        rates = [run["rate"] for run in r["runs"]]
        label = f"{r['model']} ({r['slots']} slots)"
        ax_t.plot(rates, [run["measured"]["output_tokens_per_s"] for run in r["runs"]], "o-", color=color, label=label)
        cap, n_out = r["predicted"]["capacity_requests_per_s"], r["predicted"]["output_tokens_per_request"]
        grid = [max(rates) * 1.1 * i / 100 for i in range(101)]
        ax_t.plot(
            grid, [min(x, cap) * n_out for x in grid], "--", color=color, alpha=0.6, label=f"{r['model']}, cost model"
        )
        for key, style in (("ttft_p99_s", "o-"), ("ttft_p50_s", "s:")):
            ax_l.plot(
                rates,
                [run["measured"][key] for run in r["runs"]],
                style,
                color=color,
                label=f"{r['model']} {'p99' if '99' in key else 'p50'}",
            )
    ax_t.set_xlabel("offered load (requests / s)")
    ax_t.set_ylabel("output tokens / s")
    ax_t.set_title("throughput at the same KV budget", fontsize=10)
    ax_l.set_xlabel("offered load (requests / s)")
    ax_l.set_ylabel("time to first token (s)")
    ax_l.set_yscale("log")
    ax_l.set_title("time to first token", fontsize=10)
    for ax in (ax_t, ax_l):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    cfg = doc["config"]
    fig.suptitle(
        f"encore serve on {doc['device_name']}, {cfg['quantize'] or 'fp32'}, KV budget {cfg['kv_budget_mb']:g} MiB, "
        f"{cfg['requests']} requests per load, up to {cfg['input_len']} -> {cfg['output_len']} tokens",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
