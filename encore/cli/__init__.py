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
from typing import Any

# name -> (module, one-line help). Add a subcommand by adding a line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("encore.cli.train:pretrain", "pretrain: span corruption (encoder-decoder) or causal LM"),
    "finetune": ("encore.cli.train:finetune", "fine-tune on a source -> target task"),
    "distill": ("encore.cli.train:distill", "distill a decoder-only teacher into an encoder-decoder student"),
    "generate": ("encore.cli.infer:generate", "generate from a checkpoint"),
    "transcribe": ("encore.cli.transcribe", "speech files -> text / srt / vtt / json through a Whisper model"),
    "eval": ("encore.cli.infer:eval", "generate on a task split and score the predictions"),
    "bench": ("encore.cli.bench", "time an encoder-decoder against a decoder-only model of the same size"),
    "export": ("encore.cli.export", "export a model for deployment (ONNX graphs + manifest; int8, static shapes)"),
    "chat": ("encore.cli.chat", "chat with a model in the terminal (its chat template, streamed replies)"),
    "serve": ("encore.cli.serve", "an OpenAI-compatible HTTP server with continuous batching"),
    "convert": (
        "encore.cli.convert",
        "convert a checkpoint: transformers (T5Gemma, Llama, Qwen, Gemma 3, GGUF) <-> encore",
    ),
    "adapt": ("encore.cli.adapt", "adapt a decoder-only checkpoint into an encoder-decoder (T5Gemma's recipe)"),
    "tokenizer": ("encore.cli.tokenizer", "train a byte-level BPE tokenizer on a corpus"),
    "reproduce": ("encore.cli.reproduce", "re-measure every claim of the paper: REPORT.md + results.json"),
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
    debug = "--debug" in argv  # tracebacks for every error (bugs get one anyway)
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if not argv:
            parser.print_help()
            return 2
        parser.parse_args(argv)  # prints --help / --version, or an error naming the unknown command
        return 2
    name, rest = argv[0], argv[1:]
    parser, run = command_parser(name)
    args = parser.parse_args(rest)
    try:
        return int(run(args) or 0)
    except Exception as e:
        if debug or not _user_error(e):
            raise
        if hasattr(e, "signum"):  # training stopped on SIGINT / SIGTERM after saving a checkpoint
            print(f"encore {name}: {e}\nresume with: {_resume_command(name, rest)}", file=sys.stderr)
            return 128 + e.signum
        print(f"encore {name}: error: {_one_line(e)}", file=sys.stderr)
        return 1 if type(e).__name__ == "TrainingError" else 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\nencore {name}: interrupted", file=sys.stderr)
        return 130


def command_parser(name: str) -> tuple[argparse.ArgumentParser, Any]:
    """(the parser of `encore NAME`, its run function): what `main` runs and what the docs' CLI
    reference prints (`docs/hooks/cli_reference.py`), one source for both."""
    module_name, _, entry = COMMANDS[name][0].partition(":")
    module = importlib.import_module(module_name)
    suffix = f"_{entry}" if entry else ""
    parser = argparse.ArgumentParser(
        prog=f"encore {name}",
        description=COMMANDS[name][1],
        formatter_class=_DefaultsFormatter,
        epilog="--debug (any command): show tracebacks",
    )
    getattr(module, f"configure{suffix}")(parser)
    for action in parser._actions:  # argparse prints no help line at all for a flag without help text
        if action.help is None and action.option_strings:
            action.help = ""
    return parser, getattr(module, f"run{suffix}")


class _DefaultsFormatter(argparse.HelpFormatter):
    """`--help` shows each flag's default (unless its help says it already, or there is none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS, "", [])
        if action.option_strings and shown and "%(default)" not in text and "(default" not in text:
            text = f"{text} (default: %(default)s)".strip()
        return text

    def _format_action(self, action: argparse.Action) -> str:
        if action.help == "":  # still print the flag line (and its default, if any)
            action.help = self._get_help_string(action) or " "
        return super()._format_action(action)


def _user_error(e: BaseException) -> bool:
    """Bad input or a run that cannot go on (ValueError, a missing file, TrainingError): one line, no
    traceback. Anything else is a bug and keeps its traceback."""
    names = {cls.__name__ for cls in type(e).__mro__}
    return isinstance(e, (ValueError, FileNotFoundError, NotADirectoryError)) or "TrainingError" in names


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _resume_command(name: str, rest: list[str]) -> str:
    import shlex

    args = [a for a in rest if a != "--overwrite"]
    if not any(a == "--resume" or a.startswith("--resume=") for a in args):
        args.append("--resume")
    return shlex.join(["encore", name, *args])


if __name__ == "__main__":
    sys.exit(main())
