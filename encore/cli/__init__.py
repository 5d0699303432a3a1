"""The `encore` command line: a thin dispatcher.

Each subcommand names a module that exposes ``configure(parser)`` (add its flags) and
``run(args) -> int``; a module serving several subcommands is named as ``module:NAME`` and exposes
``configure_NAME`` / ``run_NAME``. Only the chosen subcommand's module is imported, so
`encore --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Add a subcommand by adding a line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("encore.cli.train:pretrain", "pretrain: span corruption (encoder-decoder) or causal LM"),
    "finetune": ("encore.cli.train:finetune", "fine-tune on a source -> target task"),
    "distill": ("encore.cli.train:distill", "distill a decoder-only teacher into an encoder-decoder student"),
    "generate": ("encore.cli.infer:generate", "generate from a checkpoint"),
    "eval": ("encore.cli.infer:eval", "generate on a task split and score the predictions"),
    "bench": ("encore.cli.bench", "time an encoder-decoder against a decoder-only model of the same size"),
    "export": ("encore.cli.export", "export a model for deployment (ONNX graphs + manifest; int8, static shapes)"),
    "serve": ("encore.cli.serve", "an OpenAI-compatible HTTP server with continuous batching"),
    "tokenizer": ("encore.cli.tokenizer", "train a byte-level BPE tokenizer on a corpus"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encore", description="Encoder-decoder small language models.")
    parser.add_argument("--version", action="version", version=f"encore {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _version() -> str:
    from encore import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if not argv:
            parser.print_help()
            return 2
        parser.parse_args(argv)  # prints --help / --version, or an error naming the unknown command
        return 2
    name, rest = argv[0], argv[1:]
    module_name, _, entry = COMMANDS[name][0].partition(":")
    module = importlib.import_module(module_name)
    suffix = f"_{entry}" if entry else ""
    parser = argparse.ArgumentParser(prog=f"encore {name}", description=COMMANDS[name][1])
    getattr(module, f"configure{suffix}")(parser)
    args = parser.parse_args(rest)
    try:
        return int(getattr(module, f"run{suffix}")(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # bad input: say what was wrong, no traceback
        print(f"encore {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
