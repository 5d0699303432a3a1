"""Fine-tuning the deployed families' blocks on an embedded task: a Flan-T5-shaped model (T5's relative
bias, gated GELU, no attention scale) and a BART-shaped one (post-norm LayerNorms, biases, learned
positions), each a transformers checkpoint with random weights, fine-tuned by `encore finetune` on
2-digit addition, scored by `encore eval`, written back by `encore convert --to hf`, and reloaded by
transformers, whose greedy answers are compared with encore's. Every stage is an `encore` command,
printed before it runs; results go to OUT/results.json (docs/results.md).

    python examples/finetune_families.py [--out runs/finetune-families] [--steps 2000]   # ~4 min
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _encore import digit_tokenizer, encore

TASK = ["--task", "addition", "--task-option", "digits=2", "--max-source-len", "8", "--max-target-len", "4"]
IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, vocab_size=16)


def hf_checkpoint(family: str, directory: Path, tokenizer: str) -> None:
    """A transformers checkpoint of `family`'s blocks, d_model 64, 2 + 2 layers, random weights."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    if family == "flan-t5":
        config = transformers.T5Config(d_model=64, d_kv=16, d_ff=256, num_layers=2, num_heads=4,
                                       feed_forward_proj="gated-gelu", dropout_rate=0.0, decoder_start_token_id=0,
                                       tie_word_embeddings=False, **IDS)  # fmt: skip
        model = transformers.T5ForConditionalGeneration(config)
    else:
        config = transformers.BartConfig(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                         decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
                                         max_position_embeddings=64, dropout=0.0, decoder_start_token_id=2,
                                         forced_eos_token_id=None, **IDS)  # fmt: skip
        model = transformers.BartForConditionalGeneration(config)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(directory)


def accuracy(predictions: Path) -> tuple[float, list[dict]]:
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    right = 0
    for r in rows:
        a, b = (int(x.replace(" ", "")) for x in r["source"].split("+"))
        right += r["prediction"].replace(" ", "") == str(a + b)
    return 100.0 * right / len(rows), rows


def transformers_agree(hf_dir: Path, rows: list[dict], n: int = 100) -> float:
    """Share (%) of the first `n` problems where transformers' greedy answer (the written-back checkpoint)
    is encore's."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model, tok = AutoModelForSeq2SeqLM.from_pretrained(hf_dir).eval(), AutoTokenizer.from_pretrained(hf_dir)
    same = 0
    for r in rows[:n]:
        ids = torch.tensor([tok(r["source"], add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=4, do_sample=False, num_beams=1)
        same += tok.decode(out[0], skip_special_tokens=True).replace(" ", "") == r["prediction"].replace(" ", "")
    return 100.0 * same / min(n, len(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/finetune-families")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--limit", type=int, default=500, help="validation problems scored")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = digit_tokenizer(out / "tokenizer")
    results = {"steps": args.steps, "problems": args.limit}
    for family in ("flan-t5", "bart"):
        base, run, hf = out / family / "hf", out / family / "run", out / family / "back"
        hf_checkpoint(family, base, tokenizer)
        log = out / family
        encore(log / "finetune.log", "finetune", "--model", str(base), *TASK, "--max-steps", str(args.steps),
               "--batch-size", "64", "--micro-batch-size", "64", "--lr", "1e-2", "--seed", "0",
               "--out", str(run), "--overwrite")  # fmt: skip
        scores = {}
        for name, model in (("before", base), ("after", run / "final")):
            predictions = log / f"{name}.jsonl"
            encore(log / f"eval-{name}.log", "eval", "--model", str(model), *TASK[:4], "--split", "validation",
                   "--limit", str(args.limit), "--max-new-tokens", "4", "--batch-size", "250",
                   "--out", str(predictions))  # fmt: skip
            scores[name], rows = accuracy(predictions)
        encore(log / "convert.log", "convert", "--model", str(run / "final"), "--out", str(hf), "--to", "hf")
        losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        results[family] = {"accuracy_before": scores["before"], "accuracy_after": scores["after"],
                           "first_loss": losses[0], "last_loss": losses[-1],
                           "transformers_agree_after_round_trip": transformers_agree(hf, rows)}  # fmt: skip
        print(f"{family}: {results[family]}", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
