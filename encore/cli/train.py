"""`encore pretrain | finetune | distill`: flags -> model, tokenizer, batch source, loss -> `encore.train`.

Kept thin: everything here is wiring; the logic lives in encore.train, encore.data and encore.distill.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from encore.cli.common import (
    TASK_HELP,
    add_model_args,
    add_task_option_arg,
    build_model,
    from_args,
    nonnegative_int,
    positive_int,
    task_options,
)
from encore.cli.vision import add_vision_args, vision_sources, with_vision
from encore.files import check_local
from encore.model import LanguageModel, VisionLanguageModel
from encore.train import TrainConfig, train
from encore.train.dist import local_device
from encore.train.optim import TRAIN_PARTS


def add_train_args(p: argparse.ArgumentParser, steps: int, batch: int, micro: int, lr: float) -> None:
    p.add_argument("--out", required=True, help="output directory (metrics.jsonl, checkpoints/, final/)")
    p.add_argument("--max-steps", type=positive_int, default=steps)
    p.add_argument("--batch-size", type=positive_int, default=batch, help="global batch, in examples")
    p.add_argument("--micro-batch-size", type=positive_int, default=micro)
    p.add_argument("--lr", type=float, default=lr, help="Muon's learning rate (AdamW's with --optimizer adamw)")
    p.add_argument(
        "--adamw-lr", type=float, default=None, help="the AdamW groups' learning rate (default lr/10 next to Muon)"
    )
    p.add_argument("--optimizer", choices=["muon", "adamw"], default="muon")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup-steps", type=int, default=-1, help="-1: 5%% of --max-steps")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--save-every", type=nonnegative_int, default=0, help="checkpoint every N steps (0: at the end)")
    p.add_argument("--keep-last", type=nonnegative_int, default=3, help="checkpoints kept (0: all)")
    p.add_argument("--eval-every", type=nonnegative_int, default=0, help="validation loss every N steps (tasks only)")
    p.add_argument("--eval-batches", type=positive_int, default=8, help="micro-batches per validation loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="auto",
        help="continue from the newest checkpoint in --out that loads (--resume=auto: when there is one, else start "
        "fresh)",
    )
    p.add_argument("--overwrite", action="store_true", help="clear an earlier run's files in --out first")
    p.add_argument(
        "--allow-changed-settings",
        action="store_true",
        help="resume although the batch size, seed or data settings differ from the checkpoint's",
    )
    p.add_argument(
        "--train-only",
        choices=list(TRAIN_PARTS),
        default=None,
        help="train one part of an encoder-decoder, freeze the rest (cross_attention: the warm-up after "
        "`encore adapt --cross-init random`)",
    )
    p.add_argument(
        "--freeze",
        choices=list(TRAIN_PARTS),
        default=None,
        help="freeze one part of an encoder-decoder, train the rest (encoder: distil-whisper's recipe after "
        "`encore adapt --decoder-layers 2`)",
    )
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (fully_shard) instead of DDP")
    p.add_argument("--tensorboard", action="store_true")
    p.add_argument("--dropout", type=float, default=None, help="override the model's dropout")


# the flags whose values define a run's data, per command: recorded in checkpoints, checked on resume
TASK_FLAGS = ("task", "data_files", "task_option", "limit", "max_source_len", "max_target_len", "truncation")
RUN_FLAGS = {
    "pretrain": (
        "data",
        "text_field",
        "objective",
        "seq_len",
        "causal_seq_len",
        "noise_density",
        "mean_span_length",
        "teacher",
        "alpha",
        "kind",
    ),
    "finetune": (*TASK_FLAGS, "vision", "vision_tower", "train_vision", "image_keep", "selection"),
    "distill": (*TASK_FLAGS, "teacher", "teacher_lora", "targets", "topk", "alpha", "kind"),
}


def claim_out(args: argparse.Namespace) -> None:
    """Check --out before any work (loading data, a teacher): the same check `train` makes."""
    from encore.train.rundir import claim_run_dir

    claim_run_dir(args.out, args.resume, args.overwrite)


def train_config(args: argparse.Namespace, command: str) -> TrainConfig:
    run_info = {flag.replace("_", "-"): getattr(args, flag) for flag in RUN_FLAGS[command]}
    return from_args(TrainConfig, args, out_dir=args.out, run_info=run_info)


def _print_done(out: str) -> None:
    print(f"done: final model in {Path(out) / 'final'}, metrics in {Path(out) / 'metrics.jsonl'}")


# --- pretrain ------------------------------------------------------------------------------------------


def configure_pretrain(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument(
        "--data",
        default="stdlib",
        help="corpus: stdlib (embedded, offline), a file/folder/glob of .txt/.jsonl/.parquet, "
        "or hf:NAME[:CONFIG][@SPLIT]",
    )
    p.add_argument("--text-field", default="text", help="the text field of JSONL / Parquet / hub records")
    p.add_argument(
        "--seq-len",
        type=int,
        default=512,
        help="encoder-decoder: span-corrupted input length; decoder-only: by default the raw tokens the "
        "encoder-decoder consumes per example at this length (568 for 512), so both get the same token budget",
    )
    p.add_argument("--causal-seq-len", type=int, default=None, help="decoder-only: override the chunk length")
    p.add_argument("--noise-density", type=float, default=0.15)
    p.add_argument("--mean-span-length", type=float, default=3.0)
    p.add_argument(
        "--objective",
        choices=["span_corruption", "prefix_lm", "ul2"],
        default="span_corruption",
        help="encoder-decoder objective: T5's span corruption; prefix_lm (each --seq-len chunk cut at a random "
        "point: prefix to the encoder, the rest to the decoder); ul2 (R / X / S denoisers with mode tokens)",
    )
    p.add_argument(
        "--teacher",
        default=None,
        help="distil this decoder-only model (the adapted model's source) on the decoder's tokens; "
        "with --objective prefix_lm (T5Gemma's PrefixLM + KD)",
    )
    p.add_argument("--alpha", type=float, default=0.5, help="with --teacher: loss = alpha*KD + (1-alpha)*CE")
    p.add_argument(
        "--kind",
        choices=["forward_kl", "reverse_kl", "jsd"],
        default="forward_kl",
        help="with --teacher: the divergence (forward_kl: token-level KD on the teacher's distribution)",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="with --teacher: the KD temperature")
    p.add_argument(
        "--eval-data",
        default=None,
        help="held-out corpus for --eval-every's loss (same objective, CE only; e.g. stdlib:validation)",
    )
    add_train_args(p, steps=1000, batch=32, micro=8, lr=2e-2)


def _pretraining_source(args: argparse.Namespace, model: LanguageModel, data: str, repeat: bool = True):
    from encore.data import StreamSource, open_corpus, pretraining_collator, pretraining_stream

    stream = pretraining_stream(
        open_corpus(data, text_field=args.text_field),
        model.tokenizer,
        model.config.arch,
        objective=args.objective,
        input_len=args.seq_len,
        seq_len=args.causal_seq_len,
        noise_density=args.noise_density,
        mean_span_length=args.mean_span_length,
        source=model.config.source_ids,
        seed=args.seed,
        repeat=repeat,
    )
    return StreamSource(stream, pretraining_collator(model.config))


def _pretraining_teacher(args: argparse.Namespace, model: LanguageModel):
    """The KD loss of `--teacher` (T5Gemma's PrefixLM + distillation), or None."""
    from encore.distill import DistillLoss, load_teacher

    if args.teacher is None:
        return None
    if model.config.arch != "encdec":
        raise ValueError(f"--teacher: distillation during pretraining trains an encoder-decoder, not {args.model}")
    teacher = load_teacher(
        args.teacher,
        tokenizer=model.tokenizer,
        device=local_device(),
        student_sources_end_in_eos=model.config.source_ends_in_eos,
    )
    return DistillLoss(
        teacher,
        alpha=args.alpha,
        kind=args.kind,
        temperature=args.temperature,
        valid_vocab=teacher.valid_vocab,
    )


def run_pretrain(args: argparse.Namespace) -> int:
    from encore.train import seq2seq_loss

    claim_out(args)
    if args.teacher:
        check_local(args.teacher, "--teacher")
        if args.objective != "prefix_lm":
            raise ValueError(
                "--teacher: distillation during pretraining needs --objective prefix_lm "
                "(the teacher reads prefix + target as one text; corrupted spans mean nothing to it)"
            )
    if args.eval_data and not args.eval_every:
        raise ValueError("--eval-data needs --eval-every N (the validation loss every N steps)")
    model = build_model(args.model, args.tokenizer, args.seed, args.dropout, args.trust_remote_code)
    # Every rank reads the same stream and takes its share of each global batch (train.py), so a
    # DDP run sees exactly the batches of a one-process run.
    source = _pretraining_source(args, model, args.data)
    eval_source = _pretraining_source(args, model, args.eval_data, repeat=False) if args.eval_data else None
    loss = _pretraining_teacher(args, model)
    eval_loss = seq2seq_loss if loss is not None else None  # CE on the held-out text, with or without KD
    train(model, train_config(args, "pretrain"), source, loss_fn=loss, eval_source=eval_source, eval_loss_fn=eval_loss)
    _print_done(args.out)
    return 0


# --- finetune ------------------------------------------------------------------------------------------


def add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        required=True,
        help=TASK_HELP,
    )
    p.add_argument("--data-files", default=None, help="local files for a hub task's training split")
    add_task_option_arg(p)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--max-source-len", type=int, default=512)
    p.add_argument("--max-target-len", type=int, default=128)
    p.add_argument(
        "--truncation",
        choices=["right", "left", "error"],
        default="right",
        help="too-long sources: cut the end (right), the start (left), or stop with an error",
    )
    p.add_argument("--eval-split", default="validation", help="split for --eval-every's validation loss")


def speech_sources(args: argparse.Namespace, model: LanguageModel, with_ids: bool = False):
    """A model with an audio encoder (Whisper) trains on a speech file (`encore.data.speech`): (training
    source, None, collator)."""
    from encore.data import TaskSource, WithExampleIds
    from encore.data.speech import load_speech, speech_collator

    if not Path(args.task).is_file():
        raise ValueError(f"--task {args.task}: a model with an audio encoder trains on a speech .jsonl file "
                         '({"audio": path, "text": transcript} per line)')  # fmt: skip
    if args.eval_every:
        raise ValueError("--eval-every: a speech task has no validation split here (leave it at 0)")
    collator = speech_collator(model, args.max_target_len)
    examples = load_speech(args.task, model.tokenizer, limit=args.limit)
    for i, e in enumerate(examples if with_ids else []):
        e["example_id"] = i
    print(f"{args.task}: {len(examples)} clips, {sum(len(e['audio']) for e in examples) / 16000 / 60:.1f} minutes")
    return TaskSource(examples, WithExampleIds(collator) if with_ids else collator, seed=args.seed), None, collator


def task_sources(args: argparse.Namespace, model: LanguageModel, with_ids: bool = False):
    """(training source, validation source or None) of `args.task`, tokenized and collated for `model`."""
    from encore.data import TaskSource, WithExampleIds, finetune_collator, load_task, tokenize_pairs

    if model.config.encoder_input == "audio":
        return speech_sources(args, model, with_ids)

    collator = finetune_collator(
        model.config,
        max_source_len=args.max_source_len,
        max_target_len=args.max_target_len,
        truncation=args.truncation,
    )
    examples = tokenize_pairs(
        model.tokenizer,
        load_task(args.task, split="train", data_files=args.data_files, limit=args.limit, **task_options(args)),
    )
    if with_ids:
        for i, e in enumerate(examples):
            e["example_id"] = i
    stats = collator.check(examples)  # the truncation policy, reported up front for the whole set
    print(f"{args.task}: {len(examples)} training examples; {stats.summary(args.max_source_len, args.max_target_len)}")
    collate = WithExampleIds(collator) if with_ids else collator
    train_source = TaskSource(examples, collate, seed=args.seed)
    eval_source = None
    if args.eval_every:
        val = tokenize_pairs(model.tokenizer, load_task(args.task, split=args.eval_split, **task_options(args)))
        eval_source = TaskSource(val, collator, shuffle=False, repeat=False)
    return train_source, eval_source, collator


def configure_finetune(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_task_args(p)
    add_vision_args(p)
    add_train_args(p, steps=1000, batch=32, micro=8, lr=1e-2)


def run_finetune(args: argparse.Namespace) -> int:
    claim_out(args)
    model = build_model(args.model, args.tokenizer, args.seed, args.dropout, args.trust_remote_code)
    model = with_vision(args, model)
    sources = vision_sources if isinstance(model, VisionLanguageModel) else task_sources
    source, eval_source, _ = sources(args, model)
    train(model, train_config(args, "finetune"), source, eval_source=eval_source)
    _print_done(args.out)
    return 0


# --- distill -------------------------------------------------------------------------------------------


def configure_distill(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher",
        required=True,
        help="a Hugging Face causal LM (directory or hub id) or an encore decoder-only checkpoint directory",
    )
    p.add_argument("--student", required=True, help="an encoder-decoder preset or checkpoint directory")
    p.add_argument(
        "--tokenizer", default=None, help="the shared tokenizer (default: the student checkpoint's, else the teacher's)"
    )
    p.add_argument("--teacher-lora", default=None, help="LoRA adapters (peft) merged into the teacher at load")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the teacher's own modeling code")
    p.add_argument("--alpha", type=float, default=0.5, help="loss = alpha*KD + (1-alpha)*CE")
    p.add_argument(
        "--kind",
        "--divergence",
        dest="kind",
        choices=["reverse_kl", "forward_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"],
        default="reverse_kl",
        help="the KD divergence (the paper's: reverse_kl; skew_*: DistiLLM's, bounded)",
    )
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument(
        "--beta", type=float, default=None, help="the mixture weight of jsd (default 0.5) and skew_* (default 0.1)"
    )
    p.add_argument(
        "--targets",
        default="gold",
        help="target sources and their probabilities: gold, teacher (its greedy output: sequence-level KD), "
        "student (on-policy, GKD: KD on the student's samples, CE on gold), or a mix: gold=0.5,student=0.5",
    )
    p.add_argument(
        "--target-max-new-tokens",
        type=int,
        default=None,
        help="length of generated targets (teacher's and on-policy; default --max-target-len)",
    )
    p.add_argument(
        "--sample-temperature",
        type=float,
        default=1.0,
        help="on-policy targets are sampled from the student at this temperature (0: greedy)",
    )
    p.add_argument(
        "--unlabeled",
        default=None,
        help="a task or file of extra source texts (no targets needed) that the teacher labels: "
        "sequence-level KD on inputs without gold (sources already in the labeled set are skipped)",
    )
    p.add_argument("--unlabeled-limit", type=int, default=None, help="use only the first N --unlabeled sources")
    p.add_argument(
        "--topk",
        type=int,
        default=0,
        help="offline mode: run the teacher once and keep its top-k log-probs per target token on disk "
        "(fixed targets only: gold or teacher)",
    )
    add_task_args(p)
    add_train_args(p, steps=1000, batch=32, micro=8, lr=1e-2)


def unlabeled_examples(args: argparse.Namespace, tokenizer: Any, labeled: list[dict]) -> list[dict]:
    """`--unlabeled`'s sources as examples the teacher will label: ids after the labeled ones, sources
    already among the labeled (or repeated) skipped, so no input is counted twice."""
    from encore.data import load_sources
    from encore.tokenizer import encode_text

    options = task_options(args) if args.unlabeled == args.task else {}
    seen = {tuple(e["source_ids"]) for e in labeled}
    out: list[dict] = []
    for text in load_sources(args.unlabeled, "train", limit=args.unlabeled_limit, **options):
        ids = encode_text(tokenizer, text)
        if tuple(ids) not in seen:
            seen.add(tuple(ids))
            out.append({"source_ids": ids, "target_ids": [], "example_id": len(labeled) + len(out), "unlabeled": True})
    if not out:
        raise ValueError(f"--unlabeled {args.unlabeled}: no sources beyond the labeled ones")
    print(f"--unlabeled {args.unlabeled}: {len(out)} sources without gold targets, labeled by the teacher")
    return out


def run_distill(args: argparse.Namespace) -> int:
    from encore.distill import DistillLoss, DistillSource, load_teacher, parse_target_mix, precompute_topk
    from encore.distill.causal_loss import CausalDistillLoss
    from encore.train import causal_lm_loss, seq2seq_loss

    mix = parse_target_mix(args.targets)
    claim_out(args)
    check_local(args.teacher, "--teacher")
    if args.teacher_lora:
        check_local(args.teacher_lora, "--teacher-lora")
    tokenizer = args.tokenizer
    if tokenizer is None and not Path(args.student).is_dir():
        tokenizer = args.teacher  # a fresh student speaks the teacher's tokenizer
    student = build_model(args.student, tokenizer, args.seed, args.dropout, args.trust_remote_code)
    causal = student.config.arch == "deconly"  # the paper's check 3, or decoder-only -> decoder-only
    device = local_device()
    teacher = load_teacher(
        args.teacher,
        tokenizer=student.tokenizer,
        device=device,
        lora=args.teacher_lora,
        trust_remote_code=args.trust_remote_code,
        student_sources_end_in_eos=student.config.source_ends_in_eos,
        student=student.config,
    )
    kd = dict(alpha=args.alpha, kind=args.kind, temperature=args.temperature, beta=args.beta)
    make_loss = (lambda **a: CausalDistillLoss(student=student.config, **a)) if causal else DistillLoss
    loss = make_loss(teacher=teacher, **kd, valid_vocab=teacher.valid_vocab)  # checks the pair before any work
    source, eval_source, collator = task_sources(args, student, with_ids=True)
    if student.config.encoder_input == "audio" and (mix != {"gold": 1.0} or args.unlabeled):
        raise ValueError(f"--task {args.task}: speech distils on its transcripts (--targets gold, no --unlabeled)")
    if args.unlabeled:
        from encore.data import TaskSource

        extra = unlabeled_examples(args, student.tokenizer, source.examples)
        source = TaskSource(source.examples + extra, source.collate_fn, seed=args.seed)
    out = Path(args.out)
    source = DistillSource(
        source,
        mix,
        collator=collator,
        teacher=teacher if mix.get("teacher") or args.unlabeled else None,
        student=student if mix.get("student") else None,
        max_new_tokens=args.target_max_new_tokens or args.max_target_len,
        cache_dir=out / "teacher_targets",
        seed=args.seed,
        sample_temperature=args.sample_temperature,
    )
    if args.unlabeled:
        print(f"--unlabeled: the teacher labeled {source.prepare(args.micro_batch_size)} new sources")
    if args.topk:
        if mix.get("student"):
            raise ValueError("--topk (offline teacher) needs fixed targets: --targets gold or --targets teacher")
        store = precompute_topk(
            teacher,
            source.all_batches(args.micro_batch_size, device),
            out / "teacher_topk",
            k=args.topk,
            temperature=args.temperature,
            vocab_size=student.config.vocab_size,
            valid_vocab=teacher.valid_vocab,
            targets=(lambda b: loss.teacher_targets(b, student.config.vocab_size)) if causal else None,
        )
        loss = make_loss(teacher=None, store=store, **kd)
        del teacher
    # validation loss = CE on gold targets: comparable between runs with and without KD
    config = train_config(args, "distill")
    eval_loss = causal_lm_loss if causal else seq2seq_loss
    train(student, config, source, loss_fn=loss, eval_source=eval_source, eval_loss_fn=eval_loss)
    _print_done(args.out)
    return 0
