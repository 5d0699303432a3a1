"""The claims measured beside the quality ones: `efficiency` (encore bench), `long_context` (loss at 4x the
training length with and without NTK-aware RoPE scaling) and `vision` (the two VLMs on shapesvqa and
token compression). Each returns its entry of results.json."""

from __future__ import annotations

import json
from typing import Any

from encore.reproduce.context import Context, compare, fmt, summary
from encore.reproduce.runner import Experiment

NOISE_DENSITY = 0.05  # long_context: the span-corruption noise at every length (see span_losses)
PAPER_EFFICIENCY = {"first_token_latency_reduction": 0.47, "throughput_ratio": 4.7}


def efficiency(ctx: Context) -> dict[str, Any]:
    """`encore bench` of the scale's two models (fp32, and int8 on the CPU) at one input / output length."""
    a, b = ctx.scale.bench_models
    out = ctx.runner.out("efficiency")
    out.mkdir(parents=True, exist_ok=True)
    quantize = ["none", "int8"] if ctx.device == "cpu" else ["none"]
    argv = [
        "bench",
        "--model",
        a,
        "--baseline",
        b,
        "--input-len",
        str(ctx.scale.bench_input_len),
        "--output-len",
        str(ctx.scale.bench_output_len),
        "--no-sweep",
        "--repeats",
        str(ctx.scale.bench_repeats),
        "--quantize",
        *quantize,
        "--device",
        ctx.device,
        "--json",
        str(out / "bench.json"),
        "--plot",
        str(out / "bench.png"),
    ]
    ctx.runner.run(Experiment("efficiency", argv))
    doc = json.loads((out / "bench.json").read_text())
    rows = [c for c in doc["comparisons"] if c.get("kind") == "full" and not c.get("baseline_anchor")]
    table = [
        {
            "model": c["model"],
            "baseline": c["baseline"],
            **{k: c["measured"][k] for k in PAPER_EFFICIENCY},
            "predicted_" + "throughput_ratio": c["predicted"]["throughput_ratio"],
        }
        for c in rows
    ]
    fp32 = table[0]
    reduction, ratio = fp32["first_token_latency_reduction"], fp32["throughput_ratio"]
    if (
        reduction >= PAPER_EFFICIENCY["first_token_latency_reduction"] / 2
        and ratio >= PAPER_EFFICIENCY["throughput_ratio"] / 2
    ):
        verdict = "holds"
    elif reduction > 0 and ratio > 1:
        verdict = "partly"
    else:
        verdict = "does not hold"
    return {
        "verdict": verdict,
        "paper": PAPER_EFFICIENCY,
        "measured": {k: fp32[k] for k in PAPER_EFFICIENCY},
        "metric": f"first-token latency reduction and end-to-end throughput ratio, {a} vs {b}, "
        f"{ctx.scale.bench_input_len} -> {ctx.scale.bench_output_len} tokens, batch 1, {ctx.device}",
        "runs": table,
        "table": table,
        "machine": {k: doc.get(k) for k in ("device_name", "torch", "threads", "cpu_count")},
        "why": f"fp32: first token {100 * reduction:+.0f}% shorter, throughput {ratio:.2f}x (holds: at least half "
        "the paper's effect in the same direction; partly: same direction, smaller)",
    }


# --- long_context -----------------------------------------------------------------------------------


def long_context(ctx: Context) -> dict[str, Any]:
    """The pretrained 2/3-1/3 encoder-decoder (trained at the short length), evaluated at 4x that length."""
    short, long = ctx.scale.long_lengths
    config = ctx.config("encdec")
    losses: dict[str, list[float]] = {"short": [], "long": [], "long_ntk": []}
    for seed in ctx.seeds:
        pretrained = ctx.pretrain(config, seed)
        fn = lambda folder, p=pretrained: span_losses(p, short, long, ctx.scale.long_batches, ctx.device)
        label = f"(in process) encore.reproduce.measures.span_losses({pretrained!r}, {short}, {long})"
        record = ctx.runner.run(Experiment(f"long-context-s{seed}", fn=fn, label=label))
        for key in losses:
            losses[key].append(record["result"][key])
    s, plain, ntk = (summary(losses[k]) for k in ("short", "long", "long_ntk"))
    outcome = compare([-x for x in losses["long_ntk"]], [-x for x in losses["long"]])  # lower loss is better
    if outcome == "better":
        verdict = "holds" if ntk["mean"] <= 1.1 * s["mean"] else "partly"
    else:  # a tie: scaling changed nothing measurable, which a barely trained model cannot tell from "no effect"
        verdict = "inconclusive" if outcome == "tie" else "does not hold"
    return {
        "verdict": verdict,
        "paper": "NTK-aware RoPE scaling keeps long inputs working (2,048 tokens after training at 512)",
        "measured": {"loss_short": s["mean"], "loss_long": plain["mean"], "loss_long_ntk": ntk["mean"]},
        "metric": f"span-corruption cross-entropy per target token at {short} and {long} input tokens (noise "
        f"density {NOISE_DENSITY}, mean span 3; the same stdlib text from its start)",
        "runs": [{"seed": seed, **{k: v[i] for k, v in losses.items()}} for i, seed in enumerate(ctx.seeds)],
        "table": [
            {"input tokens": short, "rope": "as trained", "loss": s},
            {"input tokens": long, "rope": "as trained", "loss": plain},
            {"input tokens": long, "rope": f"NTK x{long / short:g}", "loss": ntk},
        ],
        "why": f"loss {fmt(s)} at {short}; at {long}: {fmt(plain)} as trained, {fmt(ntk)} with NTK scaling "
        f"({outcome}); holds: NTK better and within 10% of the short-length loss; a tie is inconclusive",
    }


def span_losses(checkpoint: str, short: int, long: int, batches: int, device: str) -> dict[str, float]:
    """Mean span-corruption loss per target token of an encoder-decoder checkpoint on stdlib text at
    `short` and `long` input tokens, the latter with and without NTK scaling by long / short. The text is
    the pretraining corpus read from its start: this measures length generalisation, not held-out text.
    Noise density 0.05 (pretraining: 0.15) at every length: 2,048 tokens at 0.15 would need more spans
    than the tokenizer has sentinels (100); the spans keep the pretraining's mean length (3)."""
    import torch

    from encore.convert import load
    from encore.data import open_corpus, pretraining_collator, pretraining_stream
    from encore.train.losses import seq2seq_loss

    out = {}
    for key, length, factor in (("short", short, 1.0), ("long", long, 1.0), ("long_ntk", long, long / short)):
        model = load(checkpoint, device=device, max_seq_len=max(long * 2, 4096), rope_scaling=factor).eval()
        stream = pretraining_stream(
            open_corpus("stdlib"), model.tokenizer, "encdec", input_len=length, noise_density=NOISE_DENSITY, seed=0
        )
        stream = iter(stream)
        collate = pretraining_collator(model.config)
        total, tokens = 0.0, 0
        with torch.inference_mode():
            for _ in range(batches):
                batch = {k: v.to(device) for k, v in collate([next(stream) for _ in range(2)]).items()}
                total += float(seq2seq_loss(model, batch).total)
                tokens += seq2seq_loss.target_tokens(batch)
        out[key] = total / tokens
    return out


# --- vision -----------------------------------------------------------------------------------------


VISION_ARMS = [
    ("encdec", 1.0, "variance"),
    ("deconly", 1.0, "variance"),
    ("encdec", 0.33, "variance"),
    ("encdec", 0.33, "uniform"),
    ("encdec", 0.1, "variance"),
    ("encdec", 0.1, "uniform"),
]


def vision(ctx: Context) -> dict[str, Any]:
    """Encoder-decoder vs decoder-only VLM (vit-tiny tower, same text shape, data and steps) on shapesvqa,
    and token compression on the encoder-decoder: keep 1.0 / 0.33 / 0.1, variance vs uniform."""
    scores: dict[tuple, list[float]] = {arm: [] for arm in VISION_ARMS}
    for seed in ctx.seeds:
        for arch, keep, selection in VISION_ARMS:
            tag = f"vision-{arch}-keep{keep}-{selection}-s{seed}"
            flags = [
                "--vision",
                "vit-tiny",
                "--image-keep",
                str(keep),
                "--selection",
                selection,
                "--task-option",
                f"size={ctx.scale.vision_train_size}",
            ]
            final = ctx.finetune(tag, ctx.config(arch), "shapesvqa", seed, ctx.scale.vision_steps, flags)
            scores[(arch, keep, selection)].append(ctx.evaluate(f"eval-{tag}", final, "shapesvqa")["accuracy"])
    arch_outcome = compare(scores[("encdec", 1.0, "variance")], scores[("deconly", 1.0, "variance")])
    selection_outcomes = {
        k: compare(scores[("encdec", k, "variance")], scores[("encdec", k, "uniform")]) for k in (0.33, 0.1)
    }
    keep_outcome = compare(scores[("encdec", 0.33, "variance")], scores[("encdec", 1.0, "variance")])
    checks = [
        arch_outcome == "better",
        "worse" not in selection_outcomes.values() and "better" in selection_outcomes.values(),
        keep_outcome != "worse",
    ]
    outcomes = [arch_outcome, keep_outcome, *selection_outcomes.values()]
    if all(o == "tie" for o in outcomes):
        verdict = "inconclusive"  # every difference sits inside the seed ranges
    else:
        verdict = "holds" if all(checks) else ("partly" if any(checks) else "does not hold")
    table = [{"arch": a, "image_keep": k, "selection": s, "accuracy": summary(v)} for (a, k, s), v in scores.items()]
    mean = lambda arm: summary(scores[arm])["mean"]
    return {
        "verdict": verdict,
        "paper": "encoder-decoder VLM +7-11% over decoder-only; variance selection keeps quality at 67% fewer tokens",
        "measured": {
            "encdec_minus_deconly": mean(("encdec", 1.0, "variance")) - mean(("deconly", 1.0, "variance")),
            "keep0.33_variance_minus_keep1.0": mean(("encdec", 0.33, "variance")) - mean(("encdec", 1.0, "variance")),
            "variance_minus_uniform": {
                k: mean(("encdec", k, "variance")) - mean(("encdec", k, "uniform")) for k in (0.33, 0.1)
            },
        },
        "metric": "shapesvqa validation accuracy (exact match, %)",
        "runs": [{"arch": a, "image_keep": k, "selection": s, "scores": v} for (a, k, s), v in scores.items()],
        "table": table,
        "why": f"encoder-decoder vs decoder-only: {arch_outcome}; variance vs uniform at 0.33 / 0.1: "
        f"{selection_outcomes[0.33]} / {selection_outcomes[0.1]}; variance at 0.33 vs keep 1.0: {keep_outcome}",
    }
