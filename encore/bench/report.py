"""`encore bench`'s output: the JSON schema (`validate_bench_json`, documented in docs/bench.md), the
printed report and the plot."""

from __future__ import annotations

from typing import Any

from encore.bench.config import PAPER, BenchConfig
from encore.bench.costmodel import Machine, dtype_bytes, generation_cost
from encore.config import ModelConfig
from encore.lazy import require

# --- JSON schema ------------------------------------------------------------------------------------

_NUM = (int, float)
_NUM_OR_NULL = (int, float, type(None))  # null: the backend cannot time it (an anchor's beam search)
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
    "first_token_latency_s": _NUM_OR_NULL,
    "decode_tokens_per_s": _NUM_OR_NULL,
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
                expected = "/".join("null" if t is type(None) else t.__name__ for t in types)
                problems.append(f"results[{i}].{key}: expected {expected}, got {value!r}")
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


def _own(c: dict) -> bool:
    """A comparison of encore's two models (not against an anchor); older JSON had backend "torch"."""
    return not c["baseline_anchor"] if "baseline_anchor" in c else c["baseline_backend"] == "torch"


def format_report(doc: dict, cfg: BenchConfig | None = None) -> str:
    lines = [*_header(doc), "", *_results_table(doc)]
    for label, why in (doc.get("failed") or {}).items():
        lines.append(f"{label}: failed, no row ({why})")
    for c in doc["comparisons"]:
        if c["kind"] == "full":
            lines += ["", *_comparison(c)]
    lines += _sweep_table(doc)
    for r in doc["results"]:
        if r.get("prefill_profile"):
            lines += ["", *format_profile(r["model"], r["prefill_profile"])]
    lines += _notes(doc)
    lines.append("")
    lines.append(f"finished in {doc['wall_s']:.0f} s")
    if cfg is not None and cfg.json_path:
        lines[-1] += f"; wrote {cfg.json_path}" + (f" and {cfg.plot_path}" if cfg.plot_path else "")
    return "\n".join(lines)


def format_profile(label: str, profile: dict[str, Any]) -> list[str]:
    """The report's lines for one model's prefill profile."""
    peak = profile.get("peak_ops")
    head = f"prefill profile, {label}: {profile['batch_size']} x {profile['input_len']} tokens, "
    head += f"{profile['wall_s'] * 1e3:.1f} ms" + (f"; probed peak {peak / 1e9:.0f} G(FL)OP/s" if peak else "")
    lines = [head, f"  {'part':<10} {'ms':>8} {'share':>7} {'G(FL)OP/s':>10} {'of peak':>8}"]
    for part, p in profile["parts"].items():
        rate = p.get("rate")
        rate_s = "-" if rate is None else f"{rate / 1e9:.0f}"
        peak_s = "-" if p.get("peak_share") is None else f"{p['peak_share']:.0%}"
        share = "-" if p["share"] is None else f"{p['share']:.0%}"
        lines.append(f"  {part:<10} {p['seconds'] * 1e3:>8.1f} {share:>7} {rate_s:>10} {peak_s:>8}")
    return lines


def _header(doc: dict) -> list[str]:
    machines = doc.get("machines") or {doc.get("cpu_linear") or "linear": doc["machine"]}
    how = "probed" if doc["machine"]["measured"] else "given"
    roofs = "; ".join(
        f"{kernel} {m['peak_flops'] / 1e9:.0f} G(FL)OP/s, {m['mem_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s"
        for kernel, m in machines.items()
    )
    return [
        f"encore bench: {doc['device']} ({doc['device_name']}), {doc['dtype']}, {doc['threads']} threads, "
        f"torch {doc['torch']}; roofline {how}: {roofs}"
    ]


def _results_table(doc: dict) -> list[str]:
    lines = [
        f"{'model':<32} {'backend':<16} {'params':>7} {'in->out':>10} {'B':>3} {'TTFT s':>8} {'decode tok/s':>13} "
        f"{'p50 gap ms':>10} {'e2e tok/s':>10} {'peak mem':>10} {'KV cache':>10}"
    ]
    for r in doc["results"]:
        lines.append(
            f"{r['model']:<32} {r['backend']:<16} {r['params'] / 1e6:>6.0f}M "
            f"{str(r['input_len']) + '->' + str(r['output_len']):>10} {r['batch_size']:>3} "
            f"{_f(r['first_token_latency_s'], '.3f'):>8} {_f(r['decode_tokens_per_s'], '.1f'):>13} "
            f"{_f(_times(r.get('inter_token_latency_s'), 1e3), '.1f'):>10} "
            f"{_f(r['throughput_tokens_per_s'], '.1f'):>10} {_fmt_bytes(r['peak_memory_bytes']):>10} "
            f"{_fmt_bytes(r['kv_cache_bytes']):>10}"
        )
    return lines


def _comparison(c: dict) -> list[str]:
    me, pr = c["measured"], c["predicted"]
    paper = _own(c)
    rows = [
        ("first-token latency", _ttft(me), _ttft(pr), _pct(PAPER["first_token_latency_reduction"])),
        ("decode tokens/s", _x(me["decode_speedup"]), _x(pr["decode_speedup"]), ""),
        ("p50 token gap speedup", _x(me.get("inter_token_speedup")), "", ""),
        ("end-to-end tokens/s", _x(me["throughput_ratio"]), _x(pr["throughput_ratio"]), "4.70x"),
        ("peak memory", _x(me["peak_memory_ratio"]), "", ""),
        ("KV cache", _x(me["kv_cache_ratio"]), "", ""),
        ("FLOPs / bytes moved", "", f"{_x(pr['flops_ratio'])} / {_x(pr['bytes_moved_ratio'])}", ""),
    ]
    lines = [
        f"{c['model']} vs {c['baseline']}, {c['input_len']}->{c['output_len']}, batch {c['batch_size']}:",
        f"  {'':<24} {'measured':>14} {'cost model':>14}" + (f" {'paper':>7}" if paper else ""),
    ]
    for name, measured, predicted, from_paper in rows:
        line = f"  {name:<24} {measured:>14} {predicted:>14}" + (f" {from_paper:>7}" if paper else "")
        lines.append(line.rstrip())
    return lines


def _sweep_table(doc: dict) -> list[str]:
    own = [c for c in doc["comparisons"] if _own(c)]
    if not own:
        return []
    first = (own[0]["model"], own[0]["batch_size"])
    sweep = sorted((c for c in own if (c["model"], c["batch_size"]) == first), key=lambda c: c["input_len"])
    if len(sweep) < 2:
        return []
    lines = [
        "",
        f"input-length sweep, {sweep[0]['model']} vs {sweep[0]['baseline']}, batch {first[1]}:",
        f"  {'input':>6} {'TTFT measured':>16} {'cost model':>16} {'decode measured':>16} {'cost model':>11}",
    ]
    for c in sweep:
        me, pr = c["measured"], c["predicted"]
        lines.append(
            f"  {c['input_len']:>6} {_ttft(me):>16} {_ttft(pr):>16} {_x(me['decode_speedup']):>16} "
            f"{_x(pr['decode_speedup']):>11}"
        )
    return lines


def _notes(doc: dict) -> list[str]:
    notes = []
    load, cpus = doc.get("load_average_before"), doc.get("cpu_count") or 1
    if load is not None and load >= 0.5 * cpus:
        notes.append(f"load average {load:.1f} on {cpus} CPUs before the run: other processes share this machine")
    utils = [r["cpu_utilization"] for r in doc["results"] if r.get("cpu_utilization") is not None]
    if doc["device"] == "cpu" and utils and min(utils) < 0.9:
        notes.append(f"the bench got as little as {min(utils):.0%} of its {doc['threads']} threads' CPU time")
    return ["", "note: " + "; ".join(notes) + ". Timings are noisy: see the spreads in the JSON."] if notes else []


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
    matplotlib = require("matplotlib", "bench")

    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "bench")

    machine = Machine(doc["machine"]["peak_flops"], doc["machine"]["mem_bandwidth_bytes_per_s"])
    b0 = doc["results"][0]["batch_size"]
    fig, (ax_t, ax_d, ax_r) = plt.subplots(1, 3, figsize=(15, 4.4))
    grids = _plot_models(doc, machine, b0, ax_t, ax_d)
    _plot_ratios(doc, grids, b0, ax_r)
    for ax, title in ((ax_t, "time to first token (s)"), (ax_d, "decode throughput (tokens/s)"), (ax_r, None)):
        _log_axes(ax, title)
    ax_d.legend(fontsize=7)
    fig.suptitle(
        f"{doc['device_name']} ({doc['threads']} threads), {doc['dtype']}, batch {b0}; cost model lines: roofline "
        f"at {machine.peak_flops / 1e9:.0f} GFLOP/s, {machine.mem_bandwidth / 1e9:.0f} GB/s",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_models(doc: dict, machine: Machine, b0: int, ax_t, ax_d) -> dict[str, list]:
    """Each model's measured points and (encore models) its cost-model line; returns the lines' grids."""
    results, dtype = doc["results"], doc["dtype"]
    colors = {"encdec": "tab:blue", "deconly": "tab:orange"}
    grids: dict[str, list] = {}
    for label in dict.fromkeys(r["model"] for r in results):
        rows = sorted(
            (r for r in results if r["model"] == label and r["batch_size"] == b0), key=lambda r: r["input_len"]
        )
        if not rows:
            continue
        hf = rows[0].get("anchor", rows[0]["backend"] != "torch")
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
        n, wb = rows[-1]["output_len"], rows[0].get("weight_bytes")
        roof = _machine(doc, rows[0].get("kernel"), machine)
        preds = [
            generation_cost(cost_config, b0, s, n, dtype_bytes(dtype), weight_bytes=wb).predict(roof) for s in grid
        ]
        grids[label] = [grid, preds]
        ax_t.plot(grid, [p["first_token_latency_s"] for p in preds], color=color, label=f"{label} cost model")
        ax_d.plot(grid, [p["decode_tokens_per_s"] for p in preds], color=color, label=f"{label} cost model")
    return grids


def _machine(doc: dict, kernel: str | None, default: Machine) -> Machine:
    m = (doc.get("machines") or {}).get(kernel)
    return default if m is None else Machine(m["peak_flops"], m["mem_bandwidth_bytes_per_s"])


def _plot_ratios(doc: dict, grids: dict[str, list], b0: int, ax) -> None:
    """The first two encore models' ratios (model / baseline) against input length, and the paper's."""
    own = [c for c in doc["comparisons"] if _own(c) and c["batch_size"] == b0]
    if not own:
        return
    pairs = sorted((c for c in own if c["model"] == own[0]["model"]), key=lambda c: c["input_len"])
    lens = [c["input_len"] for c in pairs]
    ttft = [c["measured"]["first_token_latency_ratio"] for c in pairs]
    ax.plot(lens, ttft, "o", color="tab:green", label="TTFT ratio, measured")
    decode = [c["measured"]["decode_speedup"] for c in pairs]
    ax.plot(lens, decode, "o", color="tab:purple", label="decode speedup, measured")
    (grid, pm), (_, pb) = grids[pairs[0]["model"]], grids[pairs[0]["baseline"]]
    ttft_model = [m["first_token_latency_s"] / b["first_token_latency_s"] for m, b in zip(pm, pb)]
    ax.plot(grid, ttft_model, color="tab:green", label="TTFT ratio, cost model")
    decode_model = [m["decode_tokens_per_s"] / b["decode_tokens_per_s"] for m, b in zip(pm, pb)]
    ax.plot(grid, decode_model, color="tab:purple", label="decode speedup, cost model")
    paper_ttft = 1 - PAPER["first_token_latency_reduction"]
    ax.axhline(paper_ttft, color="tab:green", linestyle=":", label=f"TTFT ratio, paper ({paper_ttft:.2f})")
    ax.axhline(PAPER["throughput_ratio"], color="tab:purple", linestyle=":", label="throughput, paper (4.7x)")
    ax.set_title(f"{pairs[0]['model']} / {pairs[0]['baseline']}")
    ax.legend(fontsize=7)


def _log_axes(ax, title: str | None) -> None:
    ticker = require("matplotlib.ticker", "bench")
    FuncFormatter, LogLocator = ticker.FuncFormatter, ticker.LogLocator
    NullFormatter, ScalarFormatter = ticker.NullFormatter, ticker.ScalarFormatter

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
