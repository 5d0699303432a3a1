"""The default tokenizer: a byte-level BPE trained on the local standard library, once, then cached.

    tok = default_tokenizer()        # 8192 ids; trained on first use (~2 s), cached under $ENCORE_CACHE

It is what a preset model gets when no `--tokenizer` is given, so every command works offline.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from encore.data.corpora import open_corpus
from encore.files import cache_dir
from encore.tokenizer import train_tokenizer

DEFAULT_MAX_CHARS = 4_000_000  # ~1-2 s of BPE training on 2 cores; plenty for an 8k vocabulary
DEFAULT_DOC_CHARS = 20_000  # per stdlib file, so the sample spans many modules rather than the first few
_FORMAT_VERSION = 1  # bump when the default tokenizer's recipe changes: the cache key includes it


def default_tokenizer_path(vocab_size: int = 8192) -> Path:
    stdlib = sysconfig.get_paths()["stdlib"]
    version = f"{sys.implementation.name}{'.'.join(map(str, sys.version_info[:3]))}"
    key = hashlib.sha256(stdlib.encode()).hexdigest()[:10]
    return cache_dir() / f"tokenizer-stdlib-{version}-{key}-v{_FORMAT_VERSION}-vocab{vocab_size}"


def default_tokenizer(vocab_size: int = 8192) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a bounded sample of the local stdlib corpus (`open_corpus("stdlib")`),
    trained on first use and cached under $ENCORE_CACHE (default ~/.cache/encore), keyed by vocabulary
    size and Python version. Deterministic for a given interpreter."""
    path = default_tokenizer_path(vocab_size)
    if (path / "tokenizer.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    tokenizer = train_tokenizer(
        open_corpus("stdlib"), vocab_size, max_chars=DEFAULT_MAX_CHARS, doc_chars=DEFAULT_DOC_CHARS
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tokenizer.save_pretrained(str(tmp))
        if path.exists():  # a damaged copy (we could not load it above)
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.replace(tmp, path)  # atomic: a concurrent reader sees no directory or a complete one
        except OSError:  # another process got there first: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # an unwritable cache only costs time
    return tokenizer
