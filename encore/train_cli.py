"""`encore pretrain | finetune | generate | eval`: flags -> model, tokenizer, batch source -> `train`.

Kept thin: everything here is wiring; the logic lives in train.py, sources.py, data/, metrics.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from encore.config import ModelConfig
from encore.model import DecoderOnly, EncoderDecoder, LanguageModel, load
from encore.train import TrainConfig

TASK_HELP = (
    "a task name (code2doc, synthqa, squad_v2, xsum, code_x_glue_ct) or a .jsonl/.json/.parquet file of "
    "source/target pairs"
)

# --- shared pieces ------------------------------------------------------------------------------------


def add_model_args(p: argparse.ArgumentParser, training: bool = True) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="a preset name (encore.ModelConfig.preset_names()), a ModelConfig .json file or a checkpoint directory",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer directory or hub id (default: the checkpoint's, or encore's stdlib BPE for a preset)",
    )
    if training:
        p.add_argument("--trust-remote-code", action="store_true", help="allow a hub tokenizer's own code")


def add_train_args(p: argparse.ArgumentParser, steps: int, batch: int, micro: int, lr: float) -> None:
    p.add_argument("--out", required=True, help="output directory (metrics.jsonl, checkpoints/, final/)")
    p.add_argument("--max-steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=batch, help="global batch, in examples")
    p.add_argument("--micro-batch-size", type=int, default=micro)
    p.add_argument("--lr", type=float, default=lr, help="Muon's learning rate (AdamW's with --optimizer adamw)")
    p.add_argument(
        "--adamw-lr", type=float, default=None, help="the AdamW groups' learning rate (default lr/10 next to Muon)"
    )
    p.add_argument("--optimizer", choices=["muon", "adamw"], default="muon")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup-steps", type=int, default=-1, help="-1: 5%% of --max-steps")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--keep-last", type=int, default=3)
    p.add_argument("--eval-every", type=int, default=0, help="validation loss every N steps (tasks only)")
    p.add_argument("--eval-batches", type=int, default=8, help="micro-batches per validation loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (fully_shard) instead of DDP")
    p.add_argument("--tensorboard", action="store_true")
    p.add_argument("--dropout", type=float, default=None, help="override the model's dropout")


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        out_dir=args.out,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        lr=args.lr,
        adamw_lr=args.adamw_lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip,
        save_every=args.save_every,
        keep_last=args.keep_last,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        seed=args.seed,
        precision=args.precision,
        resume=args.resume,
        fsdp=args.fsdp,
        tensorboard=args.tensorboard,
    )


def resolve_tokenizer(name: str | None, model: LanguageModel | None = None, trust_remote_code: bool = False):
    from encore.tokenizer import default_tokenizer, load_tokenizer

    if name:
        return load_tokenizer(name, trust_remote_code=trust_remote_code)
    if model is not None and model.tokenizer is not None:
        return model.tokenizer
    return default_tokenizer()


def build_model(
    spec: str,
    tokenizer_name: str | None = None,
    seed: int = 0,
    dropout: float | None = None,
    trust_remote_code: bool = False,
) -> LanguageModel:
    """A checkpoint directory is loaded as is; a preset or a ModelConfig .json file is built fresh, its
    vocabulary and special ids taken from the tokenizer (vocab rounded up to a multiple of 64 for fast
    matmuls)."""
    from encore.data import special_ids

    if Path(spec).is_dir():
        model = load(spec)
        if tokenizer_name:
            model.tokenizer = resolve_tokenizer(tokenizer_name, trust_remote_code=trust_remote_code)
        if model.tokenizer is None:
            raise ValueError(f"{spec}: the checkpoint has no tokenizer.json; pass --tokenizer")
        if dropout is not None:
            _set_dropout(model, dropout)
        return model
    if spec.endswith(".json") and Path(spec).is_file():
        base = ModelConfig.load(spec).to_dict()
    elif spec in ModelConfig.preset_names():
        base = ModelConfig.preset(spec).to_dict()
    else:
        raise ValueError(
            f"--model {spec!r} is neither a checkpoint directory, a ModelConfig .json file nor a preset "
            f"({', '.join(ModelConfig.preset_names())})"
        )
    tokenizer = resolve_tokenizer(tokenizer_name, trust_remote_code=trust_remote_code)
    pad, bos, eos = special_ids(tokenizer)
    base.update(vocab_size=(len(tokenizer) + 63) // 64 * 64, pad_token_id=pad, bos_token_id=bos, eos_token_id=eos)
    if dropout is not None:
        base["dropout"] = dropout
    config = ModelConfig.from_dict(base, source=spec)
    torch.manual_seed(seed)
    model = (EncoderDecoder if config.arch == "encdec" else DecoderOnly)(config)
    model.tokenizer = tokenizer
    return model


def _set_dropout(model: LanguageModel, p: float) -> None:
    model.config.dropout = p
    for module in model.modules():
        if hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = p


def _print_done(out: str) -> None:
    print(f"done: final model in {Path(out) / 'final'}, metrics in {Path(out) / 'metrics.jsonl'}")


# --- generate ------------------------------------------------------------------------------------------


def add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-source-len", type=int, default=1024, help="longer inputs are truncated (counted, reported)")
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="cpu")


def generate_texts(model: LanguageModel, sources: list[str], args: argparse.Namespace) -> tuple[list[str], int]:
    """Decode `sources` in length-sorted batches; returns (texts in input order, truncated count).
    Inputs are laid out and truncated exactly as the fine-tuning collator does (the end of a too-long
    source is cut, its special tokens kept), so a model sees at inference what it saw in training."""
    from encore.data import finetune_collator
    from encore.tokenizer import encode_text

    tokenizer = model.tokenizer
    collator = finetune_collator(model.config)
    room = args.max_source_len - collator.n_source_specials
    encoded, truncated = [], 0
    for text in sources:
        ids = encode_text(tokenizer, text)
        if len(ids) > room:
            ids, truncated = ids[:room], truncated + 1
        encoded.append(collator.source(ids))
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    pad, eos = model.config.pad_token_id, model.config.eos_token_id
    device = next(model.parameters()).device
    for start in range(0, len(order), args.batch_size):
        idx = order[start : start + args.batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        new = model.generate(
            ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=args.max_new_tokens,
            do_sample=args.do_sample,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
        for row, i in enumerate(idx):
            tokens = new[row].tolist()
            if eos in tokens:
                tokens = tokens[: tokens.index(eos)]
            outputs[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return outputs, truncated


def _load_for_inference(spec: str, tokenizer: str | None, device: str) -> LanguageModel:
    if not Path(spec).is_dir():
        raise ValueError(f"--model {spec!r}: not a checkpoint directory")
    model = build_model(spec, tokenizer)
    return model.to(device).eval()


def configure_generate(p: argparse.ArgumentParser) -> None:
    add_model_args(p, training=False)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="one input text")
    src.add_argument("--input-file", help="a text file (one input per line) or JSONL with a 'source' field")
    add_generation_args(p)


def run_generate(args: argparse.Namespace) -> int:
    model = _load_for_inference(args.model, args.tokenizer, args.device)
    if args.input is not None:
        sources = [args.input]
    else:
        path = Path(args.input_file)
        if path.suffix == ".jsonl":
            from encore.data.records import iter_records, require_field

            sources = [require_field(rec, "source", path, line) for line, rec in iter_records(path)]
        else:
            try:
                sources = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: not UTF-8 text ({e})") from None
        if not sources:
            raise ValueError(f"{path}: no inputs")
    texts, truncated = generate_texts(model, sources, args)
    for text in texts:
        print(text)
    if truncated:
        print(f"note: {truncated} input(s) truncated to --max-source-len {args.max_source_len}", file=sys.stderr)
    return 0


# --- eval ----------------------------------------------------------------------------------------------


def configure_eval(p: argparse.ArgumentParser) -> None:
    add_model_args(p, training=False)
    p.add_argument(
        "--task",
        required=True,
        help=TASK_HELP,
    )
    p.add_argument("--split", default="validation")
    p.add_argument("--data-files", default=None, help="local files for a hub task's split")
    add_task_option_arg(p)
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples")
    p.add_argument("--out", required=True, help="predictions JSONL; metrics go beside it as *.metrics.json")
    add_generation_args(p)


def run_eval(args: argparse.Namespace) -> int:
    from encore.data import load_task
    from encore.metrics import compute_metrics

    model = _load_for_inference(args.model, args.tokenizer, args.device)
    examples = list(
        load_task(args.task, split=args.split, data_files=args.data_files, limit=args.limit, **task_options(args))
    )
    if not examples:
        raise ValueError(f"task {args.task!r} split {args.split!r} has no examples")
    predictions, truncated = generate_texts(model, [e["source"] for e in examples], args)
    references = [e["target"] for e in examples]
    metrics = compute_metrics(Path(args.task).stem if Path(args.task).suffix else args.task, predictions, references)
    metrics.update(
        examples=len(examples), truncated_inputs=truncated, model=str(args.model), task=args.task, split=args.split
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for e, pred in zip(examples, predictions):
            f.write(json.dumps({"source": e["source"], "target": e["target"], "prediction": pred}) + "\n")
    metrics_path = out.with_suffix(".metrics.json")
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return 0


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
    add_train_args(p, steps=1000, batch=32, micro=8, lr=2e-2)


def run_pretrain(args: argparse.Namespace) -> int:
    from encore.data import open_corpus, pretraining_collator, pretraining_stream
    from encore.sources import StreamSource
    from encore.train import train

    model = build_model(args.model, args.tokenizer, args.seed, args.dropout, args.trust_remote_code)
    # Every rank reads the same stream and takes its share of each global batch (train.py), so a
    # DDP run sees exactly the batches of a one-process run.
    corpus = open_corpus(args.data, text_field=args.text_field)
    stream = pretraining_stream(
        corpus,
        model.tokenizer,
        model.config.arch,
        input_len=args.seq_len,
        seq_len=args.causal_seq_len,
        noise_density=args.noise_density,
        mean_span_length=args.mean_span_length,
        seed=args.seed,
    )
    train(model, train_config(args), StreamSource(stream, pretraining_collator(model.config)))
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


def add_task_option_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a task option for load_task, e.g. max_entities=1 for synthqa (repeatable)",
    )


def task_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in args.task_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--task-option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)  # numbers, true/false, null; anything else is a string
        except json.JSONDecodeError:
            options[key] = value
    return options


def task_sources(args: argparse.Namespace, model: LanguageModel, with_ids: bool = False):
    """(training source, validation source or None) of `args.task`, tokenized and collated for `model`."""
    from encore.data import finetune_collator, load_task, tokenize_pairs
    from encore.sources import TaskSource, WithExampleIds

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
    return train_source, eval_source


def configure_finetune(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_task_args(p)
    add_train_args(p, steps=1000, batch=32, micro=8, lr=1e-2)


def run_finetune(args: argparse.Namespace) -> int:
    from encore.train import train

    model = build_model(args.model, args.tokenizer, args.seed, args.dropout, args.trust_remote_code)
    source, eval_source = task_sources(args, model)
    train(model, train_config(args), source, eval_source=eval_source)
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
        choices=["reverse_kl", "forward_kl", "jsd"],
        default="reverse_kl",
        help="the KD divergence (the paper's: reverse_kl)",
    )
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.5, help="the JSD mixture weight")
    p.add_argument(
        "--targets",
        default="gold",
        help="target sources and their probabilities, e.g. gold, teacher, student, or gold=0.5,student=0.5",
    )
    p.add_argument("--target-max-new-tokens", type=int, default=64, help="length of generated targets")
    p.add_argument(
        "--topk",
        type=int,
        default=0,
        help="offline mode: run the teacher once and keep its top-k log-probs per target token on disk "
        "(fixed targets only: gold or teacher)",
    )
    add_task_args(p)
    add_train_args(p, steps=1000, batch=32, micro=8, lr=1e-2)


def run_distill(args: argparse.Namespace) -> int:
    from encore.distill import DistillLoss, load_teacher, precompute_topk
    from encore.sources import DistillSource, parse_target_mix
    from encore.train import seq2seq_loss, train

    mix = parse_target_mix(args.targets)
    if args.teacher.startswith((".", "/", "~")) and not Path(args.teacher).expanduser().is_dir():
        raise FileNotFoundError(f"--teacher {args.teacher}: no such checkpoint directory")
    tokenizer = args.tokenizer
    if tokenizer is None and not Path(args.student).is_dir():
        tokenizer = args.teacher  # a fresh student speaks the teacher's tokenizer
    student = build_model(args.student, tokenizer, args.seed, args.dropout, args.trust_remote_code)
    if student.config.arch != "encdec":
        raise ValueError(
            f"--student {args.student}: distillation trains an encoder-decoder student (got a decoder-only)"
        )
    device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    teacher = load_teacher(
        args.teacher,
        tokenizer=student.tokenizer,
        device=device,
        lora=args.teacher_lora,
        trust_remote_code=args.trust_remote_code,
    )
    source, eval_source = task_sources(args, student, with_ids=True)
    out = Path(args.out)
    source = DistillSource(
        source,
        mix,
        teacher=teacher if mix.get("teacher") else None,
        student=student if mix.get("student") else None,
        max_new_tokens=args.target_max_new_tokens,
        cache_dir=out / "teacher_targets",
        seed=args.seed,
    )
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
        )
        loss = DistillLoss(store=store, alpha=args.alpha, kind=args.kind, temperature=args.temperature, beta=args.beta)
        del teacher
    else:
        loss = DistillLoss(
            teacher,
            alpha=args.alpha,
            kind=args.kind,
            temperature=args.temperature,
            beta=args.beta,
            valid_vocab=teacher.valid_vocab,
        )
    # validation loss = CE on gold targets: comparable between runs with and without KD
    train(student, train_config(args), source, loss_fn=loss, eval_source=eval_source, eval_loss_fn=seq2seq_loss)
    _print_done(args.out)
    return 0
