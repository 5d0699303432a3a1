"""Files that survive crashes, and where encore caches what it builds.

`atomic_write` writes through a temporary file in the same directory, fsyncs it and renames it into
place, so a reader sees the old file or the whole new one, never half of one. `fsync_tree` and
`fsync_dir` make a directory's contents and its entries durable before a rename (checkpoints).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """Where encore caches what it derives from local data (tokenizers, task extractions):
    $ENCORE_CACHE, default ~/.cache/encore."""
    return Path(os.environ.get("ENCORE_CACHE") or Path.home() / ".cache" / "encore")


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, fsync, rename onto `path`: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fsync_tree(directory: Path) -> None:
    """fsync every file under `directory`, then the directory itself."""
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def looks_local(name: str | os.PathLike) -> bool:
    """Whether a name given where a local path or a hub id is accepted means a local path: it starts
    with ./ ../ / or ~, has more than one /, or its parent folder exists. Such a name that does not
    exist is reported missing, never tried on the hub."""
    text = str(name)
    if text.startswith(("./", "../", "/", "~")) or text in (".", "..") or text.rstrip("/").count("/") > 1:
        return True
    parent = Path(text).expanduser().parent
    return str(parent) not in ("", ".") and parent.is_dir()


def check_local(name: str | os.PathLike, flag: str) -> None:
    """FileNotFoundError naming `flag` when `name` looks like a local path (`looks_local`) and is missing."""
    if looks_local(name) and not Path(str(name)).expanduser().exists():
        raise FileNotFoundError(f"{flag} {name}: no such file or directory")
