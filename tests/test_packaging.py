"""The wheel a user installs carries what encore needs at run time beside its Python: the C kernels'
sources (built on first use), the chat page, and every package (encore.audio, ...)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_the_kernels_the_page_and_every_package(tmp_path):
    command = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w",
               str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("encore-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {f"encore/model/csrc/{p.name}" for p in (ROOT / "encore" / "model" / "csrc").glob("*.[ch]")}
    assert sources and sources <= names
    assert "encore/serve/static/chat.html" in names
    packages = {f"{p.parent.relative_to(ROOT).as_posix()}/__init__.py" for p in (ROOT / "encore").rglob("__init__.py")}
    assert packages <= names, sorted(packages - names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    from encore import __version__

    assert f"Version: {__version__}" in text and "Provides-Extra: audio" in text
