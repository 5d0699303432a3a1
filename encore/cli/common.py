"""What the commands share: flags that mean the same everywhere, flags -> dataclass configs, and the
model + tokenizer a `--model` / `--tokenizer` pair names."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from encore.convert import load, resolve_model
from encore.model import LanguageModel, VisionLanguageModel, build

TASK_HELP = (
    "a task name (code2doc, synthqa, addition, squad_v2, xsum, code_x_glue_ct; with --vision or a vision checkpoint: "
    "shapesvqa) or a .jsonl/.json/.parquet file of source/target pairs (with images: image/question/answer records)"
)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the flag in its error)."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """A dataclass `cls` from the parsed flags of the same names, with `overrides` for the rest."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return cls(**{**values, **overrides})


def add_model_args(p: argparse.ArgumentParser, training: bool = True) -> None:
    checkpoints = (
        "an encore or transformers checkpoint directory (T5, Flan-T5, mT5, BART, mBART, Marian, Pegasus, M2M100 / "
        "NLLB, Whisper, T5Gemma, Llama, Qwen2/3, Gemma 3), hf:ORG/NAME, a CTranslate2 Whisper directory, "
        "or a .gguf file"
    )
    help_text = (
        f"what to start from: a preset name (encore.ModelConfig.preset_names(): random weights), a ModelConfig .json "
        f"file, or {checkpoints}"
        if training
        else f"the model to run: {checkpoints} (a preset's random weights only where --random-weights is offered)"
    )
    p.add_argument("--model", required=True, help=help_text)
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer directory or hub id (default: the checkpoint's, or encore's stdlib BPE for a preset)",
    )
    if training:
        p.add_argument("--trust-remote-code", action="store_true", help="allow a hub tokenizer's own code")


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


def resolve_tokenizer(name: str | None, model: LanguageModel | None = None, trust_remote_code: bool = False):
    """`--tokenizer` when given, else the checkpoint's own, else encore's default (stdlib BPE)."""
    from encore.tokenizer import load_tokenizer

    if name:
        from encore.files import check_local

        check_local(name, "--tokenizer")
        return load_tokenizer(name, trust_remote_code=trust_remote_code)
    if model is not None and model.tokenizer is not None:
        return model.tokenizer
    from encore.data.vocab import default_tokenizer

    return default_tokenizer()


def build_model(
    spec: str,
    tokenizer_name: str | None = None,
    seed: int = 0,
    dropout: float | None = None,
    trust_remote_code: bool = False,
    vision: bool = False,
) -> LanguageModel:
    """A checkpoint directory is loaded as is (`vision`: a transformers checkpoint's image tower too);
    a preset or a ModelConfig .json file is built fresh, its vocabulary and special ids taken from the
    tokenizer (vocab rounded up to a multiple of 64 for fast matmuls)."""
    from encore.tokenizer import special_ids

    config, checkpoint = resolve_model(spec)
    if checkpoint is not None:
        model = load(checkpoint, vision=vision)
        if tokenizer_name:
            model.tokenizer = resolve_tokenizer(tokenizer_name, trust_remote_code=trust_remote_code)
        if model.tokenizer is None:
            raise ValueError(f"{spec}: the checkpoint has no tokenizer.json; pass --tokenizer")
        if len(model.tokenizer) > model.config.vocab_size:
            raise ValueError(
                f"--tokenizer has {len(model.tokenizer)} ids, more than the model's vocab_size "
                f"{model.config.vocab_size}: it is not this model's tokenizer"
            )
        if dropout is not None:
            model.set_dropout(dropout)
        return model
    tokenizer = resolve_tokenizer(tokenizer_name, trust_remote_code=trust_remote_code)
    pad, bos, eos = special_ids(tokenizer)
    changes: dict[str, Any] = dict(
        vocab_size=(len(tokenizer) + 63) // 64 * 64, pad_token_id=pad, bos_token_id=bos, eos_token_id=eos
    )
    if dropout is not None:
        changes["dropout"] = dropout
    model = build(config.replace(**changes), seed=seed)
    model.tokenizer = tokenizer
    return model


def add_quantize_flag(p: argparse.ArgumentParser) -> None:
    """--quantize, --kv-cache-dtype and --prefill-products for the commands that run a model (generate,
    eval, serve, chat, transcribe)."""
    p.add_argument(
        "--quantize",
        choices=["none", "int8", "int4"],
        default="none",
        help="int8 / int4 weights on the CPU (encore.optimize; a quantized checkpoint is already so) (%(default)s)",
    )
    add_kv_cache_dtype_flag(p)
    add_prefill_products_flag(p)


def add_kv_cache_dtype_flag(p: argparse.ArgumentParser) -> None:
    """--kv-cache-dtype (`encore.optimize(kv_dtype=...)`): the commands that run a model, and bench."""
    p.add_argument(
        "--kv-cache-dtype",
        choices=["auto", "fp32", "fp16"],
        default="auto",
        help="K/V cache precision: fp16 halves its memory and the K/V a decode step reads; auto: fp16 where the "
        "fused CPU kernels run, else the model's dtype (%(default)s)",
    )


def add_prefill_products_flag(p: argparse.ArgumentParser) -> None:
    """--prefill-products (`encore.optimize(prefill_products=...)`): the commands that run a model, and bench."""
    p.add_argument(
        "--prefill-products",
        choices=["auto", "bf16", "int8"],  # encore.infer.optimize.PREFILL_PRODUCTS (not imported: torch)
        default="auto",
        help="int8 models: a prefill's products as bf16 (nearer the float product) or int8 (each row's activations "
        "rounded to int8, as CTranslate2's int8: the first token sooner on AMX CPUs); auto: bf16 where the CPU has it",
    )


def check_device(device: str) -> None:
    """--device names a device this torch has (one line, not an assertion from torch's guts)."""
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"--device {device}: {why}; use --device cpu")


def load_for_inference(
    spec: str,
    tokenizer: str | None,
    device: str,
    quantize: str | None = None,
    random_weights: bool | None = None,
    vision: bool = False,
    kv_cache_dtype: str = "auto",
    prefill_products: str = "auto",
) -> LanguageModel:
    """A checkpoint with its tokenizer, made ready for inference on `device` (`encore.optimize`); the
    process keeps freed memory for reuse (`encore.infer.memory`), as a CPU deployment should.
    `random_weights`: None for a command without that flag; True lets a preset or config be built
    untrained (a command's `--random-weights`, for capacity benchmarks). `vision`: images will come
    (a transformers checkpoint's image tower is loaded too). `kv_cache_dtype`: "auto", "fp32" or "fp16"
    (`--kv-cache-dtype`); `prefill_products`: "auto", "bf16" or "int8" (`--prefill-products`)."""
    from encore.infer.memory import release_freed_memory, retain_freed_memory
    from encore.infer.optimize import kv_dtype_named, optimize

    retain_freed_memory()
    check_device(device)
    config, checkpoint = resolve_model(spec)
    if checkpoint is None and not random_weights:
        hint = "" if random_weights is None else "; pass one, or --random-weights to serve the preset untrained"
        raise ValueError(f"--model {spec!r}: not a checkpoint directory{hint}")
    model = build_model(spec, tokenizer, vision=vision)
    kv_dtype = kv_dtype_named(kv_cache_dtype)
    model = optimize(
        model, device, quantize=quantize, kv_dtype=kv_dtype, keep_originals=False, prefill_products=prefill_products
    )
    release_freed_memory()  # a model quantized here: its fp32 weights' pages
    return model


def text_only(model: Any, spec: str, command: str) -> Any:
    """`model`, unless it is a vision-language checkpoint, which `command` does not take (yet)."""
    if isinstance(model, VisionLanguageModel):
        raise ValueError(
            f"--model {spec} is a vision-language checkpoint: encore {command} takes text models only "
            "(use encore generate --image / encore eval for images)"
        )
    return model
