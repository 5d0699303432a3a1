"""mkdocs hook: the CLI reference page is generated from encore's own argparse parsers at build time
(`encore.cli.command_parser`), so it can never drift from `--help`. A page holding the line
`<!-- cli-reference -->` gets every command's help in its place."""

from __future__ import annotations

import os

MARKER = "<!-- cli-reference -->"


def cli_reference() -> str:
    """Markdown: one section per command, its `--help` as a code block."""
    os.environ.setdefault("COLUMNS", "110")  # argparse wraps at the terminal's width: a stable one
    from encore.cli import COMMANDS, command_parser

    parts = []
    for name, (_, summary) in COMMANDS.items():
        parser, _ = command_parser(name)
        parts.append(f"## encore {name}\n\n{summary}\n\n```text\n{parser.format_help().rstrip()}\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, **kwargs) -> str:
    return markdown.replace(MARKER, cli_reference()) if MARKER in markdown else markdown
