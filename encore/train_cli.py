"""`encore pretrain | finetune | generate | eval`: flags -> model, tokenizer, batch source -> `train`.

Kept thin: everything here is wiring; the logic lives in train.py, sources.py, data/, metrics.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from encore.config import ModelConfig
from encore.model import DecoderOnly, EncoderDecoder, LanguageModel, load
from encore.train import TrainConfig

# --- shared pieces ------------------------------------------------------------------------------------


def add_model_args(p: argparse.ArgumentParser, training: bool = True) -> None:
    p.add_argument(
        "--model", required=True, help="a preset name (see encore.ModelConfig.preset_names()) or a checkpoint directory"
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
    p.add_argument("--eval-every", type=int, default=0)
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
    """A checkpoint directory is loaded as is; a preset is built fresh, its vocabulary and special
    ids taken from the tokenizer (vocab rounded up to a multiple of 64 for fast matmuls)."""
    if Path(spec).is_dir():
        model = load(spec)
        if tokenizer_name:
            model.tokenizer = resolve_tokenizer(tokenizer_name, trust_remote_code=trust_remote_code)
        if model.tokenizer is None:
            raise ValueError(f"{spec}: the checkpoint has no tokenizer.json; pass --tokenizer")
        if dropout is not None:
            _set_dropout(model, dropout)
        return model
    if spec not in ModelConfig.preset_names():
        raise ValueError(
            f"--model {spec!r} is neither a checkpoint directory nor a preset ({', '.join(ModelConfig.preset_names())})"
        )
    tokenizer = resolve_tokenizer(tokenizer_name, trust_remote_code=trust_remote_code)
    config = ModelConfig.preset(
        spec,
        vocab_size=(len(tokenizer) + 63) // 64 * 64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **({} if dropout is None else {"dropout": dropout}),
    )
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
    """Decode `sources` in length-sorted batches; returns (texts in input order, truncated count)."""
    from encore.data import prompt_ids

    tokenizer = model.tokenizer
    encoded, truncated = [], 0
    for text in sources:
        ids = prompt_ids(tokenizer, text, model.config.arch)
        if len(ids) > args.max_source_len:
            # keep the end for decoder-only prompts (it holds the separator), the start otherwise
            ids = ids[-args.max_source_len :] if model.config.arch == "deconly" else ids[: args.max_source_len]
            truncated += 1
        encoded.append(ids)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    pad = model.config.pad_token_id
    for start in range(0, len(order), args.batch_size):
        idx = order[start : start + args.batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        new = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.do_sample,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
        for row, i in enumerate(idx):
            tokens = new[row].tolist()
            if model.config.eos_token_id in tokens:
                tokens = tokens[: tokens.index(model.config.eos_token_id)]
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
        help="a task name (code2doc, synthqa, squad_v2, xsum, code_x_glue_ct) "
        "or a .jsonl/.json/.parquet file of source/target pairs",
    )
    p.add_argument("--split", default="validation")
    p.add_argument("--data-files", default=None, help="local files for a hub task's split")
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples")
    p.add_argument("--out", required=True, help="predictions JSONL; metrics go beside it as *.metrics.json")
    add_generation_args(p)


def run_eval(args: argparse.Namespace) -> int:
    from encore.data import load_task
    from encore.metrics import compute_metrics

    model = _load_for_inference(args.model, args.tokenizer, args.device)
    examples = list(load_task(args.task, split=args.split, data_files=args.data_files, limit=args.limit))
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
