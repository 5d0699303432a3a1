"""Distillation on 2-digit addition with small models (seconds per hundred steps on a 2-core CPU): the
evidence behind README's distillation tables. Every stage is an `encore` command, printed before it
runs and skipped when its output exists; results go to OUT/results.json.

    python examples/kd_addition.py changed [--out runs/kd-changed]   # ~10 min
    python examples/kd_addition.py regime  [--out runs/kd-regime]    # ~25 min
    python examples/kd_addition.py check3  [--out runs/kd-directions]      # ~4 min
    python examples/kd_addition.py directions  [--out runs/kd-directions]  # ~15 min

- `changed`: does KD move knowledge? The teacher learns a *changed* task (a + b -> a + b + 1); students
  see only the gold a + b pairs, trained with KD at alpha 1.0 (each divergence, and on-policy) or with
  cross-entropy only. A student answering a + b + 1 on held-out problems learned it from the teacher.
- `directions`: `changed` in every teacher -> student direction (encoder-decoder teachers 4 + 2 layers,
  students 2 + 1; decoder-only teachers 4 layers, students 2): students see only gold a + b pairs, with
  cross-entropy only, KD (forward KL, alpha 1.0) or the teacher's own answers as targets (sequence-level
  KD). `check3` is its encoder-decoder teacher -> decoder-only student alone: the paper's open check 3,
  is the recipe architecture-agnostic?
- `regime`: where does KD beat fine-tuning? The teacher learns the task itself. Of a pool of training
  problems, N carry gold answers; the student is fine-tuned on those N, or distilled: token-level
  forward KL on the N, the teacher labelling the rest of the pool (`--unlabeled`, sequence-level KD),
  both, and on-policy (GKD) over the labelled pool. Same steps, seeds and pool for every arm.

Both use a 16-id word-level tokenizer of the task's symbols and models of d_model 64 (a 4-layer
decoder-only teacher, 2 + 1-layer encoder-decoder students), so the runs measure the recipe, not the
CPU. tests/test_kd.py runs `changed` smaller.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from _encore import digit_tokenizer, encore

SHAPE = dict(d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=256, vocab_size=16, max_seq_len=64)
TASK = ["--task", "addition", "--task-option", "digits=2", "--max-source-len", "8", "--max-target-len", "4"]
CHANGED_ARMS = {  # name -> distill flags (None: cross-entropy only, `encore finetune`)
    "CE only (gold)": None,
    "forward KL": ["--kind", "forward_kl"],
    "reverse KL": ["--kind", "reverse_kl"],
    "JSD(0.5)": ["--kind", "jsd"],
    "skew forward KL(0.1)": ["--kind", "skew_forward_kl"],
    "skew reverse KL(0.1)": ["--kind", "skew_reverse_kl"],
    "on-policy JSD(0.5)": ["--kind", "jsd", "--targets", "student", "--target-max-new-tokens", "4"],
}
POOL = "{pool}"  # replaced by the pool's --unlabeled flags
REGIME_ARMS = {
    "CE only (N gold)": None,
    "forward KL (N gold)": ["--alpha", "0.5", "--kind", "forward_kl"],
    "sequence-level KD (pool)": [POOL, "--alpha", "0"],
    "sequence-level + forward KL (pool)": [POOL, "--alpha", "0.5", "--kind", "forward_kl"],
    "on-policy GKD (pool)": [POOL, "--alpha", "0.5", "--kind", "jsd", "--targets", "gold=0.5,student=0.5",
                             "--target-max-new-tokens", "4"],
}  # fmt: skip


def sh(out: Path, log: str, *argv: str) -> None:
    encore(out / f"{log}.log", *argv)


def setup(out: Path) -> tuple[str, str, str]:
    """The digit tokenizer and the two model configs: (tokenizer dir, teacher .json, student .json)."""
    from encore import ModelConfig

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = digit_tokenizer(out / "tokenizer")
    ModelConfig(arch="deconly", n_encoder_layers=0, n_decoder_layers=4, **SHAPE).save(out / "teacher.json")
    ModelConfig(arch="encdec", n_encoder_layers=2, n_decoder_layers=1, **SHAPE).save(out / "student.json")
    return tokenizer, str(out / "teacher.json"), str(out / "student.json")


def answers(predictions: Path) -> dict[str, float]:
    """Shares (%) of problems answered a + b (gold) and a + b + 1 (the changed teacher)."""
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    like = {"a + b": 0, "a + b + 1": 0}
    for r in rows:
        a, b = (int(x.replace(" ", "")) for x in r["source"].split("+"))
        answer = r["prediction"].replace(" ", "")
        like["a + b"] += answer == str(a + b)
        like["a + b + 1"] += answer == str(a + b + 1)
    return {k: 100.0 * v / len(rows) for k, v in like.items()}


def median_step(run: Path) -> float:
    times = [json.loads(line)["step_time_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(times[10:])  # warm steps


def train(out: Path, run: Path, flags: list[str] | None, common: list[str], model: str, teacher: Path | None) -> None:
    if (run / "final" / "config.json").exists():
        return
    if flags is None:
        sh(out, run.name, "finetune", "--model", model, *common, "--out", str(run), "--overwrite")
    else:
        sh(out, run.name, "distill", "--teacher", str(teacher / "final"), "--student", model, *flags, *common,
           "--out", str(run), "--overwrite")  # fmt: skip


def score(out: Path, run: Path, limit: int) -> dict[str, float]:
    predictions = run / "validation.jsonl"
    if not predictions.exists():
        sh(out, f"eval-{run.name}", "eval", "--model", str(run / "final"), *TASK[:4], "--split", "validation",
           "--limit", str(limit), "--max-new-tokens", "4", "--batch-size", "250",
           "--out", str(predictions))  # fmt: skip
    return answers(predictions)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def changed(args: argparse.Namespace) -> None:
    out = Path(args.out or "runs/kd-changed")
    tok, teacher_cfg, student_cfg = setup(out)
    common = [
        *TASK,
        "--batch-size",
        "64",
        "--micro-batch-size",
        "64",
        "--lr",
        "1e-2",
        "--seed",
        "0",
        "--tokenizer",
        tok,
    ]
    teacher = out / "teacher"
    teacher_flags = ["--task-option", "offset=1", "--max-steps", str(args.teacher_steps)]
    train(out, teacher, None, [*common, *teacher_flags], teacher_cfg, None)
    results = {"steps": args.steps, "teacher_steps": args.teacher_steps, "problems": args.limit,
               "teacher": {**score(out, teacher, args.limit), "median_step_s": median_step(teacher)}}  # fmt: skip
    for name, flags in CHANGED_ARMS.items():
        run = out / slug(name)
        kd = None if flags is None else ["--alpha", "1.0", *flags]
        train(out, run, kd, [*common, "--max-steps", str(args.steps)], student_cfg, teacher)
        results[name] = {**score(out, run, args.limit), "median_step_s": median_step(run)}
        print(f"{name:>22}: {results[name]}", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


ARCHS = {  # the changed-task test's teachers and students, by architecture (d_model 64)
    "encdec": {"teacher": dict(n_encoder_layers=4, n_decoder_layers=2), "student": dict(n_encoder_layers=2,
               n_decoder_layers=1)},
    "deconly": {"teacher": dict(n_encoder_layers=0, n_decoder_layers=4), "student": dict(n_encoder_layers=0,
                n_decoder_layers=2)},
}  # fmt: skip
DIRECTIONS = [("encdec", "deconly"), ("encdec", "encdec"), ("deconly", "deconly"), ("deconly", "encdec")]
DIRECTION_ARMS = {
    "CE only (gold)": None,
    "forward KL": ["--alpha", "1.0", "--kind", "forward_kl"],
    "teacher's targets (sequence-level)": ["--alpha", "0", "--targets", "teacher", "--target-max-new-tokens", "4"],
}


def directions(args: argparse.Namespace, pairs: list[tuple[str, str]] = DIRECTIONS) -> None:
    """The changed-task test in every teacher -> student direction (`check3`: the encoder-decoder teacher,
    the decoder-only student alone; the paper's open check 3)."""
    from encore import ModelConfig

    out = Path(args.out or "runs/kd-directions")
    out.mkdir(parents=True, exist_ok=True)
    tok = digit_tokenizer(out / "tokenizer")
    for arch, roles in ARCHS.items():
        for role, layers in roles.items():
            ModelConfig(arch=arch, **layers, **SHAPE).save(out / f"{role}-{arch}.json")
    common = [*TASK, "--batch-size", "64", "--micro-batch-size", "64", "--lr", "1e-2", "--seed", "0",
              "--tokenizer", tok]  # fmt: skip
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results.update({"steps": args.steps, "teacher_steps": args.teacher_steps, "problems": args.limit})
    for t_arch, s_arch in pairs:
        teacher = out / f"teacher-{t_arch}"
        teacher_flags = ["--task-option", "offset=1", "--max-steps", str(args.teacher_steps)]
        train(out, teacher, None, [*common, *teacher_flags], str(out / f"teacher-{t_arch}.json"), None)
        results[f"teacher ({t_arch})"] = score(out, teacher, args.limit)
        for name, flags in DIRECTION_ARMS.items():
            run = out / f"{t_arch}-to-{s_arch}-{slug(name)}"
            student = str(out / f"student-{s_arch}.json")
            train(out, run, flags, [*common, "--max-steps", str(args.steps)], student, teacher)
            key = f"{t_arch} teacher -> {s_arch} student, {name}"
            results[key] = score(out, run, args.limit)
            print(f"{key:>70}: {results[key]}", flush=True)
            path.write_text(json.dumps(results, indent=2) + "\n")


def regime(args: argparse.Namespace) -> None:
    out = Path(args.out or "runs/kd-regime")
    tok, teacher_cfg, student_cfg = setup(out)
    common = [*TASK, "--batch-size", "64", "--micro-batch-size", "64", "--lr", "1e-2", "--tokenizer", tok]
    teacher = out / "teacher"
    train(out, teacher, None, [*common, "--seed", "0", "--max-steps", str(args.teacher_steps)], teacher_cfg, None)
    results: dict = {"steps": args.steps, "pool": args.pool, "problems": args.limit,
                     "teacher": score(out, teacher, args.limit)["a + b"], "arms": {}}  # fmt: skip
    pool = ["--unlabeled", "addition", "--unlabeled-limit", str(args.pool)]
    for n in args.labeled:
        for name, flags in REGIME_ARMS.items():
            scores = []
            for seed in args.seeds:
                run = out / f"n{n}-{slug(name)}-s{seed}"
                kd = None if flags is None else [f for flag in flags for f in (pool if flag == POOL else [flag])]
                steps = ["--limit", str(n), "--seed", str(seed), "--max-steps", str(args.steps)]
                train(out, run, kd, [*common, *steps], student_cfg, teacher)
                scores.append(score(out, run, args.limit)["a + b"])
            results["arms"].setdefault(name, {})[str(n)] = scores
            print(f"N={n:>5} {name:>36}: {scores}", flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="experiment", required=True)
    c = sub.add_parser("changed", help="does KD move knowledge gold does not hold?")
    c.add_argument("--steps", type=int, default=1000)
    c.add_argument("--teacher-steps", type=int, default=1000)
    k = sub.add_parser("check3", help="an encoder-decoder teacher, decoder-only students (the paper's check 3)")
    d = sub.add_parser("directions", help="the changed-task test in every teacher -> student direction")
    for q in (k, d):
        q.add_argument("--steps", type=int, default=1000)
        q.add_argument("--teacher-steps", type=int, default=1000)
    r = sub.add_parser("regime", help="few labelled examples, a teacher that labels more")
    r.add_argument("--steps", type=int, default=600)
    r.add_argument("--teacher-steps", type=int, default=1000)
    r.add_argument("--labeled", type=int, nargs="+", default=[100, 400, 1600])
    r.add_argument("--pool", type=int, default=6400)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    for q in (c, k, d, r):
        q.add_argument("--out", default=None)
        q.add_argument("--limit", type=int, default=500, help="validation problems scored")
    args = p.parse_args()
    check3 = lambda a: directions(a, [("encdec", "deconly")])
    {"changed": changed, "check3": check3, "directions": directions, "regime": regime}[args.experiment](args)


if __name__ == "__main__":
    main()
