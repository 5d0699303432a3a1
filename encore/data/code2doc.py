"""code2doc: summarize a Python function in one sentence, from the local standard library (offline).

Every function or method with a docstring in the running interpreter's standard library becomes one
example (test suites, site-packages and files that do not parse are left out):

    source: the function's code, decorators included, dedented, with the docstring statement removed
            (a body that held only the docstring gets `...`, so the source still reads as Python)
    target: the docstring's first sentence: first paragraph, whitespace collapsed, cut after the first
            '.', '!' or '?' that ends a sentence ("e.g." and friends do not); targets shorter than
            two words / 10 characters, longer than 256 characters, or not starting with a letter are
            skipped, as are sources over 12,000 characters.

Long input, short output: the asymmetric shape of the paper's code-to-text task, with no download.
The split is by module (a function's module name hashed with sha256: 80% train, 10% validation, 10%
test; evaluation sets of a few hundred examples, not ~200), so it is the same on every machine and run,
and no module is in two splits. Exact duplicate (source, target) pairs are kept once.

Extraction takes a few seconds; the examples are cached as JSONL under `$ENCORE_CACHE` (default
`~/.cache/encore`), keyed by Python version and standard-library path.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
import tokenize
from collections.abc import Iterator
from pathlib import Path

from encore import files
from encore.data.stdlib import module_split, stdlib_files

SPLITS = ("train", "validation", "test")
FORMAT_VERSION = 1  # bump when extraction changes, so old caches are not reused
MIN_TARGET_CHARS, MAX_TARGET_CHARS = 10, 256
MAX_SOURCE_CHARS = 12_000
_NOT_SENTENCE_END = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "resp.", "Mr.", "Dr.", "No.")


def first_sentence(docstring: str) -> str:
    """The first sentence of a docstring: its first paragraph, whitespace collapsed, up to and including
    the first '.', '!' or '?' that is followed by whitespace (or ends the paragraph)."""
    paragraph = re.split(r"\n\s*\n", docstring.strip(), maxsplit=1)[0]
    text = " ".join(paragraph.split())
    for m in re.finditer(r"[.!?](?=\s|$)", text):
        end = m.end()
        if not text[:end].endswith(_NOT_SENTENCE_END):
            return text[:end]
    return text


def _keep_target(target: str) -> bool:
    return MIN_TARGET_CHARS <= len(target) <= MAX_TARGET_CHARS and len(target.split()) >= 2 and target[:1].isalpha()


def extract_functions(path_or_source: str | os.PathLike) -> list[dict]:
    """Examples from one Python file (a path) or source text: a list of
    {"name": qualified name, "lineno": int, "source": code without docstring, "target": first sentence}.
    A one-line string ending in ".py" is a path. Raises SyntaxError on unparsable source (the stdlib walk
    skips such files) and FileNotFoundError on a missing file."""
    looks_like_path = isinstance(path_or_source, str) and "\n" not in path_or_source and path_or_source.endswith(".py")
    if isinstance(path_or_source, os.PathLike) or looks_like_path:
        with tokenize.open(path_or_source) as f:  # honours a `# coding:` line
            text = f.read()
        filename = str(path_or_source)
    else:
        text, filename = str(path_or_source), "<string>"
    tree = ast.parse(text, filename=filename)
    lines = re.split(r"\r\n|\r|\n", text)  # the line breaks ast counts (str.splitlines also splits on \f and others)
    examples: list[dict] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qualname = prefix + child.name
                example = _example(child, lines)
                if example is not None:
                    examples.append({"name": qualname, "lineno": child.lineno, **example})
                visit(child, qualname + ".<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return examples


def _example(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> dict | None:
    docstring = ast.get_docstring(node, clean=True)
    if not docstring:
        return None
    target = first_sentence(docstring)
    if not _keep_target(target):
        return None
    doc = node.body[0]
    # the docstring must own its lines (not `def f(): "doc"`, not `"doc"; x = 1`) to be cut out cleanly
    first, last = lines[doc.lineno - 1], lines[doc.end_lineno - 1]
    if first[: doc.col_offset].strip() or last[doc.end_col_offset :].strip():
        return None
    if len(node.body) > 1 and node.body[1].lineno == doc.end_lineno:
        return None
    start = min([d.lineno for d in node.decorator_list] + [node.lineno])
    indent = node.col_offset
    body = lines[start - 1 : doc.lineno - 1]
    if len(node.body) == 1:  # the docstring was the whole body: keep the function well-formed
        body.append(" " * doc.col_offset + "...")
    body += lines[doc.end_lineno : node.end_lineno]
    # dedent by the def's own indentation; lines inside multi-line strings that sit further left stay as they are
    source = "\n".join(line[indent:] if not line[:indent].strip() else line for line in body).rstrip()
    if len(source) > MAX_SOURCE_CHARS:
        return None
    return {"source": source, "target": target}


def extract_stdlib(stdlib: str | os.PathLike | None = None) -> list[dict]:
    """All examples of the standard library, each with "module" and "split" added."""
    examples, seen = [], set()
    for module, path in stdlib_files(stdlib):
        try:
            found = extract_functions(path)
        except (SyntaxError, ValueError, UnicodeDecodeError, OSError, RecursionError):
            continue  # e.g. lib2to3's deliberately broken test data
        split = module_split(module)
        for e in found:
            if (e["source"], e["target"]) not in seen:  # identical copies (e.g. vendored twice) once only
                seen.add((e["source"], e["target"]))
                examples.append({"module": module, "split": split, **e})
    return examples


def cache_path(cache_dir: str | os.PathLike | None = None, stdlib: str | os.PathLike | None = None) -> Path:
    root = Path(cache_dir) if cache_dir else files.cache_dir()
    stdlib = str(stdlib or sysconfig.get_paths()["stdlib"])
    version = ".".join(map(str, sys.version_info[:3]))
    key = hashlib.sha256(stdlib.encode()).hexdigest()[:10]
    return root / f"code2doc-{sys.implementation.name}{version}-{key}-v{FORMAT_VERSION}.jsonl"


def examples(
    cache_dir: str | os.PathLike | None = None, stdlib: str | os.PathLike | None = None, refresh: bool = False
) -> list[dict]:
    """All examples (every split), from the cache when there is one; extracted and cached otherwise."""
    path = cache_path(cache_dir, stdlib)
    if path.is_file() and not refresh:
        try:
            with open(path, encoding="utf-8") as f:
                return [json.loads(line) for line in f]
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    found = extract_stdlib(stdlib)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for e in found:
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
    except OSError:
        pass  # an unwritable cache only costs time
    return found


def load(
    split: str = "train",
    *,
    cache_dir: str | os.PathLike | None = None,
    stdlib: str | os.PathLike | None = None,
    refresh: bool = False,
) -> Iterator[dict]:
    """{"source", "target"} for each example of a split, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"code2doc has no split {split!r}; splits: {', '.join(SPLITS)}")
    for e in examples(cache_dir, stdlib, refresh):
        if e["split"] == split:
            yield {"source": e["source"], "target": e["target"]}


if __name__ == "__main__":  # python -m encore.data.code2doc: extract (or read the cache) and print the counts
    import time
    from collections import Counter

    t = time.perf_counter()
    everything = examples(refresh="--refresh" in sys.argv)
    counts = Counter(e["split"] for e in everything)
    print(f"{len(everything)} examples in {time.perf_counter() - t:.1f}s from {cache_path()}")
    print(", ".join(f"{s}: {counts[s]}" for s in SPLITS), f"({len({e['module'] for e in everything})} modules)")
