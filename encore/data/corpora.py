"""Pretraining corpora: streams of text documents, sharded per data-parallel rank, resumable.

    open_corpus("stdlib")                          # the running interpreter's standard library, offline
    open_corpus("data/")                           # a folder of .txt / .jsonl / .parquet (.py) files
    open_corpus("web.jsonl", text_field="content")  # one file
    open_corpus("hf:HuggingFaceFW/fineweb-edu:sample-10BT@train")   # datasets.load_dataset(streaming=True)

A corpus is a cursor: iterating yields documents (str) from where the previous iteration stopped, and
`state_dict()` / `load_state_dict()` save and restore that position so a resumed run continues exactly
where it left off; `rewind()` starts the next pass (epoch). Nothing is ever read whole: .txt and .jsonl
are read line by line and resumed by byte offset, .parquet by row batches and resumed by row group, a
hub dataset through its own resumable streaming state.

Documents: a .jsonl record's `text_field`; a .parquet row's `text_field` column; in a .txt file, a
run of non-blank lines (blank lines separate documents; a paragraph longer than `max_doc_chars` is cut
into pieces so one huge file is never held whole); a .py file (and each stdlib module) is one document.
Empty and whitespace-only documents carry no tokens and are skipped (counted in `empty_documents`).

Sharding: rank r of w gets documents r, r + w, r + 2w, ... of the corpus's fixed order (a hub dataset
is split by `datasets.distributed.split_dataset_by_node`). Every rank reads the whole stream and keeps
its share: simple and exact, and tokenizing (the costly part) is done only for the share.

Bad input raises `DataError` (see `encore.data.records`) naming the file, the line (or row) and the
field: malformed JSON, a missing or non-string text field, bytes that are not UTF-8, an empty file. With
`skip_invalid=True` bad records are skipped and counted in `corpus.report` (a `SkipReport`), and a
summary is issued as a warning at the end of each pass, so nothing disappears without a word.

The default corpus `stdlib` holds only the modules of code2doc's *train* split (`encore.data.code2doc.
module_split`): pretraining on the validation / test modules' source would show the model the very
docstrings code2doc asks it to write. `stdlib:validation` / `stdlib:test` hold those (held-out text for a
pretraining loss), `stdlib:all` every module.
"""

from __future__ import annotations

import copy
import glob
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from encore.data.records import (
    DataError,
    SkipReport,
    decode_line,
    parquet_file,
    parse_record,
    read_lines,
    read_parquet,
    read_text,
    require_field,
)
from encore.data.stdlib import module_split, stdlib_files
from encore.lazy import require

TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)
CODE_SUFFIXES = (".py",)
SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES + CODE_SUFFIXES
MAX_DOC_CHARS = 1_000_000

Document = tuple[str, dict[str, Any]]  # (text, the corpus position just after it)


class Corpus:
    """A resumable, sharded stream of text documents. Subclasses implement `_documents(state)`:
    this rank's documents from `state` on, each with the position just after it."""

    name = "corpus"

    def __init__(self, *, rank: int = 0, world_size: int = 1, skip_invalid: bool = False) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.rank, self.world_size, self.skip_invalid = rank, world_size, skip_invalid
        self.report = SkipReport()
        self.empty_documents = 0
        self.epoch = 0
        self._position: dict[str, Any] = self._start()

    # --- to implement --------------------------------------------------------------------------------

    def _start(self) -> dict[str, Any]:
        return {"doc": 0}

    def _documents(self, position: dict[str, Any]) -> Iterator[Document]:
        raise NotImplementedError

    # --- the cursor ------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[str]:
        """This rank's documents from the current position to the end of the pass."""
        skipped = self.report.total
        for text, position in self._documents(copy.deepcopy(self._position)):
            self._position = position  # before yielding: a consumer that stops here has consumed it
            yield text
        if self.report.total > skipped:
            warnings.warn(f"{self.name}: {self.report.summary()}", stacklevel=2)

    def rewind(self) -> None:
        """Back to the first document, for the next pass (epoch)."""
        self.epoch += 1
        self._position = self._start()

    def state_dict(self) -> dict[str, Any]:
        return {
            "corpus": self.name,
            "rank": self.rank,
            "world_size": self.world_size,
            "epoch": self.epoch,
            "position": copy.deepcopy(self._position),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.epoch = int(state["epoch"])
        self._position = copy.deepcopy(state["position"])

    def _check_state(self, state: dict[str, Any]) -> None:
        for key in ("corpus", "rank", "world_size"):
            if state.get(key) != getattr(self, "name" if key == "corpus" else key):
                raise ValueError(
                    f"corpus state is for {key}={state.get(key)!r}, this corpus has "
                    f"{key}={getattr(self, 'name' if key == 'corpus' else key)!r}: resume with the same data and ranks"
                )

    def _mine(self, index: int) -> bool:
        return index % self.world_size == self.rank

    def _fail(self, error: DataError) -> None:
        if not self.skip_invalid:
            raise error
        self.report.add(error)

    def _text_field(self, record: dict, where: str | os.PathLike, line: int) -> str | None:
        """The record's text, or None for a bad record (raised or counted) or an empty one (counted)."""
        try:
            text = require_field(record, self.text_field, where, line, str)
        except DataError as e:
            return self._fail(e)
        if not text.strip():
            self.empty_documents += 1
            return None
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, rank={self.rank}, world_size={self.world_size})"


# --- local files --------------------------------------------------------------------------------------


class FileCorpus(Corpus):
    """Documents of local .txt / .jsonl / .parquet / .py files (or .gz-compressed .txt / .jsonl), in
    sorted path order. Position: file index, byte offset (row for parquet), line number, document index."""

    def __init__(
        self,
        paths: list[Path],
        *,
        name: str,
        text_field: str = "text",
        max_doc_chars: int = MAX_DOC_CHARS,
        rank: int = 0,
        world_size: int = 1,
        skip_invalid: bool = False,
    ) -> None:
        self.files, self.name, self.text_field, self.max_doc_chars = list(paths), name, text_field, max_doc_chars
        super().__init__(rank=rank, world_size=world_size, skip_invalid=skip_invalid)

    def _start(self) -> dict[str, Any]:
        return {"file": 0, "path": str(self.files[0]) if self.files else None, "offset": 0, "line": 0, "doc": 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        position = state.get("position", {})
        i = position.get("file", 0)
        if i < len(self.files) and position.get("path") != str(self.files[i]):
            raise ValueError(
                f"{self.name}: the saved position is in {position.get('path')!r} (file #{i}) but file #{i} is now "
                f"{str(self.files[i])!r}: the files changed since the state was saved"
            )
        super().load_state_dict(state)

    def _documents(self, position: dict[str, Any]) -> Iterator[Document]:
        doc = position["doc"]
        for i in range(position["file"], len(self.files)):
            path = self.files[i]
            offset, line = (position["offset"], position["line"]) if i == position["file"] else (0, 0)
            name = path.name.lower()
            if name.endswith(PARQUET_SUFFIXES):
                reader = self._parquet(path, offset)
            elif name.endswith(JSONL_SUFFIXES):
                reader = self._jsonl(path, offset, line)
            elif name.endswith(CODE_SUFFIXES):
                reader = self._whole(path, offset)
            else:
                reader = self._text(path, offset, line)
            for text, offset_after, line_after in reader:
                doc += 1
                if self._mine(doc - 1):
                    yield text, {"file": i, "path": str(path), "offset": offset_after, "line": line_after, "doc": doc}

    def _empty(self, path: Path) -> None:
        self._fail(DataError(path, "empty file (no documents)", kind="empty file"))

    def _text(self, path: Path, offset: int, start_line: int) -> Iterator[tuple[str, int, int]]:
        parts: list[str] = []
        size, seen, end, line = 0, False, offset, start_line
        for line, raw, end in read_lines(path, offset, start_line):  # line by line: the file is never held whole
            try:
                s = decode_line(path, line, raw)
            except DataError as e:
                seen = True
                self._fail(e)
                continue
            if s.strip():
                seen = True
                parts.append(s)
                size += len(s)
                if size < self.max_doc_chars:
                    continue
            if parts:  # a blank line (or a full-size piece) ends the document
                yield "".join(parts).rstrip("\r\n"), end, line
                parts, size = [], 0
        if parts:
            yield "".join(parts).rstrip("\r\n"), end, line
        if not seen and offset == 0:
            self._empty(path)

    def _jsonl(self, path: Path, offset: int, start_line: int) -> Iterator[tuple[str, int, int]]:
        seen = False
        for line, raw, end in read_lines(path, offset, start_line):
            if not raw.strip():
                continue
            seen = True
            try:
                record = parse_record(path, line, raw)
            except DataError as e:
                self._fail(e)
                continue
            text = self._text_field(record, path, line)
            if text is not None:
                yield text, end, line
        if not seen and offset == 0:
            self._empty(path)

    def _parquet(self, path: Path, start_row: int) -> Iterator[tuple[str, int, int]]:
        pa = require("pyarrow", "data")

        pf = parquet_file(path)
        schema, field = pf.schema_arrow, self.text_field
        if field not in schema.names:
            cols = ", ".join(repr(c) for c in schema.names[:8]) or "no columns"
            msg = f"missing (file has columns {cols})"
            return self._fail(DataError(path, msg, field=field, kind=f"missing field {field!r}"))
        kind = schema.field(field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            return self._fail(DataError(path, f"expected a string column, got {kind}", field=field, kind="bad type"))
        if pf.metadata.num_rows == 0:
            return self._empty(path)
        for row, record in read_parquet(path, columns=[field], start_row=start_row, pf=pf):
            value = record[field]
            if value is None:
                self._fail(DataError(path, "is null", line=row, field=field, kind=f"null field {field!r}"))
                continue
            if not value.strip():
                self.empty_documents += 1
                continue
            yield value, row, row

    def _whole(self, path: Path, offset: int) -> Iterator[tuple[str, int, int]]:
        """A source file is one document (they are small, and a module cut in two reads worse). An empty
        one (an empty __init__.py) is not an error."""
        if offset:
            return
        try:
            text = read_text(path)
        except DataError as e:
            return self._fail(e)
        if not text.strip():
            self.empty_documents += 1
            return
        yield text, 1, text.count("\n") + 1


def _files(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(SUFFIXES))
        if not found:
            raise DataError(path, f"no corpus files here (looked for {', '.join(SUFFIXES)}, recursively)")
        return found
    if path.is_file():
        if not path.name.lower().endswith(SUFFIXES):
            raise DataError(path, f"unsupported corpus file type (expected one of {', '.join(SUFFIXES)})")
        return [path]
    if any(c in spec for c in "*?["):
        found = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True))
        found = [p for p in found if p.is_file() and p.name.lower().endswith(SUFFIXES)]
        if not found:
            raise DataError(spec, f"the pattern matches no corpus files ({', '.join(SUFFIXES)})")
        return found
    raise DataError(path, "no such file or directory")


# --- the embedded default: the interpreter's standard library -----------------------------------------


class StdlibCorpus(Corpus):
    """The .py files of the running interpreter's standard library, one document each, in sorted order
    (the file list of `encore.data.code2doc.stdlib_files`). With `split="train"` (the default) only the
    modules code2doc trains on, so its validation / test docstrings are never pretrained on."""

    def __init__(
        self,
        split: str | None = "train",
        *,
        stdlib: str | os.PathLike | None = None,
        rank: int = 0,
        world_size: int = 1,
        skip_invalid: bool = False,
    ) -> None:
        self.name = "stdlib" if split == "train" else f"stdlib:{split or 'all'}"
        self.files = [p for module, p in stdlib_files(stdlib) if split is None or module_split(module) == split]
        if not self.files:
            raise DataError(stdlib or "stdlib", "no standard-library source files found")
        super().__init__(rank=rank, world_size=world_size, skip_invalid=skip_invalid)

    def _documents(self, position: dict[str, Any]) -> Iterator[Document]:
        for i in range(position["doc"], len(self.files)):
            if not self._mine(i):
                continue
            try:
                text = self.files[i].read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError) as e:
                # the interpreter's own files are not the user's input: count, never fail
                self.report.add(DataError(self.files[i], f"unreadable ({e})", kind="unreadable stdlib file"))
                continue
            if not text.strip():
                self.empty_documents += 1
                continue
            yield text, {"doc": i + 1}


# --- Hugging Face datasets, streamed --------------------------------------------------------------------


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """`hf:NAME[:CONFIG][@SPLIT]` -> (name, config, split); split defaults to "train"."""
    body = spec[3:] if spec.startswith("hf:") else spec
    body, _, split = body.partition("@")
    name, _, config = body.partition(":")
    if not name:
        raise ValueError(f"{spec!r}: expected hf:NAME[:CONFIG][@SPLIT], e.g. hf:HuggingFaceFW/fineweb-edu:sample-10BT")
    return name, config or None, split or "train"


class HFCorpus(Corpus):
    """`datasets.load_dataset(name, config, split=split, streaming=True)`: nothing is downloaded ahead
    of use; the dataset's own `state_dict()` makes the position resumable."""

    def __init__(
        self,
        name: str,
        config: str | None = None,
        split: str = "train",
        *,
        text_field: str = "text",
        rank: int = 0,
        world_size: int = 1,
        skip_invalid: bool = False,
        **load_kwargs: Any,
    ) -> None:
        datasets = require("datasets", "data")

        self.name = f"hf://{name}" + (f":{config}" if config else "") + f"@{split}"
        self.text_field = text_field
        ds = datasets.load_dataset(name, config, split=split, streaming=True, **load_kwargs)
        if world_size > 1:
            from datasets.distributed import split_dataset_by_node

            ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
        self._ds = ds
        self._initial = copy.deepcopy(ds.state_dict())
        super().__init__(rank=rank, world_size=world_size, skip_invalid=skip_invalid)

    def _start(self) -> dict[str, Any]:
        return {"doc": 0, "dataset": None}

    def _documents(self, position: dict[str, Any]) -> Iterator[Document]:
        ds = self._ds
        ds.set_epoch(self.epoch)  # a shuffled stream reshuffles per pass
        ds.load_state_dict(copy.deepcopy(position["dataset"] or self._initial))
        row = position["doc"]
        for record in ds:
            row += 1
            text = self._text_field(record, self.name, row)
            if text is not None:
                yield text, {"doc": row, "dataset": copy.deepcopy(ds.state_dict())}


# --- the one entry point ---------------------------------------------------------------------------------


def open_corpus(
    spec: str | os.PathLike,
    *,
    text_field: str = "text",
    rank: int = 0,
    world_size: int = 1,
    skip_invalid: bool = False,
    **kwargs: Any,
) -> Corpus:
    """A corpus from a spec: `stdlib` (code2doc's train modules; `stdlib:validation`, `stdlib:test`,
    `stdlib:all` for the others), a file / folder / glob of .txt,
    .jsonl, .parquet (and .py) files, or `hf:NAME[:CONFIG][@SPLIT]` (extra keyword arguments go to
    `datasets.load_dataset`). See the module docstring for documents, sharding and errors."""
    spec = str(spec)
    common = dict(rank=rank, world_size=world_size, skip_invalid=skip_invalid)
    if spec in ("stdlib", "stdlib:train", "stdlib:validation", "stdlib:test", "stdlib:all"):
        split = spec.partition(":")[2] or "train"
        return StdlibCorpus(None if split == "all" else split, **kwargs, **common)
    if spec.startswith("hf:"):
        name, config, split = parse_hf_spec(spec)
        return HFCorpus(name, config, split, text_field=text_field, **kwargs, **common)
    return FileCorpus(_files(spec), name=spec, text_field=text_field, **kwargs, **common)
