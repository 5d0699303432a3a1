"""The running interpreter's standard library as data: its module files, and a fixed split by module.

Both embedded data sets read it: the `stdlib` pretraining corpus (`encore.data.corpora.StdlibCorpus`)
and the `code2doc` task (`encore.data.code2doc`). They share the split, so pretraining on the train
modules never shows the model the validation / test modules' docstrings.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

# directories that hold test suites, third-party packages or no library code
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "__phello__"}
SKIP_DIR_PREFIXES = ("config-",)  # config-3.11-x86_64-linux-gnu: build files


def module_split(module: str) -> str:
    """train / validation / test for a module name: sha256, so every machine and run agrees."""
    bucket = int(hashlib.sha256(module.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 80 else "validation" if bucket < 90 else "test"


def stdlib_files(stdlib: str | os.PathLike | None = None) -> Iterator[tuple[str, Path]]:
    """(module name, path) for each library .py file under the stdlib directory, in sorted order."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIP_DIRS and not d.startswith(SKIP_DIR_PREFIXES) and "-" not in d
        )
        for filename in sorted(filenames):
            if not filename.endswith(".py") or filename.startswith("test_") or filename == "conftest.py":
                continue
            path = Path(dirpath) / filename
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts) or "__init__", path
