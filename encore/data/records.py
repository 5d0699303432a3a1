"""Reading records (one dict each) from .jsonl / .json / .parquet files, with errors that say where.

    for line, record in iter_records("train.jsonl"):
        text = require_field(record, "text", "train.jsonl", line, str)

Positions are 1-based everywhere: the line number in a .jsonl file (blank lines are not records but
still count as lines, so the number is the one an editor shows), the element number in a .json
array, the row number in a .parquet file. Bad input raises `DataError` (a ValueError) naming the file,
the position and, when one is at fault, the field:

    data.jsonl: line 7: malformed JSON (Expecting ',' delimiter, column 31)
    data.jsonl: line 3: field 'target': missing (record has 'source', 'label')

With `skip_invalid=True` a bad record is skipped and counted in a `SkipReport` (pass your own to read
the counts; without one the summary is issued as a warning when the file is exhausted) so that nothing
disappears without a word. Files are streamed: .jsonl line by line (also .jsonl.gz), .parquet by row
batches; only a .json document is parsed whole, because JSON has no record boundaries to stream on.
A .json file that holds JSON Lines (as many hub datasets' do) is read as JSON Lines.
"""

from __future__ import annotations

import gzip
import json
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from encore.lazy import require

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")
_BOM = b"\xef\xbb\xbf"
_PARQUET_BATCH_ROWS = 1024


def _unit(path: str | os.PathLike) -> str:
    name = str(path).lower()
    if name.endswith(".parquet") or name.startswith("hf://"):  # hub datasets are tables: rows
        return "row"
    if name.endswith(".json"):
        return "record"
    return "line"


class DataError(ValueError):
    """Bad input data. `str(err)` reads "FILE: line N: field 'F': what is wrong"; the parts are also
    attributes (`path`, `line`, `field`, `message`) and `kind` is the short category a SkipReport counts by."""

    def __init__(
        self,
        path: str | os.PathLike,
        message: str,
        *,
        line: int | None = None,
        field: str | None = None,
        kind: str | None = None,
    ) -> None:
        self.path, self.line, self.field, self.message = str(path), line, field, message
        self.kind = kind or (f"bad field {field!r}" if field else message)
        where = self.path + (f": {_unit(path)} {line}" if line is not None else "")
        if field is not None:
            where += f": field {field!r}"
        super().__init__(f"{where}: {message}")


@dataclass
class SkipReport:
    """What `skip_invalid` skipped: a count per kind of problem and the first few full messages."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 5

    def add(self, error: DataError) -> None:
        self.counts[error.kind] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(error))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def summary(self) -> str:
        if not self:
            return "skipped 0 invalid records"
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.counts.most_common())
        return f"skipped {self.total} invalid record(s): {kinds} (first: {'; '.join(self.examples)})"

    def __str__(self) -> str:
        return self.summary()


def require_field(
    record: dict,
    field: str,
    path: str | os.PathLike,
    line: int,
    expected: type | tuple[type, ...] | None = None,
) -> Any:
    """`record[field]`, or a DataError naming file, line and field when it is missing or null (or,
    with `expected`, not of that type: pass `str` for text fields)."""
    if field not in record:
        keys = ", ".join(repr(k) for k in list(record)[:8]) or "no fields"
        raise DataError(path, f"missing (record has {keys})", line=line, field=field, kind=f"missing field {field!r}")
    value = record[field]
    if value is None:
        raise DataError(path, "is null", line=line, field=field, kind=f"null field {field!r}")
    if expected is not None and not isinstance(value, expected):
        names = "/".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        msg = f"expected {names}, got {type(value).__name__} ({_short(value)})"
        raise DataError(path, msg, line=line, field=field, kind=f"bad type for field {field!r}")
    return value


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def iter_records(
    path: str | os.PathLike,
    *,
    skip_invalid: bool = False,
    report: SkipReport | None = None,
) -> Iterator[tuple[int, dict]]:
    """Yield (position, record) for each record of a .jsonl / .jsonl.gz / .json / .parquet file.

    Raises DataError on the first bad record (malformed JSON, not an object, not UTF-8), on an empty
    file, a missing file or an unknown suffix. With `skip_invalid=True` bad records (and an empty file)
    are counted in `report` instead; without a report the count is issued as a warning at the end.
    """
    path = Path(path)
    own_report = report is None
    report = SkipReport() if report is None else report
    before = report.total
    name = path.name.lower()
    if not name.endswith(SUFFIXES):
        raise DataError(path, f"unsupported file type (expected one of {', '.join(SUFFIXES)})")
    if not path.is_file():
        raise DataError(path, "no such file" if not path.exists() else "not a regular file")

    if name.endswith(".parquet"):
        records = read_parquet(path)
    elif name.endswith(".json"):
        records = _iter_json(path, skip_invalid, report)
    else:
        records = _iter_jsonl(path, skip_invalid, report)

    n = 0
    for item in records:
        n += 1
        yield item
    if n == 0 and report.total == before:
        _fail(DataError(path, "empty file (no records)", kind="empty file"), skip_invalid, report)
    if own_report and report:
        warnings.warn(f"{path}: {report.summary()}", stacklevel=2)


def _fail(error: DataError, skip_invalid: bool, report: SkipReport) -> None:
    if not skip_invalid:
        raise error
    report.add(error)


# --- the readers: every file encore reads goes through these ---------------------------------------


def open_binary(path: Path) -> BinaryIO:
    """The file's bytes, decompressed for .gz."""
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_lines(path: Path, offset: int = 0, line: int = 0) -> Iterator[tuple[int, bytes, int]]:
    """(line number, raw bytes of the line, byte offset just after it) from byte `offset` on, where
    `line` lines came before it; a UTF-8 byte-order mark on the first line is dropped. The offsets let
    a reader resume mid-file."""
    with open_binary(path) as f:
        f.seek(offset)
        for raw in f:
            line += 1
            if line == 1 and raw.startswith(_BOM):  # a UTF-8 byte-order mark is not content
                raw = raw[3:]
            yield line, raw, f.tell()


def utf8_error(path: str | os.PathLike, line: int, raw: bytes, start: int) -> DataError:
    """`raw` holds the line's bytes, `start` is the offset of the first bad byte in it."""
    column = len(raw[:start].decode("utf-8", errors="replace")) + 1
    msg = f"not UTF-8 (byte {raw[start : start + 1]!r} at column {column})"
    return DataError(path, msg, line=line, kind="not UTF-8")


def decode_line(path: str | os.PathLike, line: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise utf8_error(path, line, raw, e.start) from None


def parse_record(path: str | os.PathLike, line: int, raw: bytes) -> dict:
    """One JSON Lines record: a DataError naming file and line for bad UTF-8, bad JSON or a non-object."""
    try:
        record = json.loads(decode_line(path, line, raw))
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON ({e.msg}, column {e.colno})", line=line, kind="malformed JSON") from None
    if not isinstance(record, dict):
        msg = f"expected a JSON object, got {type(record).__name__} ({_short(record)})"
        raise DataError(path, msg, line=line, kind="not an object")
    return record


def parquet_file(path: Path):
    """A `pyarrow.parquet.ParquetFile`, or a DataError naming the file."""
    pa = require("pyarrow", "data")
    pq = require("pyarrow.parquet", "data")

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, f"not a readable parquet file ({e})", kind="bad parquet") from None


def read_parquet(
    path: Path, columns: list[str] | None = None, start_row: int = 0, pf: Any = None
) -> Iterator[tuple[int, dict]]:
    """(row number, record) for each row after `start_row`, read in batches; whole row groups before
    `start_row` are skipped without being read."""
    pa = require("pyarrow", "data")

    pf = pf if pf is not None else parquet_file(path)
    row, first = 0, 0
    while first < pf.num_row_groups and row + pf.metadata.row_group(first).num_rows <= start_row:
        row += pf.metadata.row_group(first).num_rows
        first += 1
    if first == pf.num_row_groups:
        return
    try:
        groups = range(first, pf.num_row_groups)
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=groups, columns=columns):
            for record in batch.to_pylist():
                row += 1
                if row > start_row:
                    yield row, record
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, f"unreadable parquet data after row {row} ({e})", kind="bad parquet") from None


def _iter_jsonl(
    path: Path, skip_invalid: bool, report: SkipReport, lines: Iterable[tuple[int, bytes]] | None = None
) -> Iterator[tuple[int, dict]]:
    numbered = ((n, raw) for n, raw, _ in read_lines(path)) if lines is None else lines
    for lineno, raw in numbered:
        if not raw.strip():
            continue
        try:
            yield lineno, parse_record(path, lineno, raw)
        except DataError as e:
            _fail(e, skip_invalid, report)


def read_text(path: Path) -> str:
    """A whole file as text (a byte-order mark dropped); bad UTF-8 is a DataError naming the line."""
    data = path.read_bytes()
    if data.startswith(_BOM):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        raise utf8_error(path, data.count(b"\n", 0, e.start) + 1, data[line_start:], e.start - line_start) from None


def _iter_json(path: Path, skip_invalid: bool, report: SkipReport) -> Iterator[tuple[int, dict]]:
    text = read_text(path)  # one JSON document with a bad byte cannot be parsed around it: always an error
    if not text.strip():
        return
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several JSON values one after another: JSON Lines named .json
            lines = enumerate(text.encode().splitlines(keepends=True), start=1)
            yield from _iter_jsonl(path, skip_invalid, report, lines)
            return
        msg = f"malformed JSON ({e.msg}, line {e.lineno} column {e.colno})"
        raise DataError(path, msg, kind="malformed JSON") from None
    # a list of records, or {"data": [...]} (the layout of SQuAD's own files and others), or one record
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    elif isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list):
        raise DataError(path, f"expected a JSON array of objects, got {type(doc).__name__}", kind="not an object")
    for index, record in enumerate(doc, start=1):
        if not isinstance(record, dict):
            msg = f"expected a JSON object, got {type(record).__name__} ({_short(record)})"
            _fail(DataError(path, msg, line=index, kind="not an object"), skip_invalid, report)
            continue
        yield index, record
