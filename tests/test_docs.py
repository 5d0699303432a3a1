"""Documentation that no longer runs fails CI: the README's and the getting-started page's Python blocks
run as written (tiny presets, offline; a block that needs the hub or a file of yours, `hf:` or
`path/to`, is skipped), and the CLI reference is generated from the parsers."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "getting-started.md"]


def python_blocks(path: Path) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    return [b for b in blocks if "hf:" not in b and "path/to" not in b]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_run_as_written(page, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    assert blocks, f"{page.name} has no runnable Python block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for block in blocks:  # one namespace per page: later blocks use what earlier ones defined
        exec(compile(block, str(page), "exec"), namespace)


def test_cli_reference_covers_every_command():
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        import cli_reference
    finally:
        sys.path.pop(0)
    from encore.cli import COMMANDS

    page = cli_reference.on_page_markdown((ROOT / "docs" / "cli.md").read_text())
    for name in COMMANDS:
        assert f"## encore {name}\n" in page and f"usage: encore {name}" in page
    assert cli_reference.MARKER not in page
