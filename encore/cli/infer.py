"""`encore generate | eval`: a checkpoint, texts in, texts (and scores) out."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from encore.cli.common import (
    TASK_HELP,
    add_model_args,
    add_quantize_flag,
    add_task_option_arg,
    from_args,
    load_for_inference,
    task_options,
)
from encore.infer.pipeline import GenerationOptions, generate_texts


def add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-source-len", type=int, default=1024, help="longer inputs are truncated (counted, reported)")
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-beams", type=int, default=None, help="> 1: beam search (default: the checkpoint's, else 1)")
    p.add_argument(
        "--length-penalty", type=float, default=None, help="beam scores / length ** this (default: the checkpoint's, 1)"
    )
    p.add_argument(
        "--repetition-penalty", type=float, default=None, help="> 1 discourages repeats (default: the checkpoint's)"
    )
    p.add_argument(
        "--no-repeat-ngram-size",
        type=int,
        default=None,
        help="no n-gram twice in an output (default: the checkpoint's)",
    )
    p.add_argument(
        "--src-lang", default=None, help="a multilingual model's source language (NLLB: fra_Latn, M2M100: fr)"
    )
    p.add_argument("--tgt-lang", default=None, help="... and target language, forced as the first output token")
    p.add_argument("--device", default="cpu")
    add_quantize_flag(p)
    p.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default="torch",
        help="torch: encore's engine on a checkpoint; onnx: onnxruntime on a directory written by `encore export`",
    )
    p.add_argument("--provider", default="cpu", help="--backend onnx: the execution provider (cpu, cuda, qnn, ...)")


def _quantize(args: argparse.Namespace) -> str | None:
    return None if args.quantize == "none" else args.quantize


def generation_options(args: argparse.Namespace) -> GenerationOptions:
    return from_args(GenerationOptions, args)


def read_inputs(path: Path) -> list[str]:
    """One input per line of a text file, or the 'source' field of each JSONL record."""
    from encore.data.records import decode_line, iter_records, read_lines, require_field

    if not path.is_file():
        raise FileNotFoundError(f"--input-file {path}: no such file")
    if path.suffix == ".jsonl":
        sources = [require_field(rec, "source", path, line, str) for line, rec in iter_records(path)]
    else:
        lines = (decode_line(path, n, raw).rstrip("\r\n") for n, raw, _ in read_lines(path))
        sources = [line for line in lines if line.strip()]
    if not sources:
        raise ValueError(f"{path}: no inputs")
    return sources


def _model(args: argparse.Namespace, vision: bool = False) -> Any:
    """The torch model the flags name (None for --backend onnx); `vision`: images will come."""
    if args.backend == "onnx":
        return None
    return load_for_inference(
        args.model,
        args.tokenizer,
        args.device,
        _quantize(args),
        vision=vision,
        kv_cache_dtype=args.kv_cache_dtype,
        prefill_products=args.prefill_products,
    )


def _texts(
    args: argparse.Namespace, model: Any, sources: list[str], images: list | None = None
) -> tuple[list[str], int]:
    """Generated texts for `sources` (with `images`, for a vision-language model) with the backend the
    flags name, and how many were truncated."""
    if model is None:
        if images is not None:
            raise ValueError("--backend onnx runs text models only: images need --backend torch")
        if getattr(args, "chat", False):
            raise ValueError("--chat runs with --backend torch (the ONNX runtime tokenizes plain text)")
        return _onnx_texts(args, sources), 0
    if getattr(args, "chat", False) and images is not None:
        raise ValueError("--chat is for text models: a vision-language model answers --image inputs as they are")
    from encore.infer.vision import answer_images
    from encore.model.vlm import VisionLanguageModel
    from encore.progress import Progress
    from encore.tokenizer import read_template

    if isinstance(model, VisionLanguageModel) != (images is not None):
        raise ValueError(
            f"--model {args.model}: a vision-language model needs an image per input (--image, or an image task)"
            if images is None
            else f"--model {args.model} is a text model: it cannot read images (fine-tune one with --vision)"
        )
    progress = Progress(len(sources), unit="input", desc="generate", enabled=len(sources) > 1)
    try:
        if images is not None:
            return answer_images(model, images, sources, generation_options(args), progress.update)
        chat = getattr(args, "chat", False)
        template = read_template(args.chat_template) if chat else None
        return generate_texts(model, sources, generation_options(args), progress.update, chat, template)
    finally:
        progress.close()


def _onnx_texts(args: argparse.Namespace, sources: list[str]) -> list[str]:
    from encore.onnx import OnnxGenerator

    for flag in ("repetition_penalty", "no_repeat_ngram_size", "src_lang", "tgt_lang"):
        if getattr(args, flag, None) is not None:
            raise ValueError(
                f"--{flag.replace('_', '-')} runs with --backend torch (the ONNX runtime has no logits processors)"
            )
    gen = OnnxGenerator(args.model, provider=args.provider)
    sampling = dict(do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if args.num_beams is not None:
        sampling["num_beams"] = args.num_beams
    if args.length_penalty is not None:
        sampling["length_penalty"] = args.length_penalty
    texts: list[str] = []
    for start in range(0, len(sources), args.batch_size):
        batch = sources[start : start + args.batch_size]
        texts += gen.generate_text(batch, max_new_tokens=args.max_new_tokens, seed=args.seed, **sampling)
    return texts


def configure_generate(p: argparse.ArgumentParser) -> None:
    add_model_args(p, training=False)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="one input text")
    src.add_argument(
        "--input-file",
        help="a text file (one input per line) or JSONL with a 'source' field (vision-language: image records)",
    )
    p.add_argument("--image", default=None, help="an image file for --input (vision-language checkpoints)")
    p.add_argument(
        "--chat",
        action="store_true",
        help="each input is a user message laid out by the model's chat template (instruct models)",
    )
    p.add_argument("--chat-template", default=None, help="with --chat: a Jinja file replacing the tokenizer's")
    add_generation_args(p)


def run_generate(args: argparse.Namespace) -> int:
    from encore.data.vqa import read_image, read_vqa_file
    from encore.model.vlm import VisionLanguageModel

    model = _model(args, vision=getattr(args, "image", None) is not None)
    if getattr(getattr(model, "config", None), "encoder_input", "tokens") == "audio":
        raise ValueError(
            f"--model {args.model} is a speech model (Whisper): it reads audio, use encore transcribe FILE"
        )
    images = None
    if args.input is not None:
        sources = [args.input]
        if args.image is not None:
            images = [read_image(Path(args.image), "--image")]
    elif isinstance(model, VisionLanguageModel):
        records = list(read_vqa_file(args.input_file))
        sources, images = [r["source"] for r in records], [r["image"] for r in records]
    else:
        sources = read_inputs(Path(args.input_file))
    if args.chat_template is not None and not args.chat:
        raise ValueError("--chat-template goes with --chat")
    texts, truncated = _texts(args, model, sources, images)
    for text in texts:
        print(text)
    if truncated:
        print(f"note: {truncated} input(s) truncated to --max-source-len {args.max_source_len}", file=sys.stderr)
    empty = sum(not text for text in texts)
    if empty and not args.chat and getattr(getattr(model, "tokenizer", None), "chat_template", None):
        print(
            f"note: {empty} empty output(s); this model has a chat template: an instruct model may want --chat",
            file=sys.stderr,
        )
    return 0


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
    from encore.data.vqa import is_vision_task, load_vqa
    from encore.eval.metrics import compute_metrics, vqa_accuracy
    from encore.model.vlm import VisionLanguageModel

    model = _model(args, vision=is_vision_task(args.task))
    vision = isinstance(model, VisionLanguageModel) or is_vision_task(args.task)
    load = load_vqa if vision else load_task
    files = {} if vision else {"data_files": args.data_files}
    examples = list(load(args.task, split=args.split, limit=args.limit, **files, **task_options(args)))
    if not examples:
        raise ValueError(f"task {args.task!r} split {args.split!r} has no examples")
    images = [e["image"] for e in examples] if vision else None
    predictions, truncated = _texts(args, model, [e["source"] for e in examples], images)
    references = [e["target"] for e in examples]
    if vision:
        metrics = vqa_accuracy(
            predictions, references, [e["question_type"] for e in examples if "question_type" in e] or None
        )
    else:
        metrics = compute_metrics(
            Path(args.task).stem if Path(args.task).suffix else args.task, predictions, references
        )
    metrics.update(
        examples=len(examples), truncated_inputs=truncated, model=str(args.model), task=args.task, split=args.split
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for e, pred in zip(examples, predictions):
            extra = {"question_type": e["question_type"]} if "question_type" in e else {}
            f.write(json.dumps({"source": e["source"], "target": e["target"], "prediction": pred, **extra}) + "\n")
    metrics_path = out.with_suffix(".metrics.json")
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return 0
