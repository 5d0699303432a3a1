"""Fine-tuning tasks: everything becomes a stream of {"source": str, "target": str}.

    load_task("synthqa", split="validation")                       # built in, offline
    load_task("code2doc", split="train")                           # built in, from the local stdlib
    load_task("squad_v2", split="validation")                      # from the hub (datasets.load_dataset)
    load_task("squad_v2", split="validation", data_files="dev.parquet")   # the hub schema, local files
    load_task("pairs.jsonl", source_field="input", target_field="output")  # a file of pairs is a task

Tasks (`task_names()`; `TASKS` holds their descriptions and splits):

    squad_v2        source "question: {question} context: {context}" (one fixed template, shared with
                    synthqa), target the first answer text or the literal `unanswerable` when `answers`
                    is empty. Records in the hub schema (id, title, context, question,
                    answers{text, answer_start}); a local .json in SQuAD's own nested layout
                    (data > paragraphs > qas) is read too.
    xsum            source `document`, target `summary`.
    code_x_glue_ct  source `code_tokens` joined by spaces, target `docstring_tokens` joined by spaces:
                    CodeXGLUE code-to-text as its benchmark scripts feed it (the tokens leave the
                    docstring out of the code). Option `language` (hub config, default "python").
    code2doc        stdlib functions -> first docstring sentence (`encore.data.code2doc`), offline.
    addition        generated n-digit sums with spaced digits (`encore.data.addition`), offline; options
                    `size`, `seed`, `digits` (default 3), `offset` (a + b + offset: a changed task).
    synthqa         generated SQuAD-2-style QA (`encore.data.synthqa`), offline; options `size`, `seed`,
                    `max_entities` (smaller worlds, shorter contexts).
    <file>          a .jsonl / .jsonl.gz / .json / .parquet file of pairs; options `source_field`,
                    `target_field` (default "source" / "target"). The file is its one split, so
                    `split` is not checked.

`data_files` (hub tasks only): a path, a glob, a list of them, or {split: files}; a plain path or list
is the data of the split asked for. Local files go through `encore.data.records` (clear errors, no
network); URLs go to `datasets.load_dataset`. Without `data_files` the hub is used.

Options for every task: `limit` (stop after this many examples), `skip_invalid` (skip and count bad
records instead of raising; counts go to `report`, a `SkipReport`, or a warning at the end). Source
and target must be non-empty text: an empty one is an error naming file, line and field, as is any
other bad record.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encore.data.records import SUFFIXES, DataError, SkipReport, iter_records, require_field
from encore.lazy import require

UNANSWERABLE = "unanswerable"
SQUAD_TEMPLATE = "question: {question} context: {context}"
COMMON_OPTIONS = ("limit", "skip_invalid", "report")
Example = dict[str, str]
Adapter = Callable[[dict, str, int], list[Example]]  # (record, file, line) -> examples


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    splits: tuple[str, ...]
    options: tuple[str, ...] = ()  # task-specific options on top of COMMON_OPTIONS
    hub: str | None = None  # datasets.load_dataset path
    adapter: Adapter | None = None  # record -> examples, for hub and file tasks
    builtin: Callable[..., Iterable[Example]] | None = None  # (split, **options) -> examples, embedded tasks


# --- adapters: one public schema each ------------------------------------------------------------------


def _text(record: dict, field: str, path: str, line: int) -> str:
    value = require_field(record, field, path, line, str)
    if not value.strip():
        raise DataError(path, "is empty", line=line, field=field, kind=f"empty field {field!r}")
    return value.strip()


def _tokens(record: dict, field: str, path: str, line: int) -> str:
    tokens = require_field(record, field, path, line, list)
    if not all(isinstance(t, str) for t in tokens):
        raise DataError(path, "expected a list of strings", line=line, field=field, kind=f"bad type for {field!r}")
    text = " ".join(t for t in tokens if t.strip())
    if not text:
        raise DataError(path, "is empty", line=line, field=field, kind=f"empty field {field!r}")
    return text


def squad_source(question: str, context: str) -> str:
    return SQUAD_TEMPLATE.format(question=" ".join(question.split()), context=context.strip())


def squad_v2_examples(record: dict, path: str, line: int) -> list[Example]:
    """One SQuAD 2.0 record in the hub schema (or one article of SQuAD's own nested JSON)."""
    if "paragraphs" in record and "question" not in record:
        return _squad_article(record, path, line)
    context, question = _text(record, "context", path, line), _text(record, "question", path, line)
    answers = require_field(record, "answers", path, line, dict)
    texts = answers.get("text")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        msg = f"expected a list of strings, got {type(texts).__name__}" if texts is not None else "missing"
        raise DataError(path, msg, line=line, field="answers.text", kind="bad field 'answers.text'")
    if texts and not texts[0].strip():
        raise DataError(path, "first answer is empty", line=line, field="answers.text", kind="empty answer")
    return [{"source": squad_source(question, context), "target": texts[0].strip() if texts else UNANSWERABLE}]


def _squad_article(article: dict, path: str, line: int) -> list[Example]:
    examples = []
    paragraphs = require_field(article, "paragraphs", path, line, list)
    for i, paragraph in enumerate(paragraphs):
        where = f"paragraphs[{i}]"
        if not isinstance(paragraph, dict):
            raise DataError(path, "expected an object", line=line, field=where, kind="not an object")
        context = _text(paragraph, "context", path, line)
        for j, qa in enumerate(require_field(paragraph, "qas", path, line, list)):
            if not isinstance(qa, dict):
                raise DataError(path, "expected an object", line=line, field=f"{where}.qas[{j}]", kind="not an object")
            try:
                question = _text(qa, "question", path, line)
                answers = qa.get("answers") or []
                target = UNANSWERABLE
                if answers and not qa.get("is_impossible", False):
                    target = _text(answers[0], "text", path, line) if isinstance(answers[0], dict) else ""
                    if not target:
                        raise DataError(path, "bad first answer", line=line, field="answers", kind="empty answer")
            except DataError as e:  # say which question of the article
                field = f"{where}.qas[{j}].{e.field}"
                raise DataError(path, e.message, line=line, field=field, kind=e.kind) from None
            examples.append({"source": squad_source(question, context), "target": target})
    return examples


def xsum_examples(record: dict, path: str, line: int) -> list[Example]:
    return [{"source": _text(record, "document", path, line), "target": _text(record, "summary", path, line)}]


def code_x_glue_ct_examples(record: dict, path: str, line: int) -> list[Example]:
    source, target = _tokens(record, "code_tokens", path, line), _tokens(record, "docstring_tokens", path, line)
    return [{"source": source, "target": target}]


def _pair_adapter(source_field: str, target_field: str | None) -> Adapter:
    """{"source", "target"} from a record's fields; `target_field=None` reads sources only (target "")."""

    def pair(record: dict, path: str, line: int) -> list[Example]:
        target = "" if target_field is None else _text(record, target_field, path, line)
        return [{"source": _text(record, source_field, path, line), "target": target}]

    return pair


# --- the registry ---------------------------------------------------------------------------------------


def _code2doc(split: str, **options: Any) -> Iterator[Example]:
    from encore.data import code2doc

    return code2doc.load(split, **options)


def _addition(split: str, **options: Any) -> Iterator[Example]:
    from encore.data import addition

    return addition.load(split, **options)


def _synthqa(split: str, **options: Any) -> Iterator[Example]:
    from encore.data import synthqa

    return synthqa.load(split, **options)


HUB_OPTIONS = ("streaming", "revision")
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "squad_v2",
            "SQuAD 2.0 extractive QA: context + question -> answer or 'unanswerable'",
            ("train", "validation"),
            HUB_OPTIONS,
            hub="rajpurkar/squad_v2",
            adapter=squad_v2_examples,
        ),
        Task(
            "xsum",
            "XSum: BBC article -> one-sentence summary",
            ("train", "validation", "test"),
            HUB_OPTIONS,
            hub="EdinburghNLP/xsum",
            adapter=xsum_examples,
        ),
        Task(
            "code_x_glue_ct",
            "CodeXGLUE code-to-text: function code tokens -> docstring tokens",
            ("train", "validation", "test"),
            HUB_OPTIONS + ("language",),
            hub="google/code_x_glue_ct_code_to_text",
            adapter=code_x_glue_ct_examples,
        ),
        Task(
            "code2doc",
            "stdlib function without its docstring -> the docstring's first sentence (offline)",
            ("train", "validation", "test"),
            ("cache_dir", "stdlib", "refresh"),
            builtin=_code2doc,
        ),
        Task(
            "synthqa",
            "generated SQuAD-2-style QA over fictional worlds, 1/3 unanswerable (offline)",
            ("train", "validation", "test"),
            ("size", "seed", "max_entities"),
            builtin=_synthqa,
        ),
        Task(
            "addition",
            "n-digit addition with spaced digits, '4 7 1 + 3 9 2' -> '8 6 3' (offline)",
            ("train", "validation", "test"),
            ("size", "seed", "digits", "offset"),
            builtin=_addition,
        ),
    )
}


def load_sources(
    name_or_path: str | os.PathLike, split: str = "train", limit: int | None = None, **options: Any
) -> Iterator[str]:
    """The source texts of a task's split, or of a file whose records need only the source field (no
    target): the unlabeled inputs a teacher labels for sequence-level distillation."""
    if str(name_or_path) not in TASKS:
        options.setdefault("target_field", None)
    return (e["source"] for e in load_task(name_or_path, split, limit=limit, **options))


def task_names() -> list[str]:
    """The registered task names (a .jsonl / .json / .parquet path is a task too)."""
    return sorted(TASKS)


# --- loading --------------------------------------------------------------------------------------------


def load_task(
    name_or_path: str | os.PathLike,
    split: str = "train",
    data_files: str | os.PathLike | list | dict | None = None,
    **options: Any,
) -> Iterator[Example]:
    """Stream {"source", "target"} dicts of one split of a task (see the module docstring).

    Names, splits, options and data_files are checked now (ValueError listing what is accepted);
    records are read lazily as the iterator is consumed (DataError, a ValueError, on bad records)."""
    name = os.fspath(name_or_path)
    if name in TASKS:
        task = TASKS[name]
    elif name.lower().endswith(SUFFIXES) or Path(name).is_file():
        task = Task(Path(name).name, "source/target pairs from a file", (split,), ("source_field", "target_field"))
    else:
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(task_names())} "
            f"(or a path to a {' / '.join(SUFFIXES)} file of source/target pairs)"
        )
    unknown = sorted(set(options) - set(COMMON_OPTIONS) - set(task.options))
    if unknown:
        allowed = ", ".join(COMMON_OPTIONS + task.options)
        raise ValueError(f"task {task.name!r}: unknown option(s) {', '.join(unknown)}; accepted: {allowed}")
    limit, skip_invalid = options.pop("limit", None), bool(options.pop("skip_invalid", False))
    report = options.pop("report", None)
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer, got {limit!r}")

    if task.builtin is not None:
        if data_files is not None:
            raise ValueError(f"task {name!r} is built in and takes no data_files")
        _check_split(task, split)
        examples = task.builtin(split, **options)
        return _limited(examples, limit)  # generated, never invalid: nothing to skip

    if task.hub is None:  # a file of pairs: the file is the whole (only) split
        if data_files is not None:
            raise ValueError(f"{name}: a file task takes no data_files")
        adapter = _pair_adapter(options.get("source_field", "source"), options.get("target_field", "target"))
        sources = [_file_records(Path(name))]
    elif data_files is None:
        _check_split(task, split)
        sources = [_hub_records(task, split, options)]
        adapter = task.adapter
    else:
        files = _resolve_data_files(name, data_files, split)
        sources = [_file_records(f) if not _is_url(f) else _remote_records(f) for f in files]
        adapter = task.adapter
    return _examples(sources, adapter, limit, skip_invalid, report)


def _check_split(task: Task, split: str) -> None:
    if split not in task.splits:
        raise ValueError(f"task {task.name!r} has no split {split!r}; splits: {', '.join(task.splits)}")


def _is_url(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def _resolve_data_files(task: str, data_files: Any, split: str) -> list[str]:
    if isinstance(data_files, dict):
        if split not in data_files:
            splits = ", ".join(map(str, data_files)) or "none"
            raise ValueError(f"task {task!r}: data_files has no split {split!r}; it has: {splits}")
        data_files = data_files[split]
    if isinstance(data_files, (str, os.PathLike)):
        data_files = [data_files]
    if not isinstance(data_files, (list, tuple)) or not data_files:
        raise ValueError(f"task {task!r}: data_files must be a path, a list of paths or {{split: paths}}")
    files = []
    for f in map(os.fspath, data_files):
        if glob.has_magic(f) and not _is_url(f):
            matches = sorted(glob.glob(f, recursive=True))
            if not matches:
                raise DataError(f, "no file matches this pattern")
            files += matches
        else:
            files.append(f)
    return files


# Each record source is a (label, callable) that yields (line, record) given skip_invalid and a report, so
# that local files, remote files and the hub are consumed the same way (and opened only when reached).
RecordSource = tuple[str, Callable[[bool, SkipReport], Iterator[tuple[int, dict]]]]


def _file_records(path: str | os.PathLike) -> RecordSource:
    # checked now, so a wrong path fails at load_task(), not at the first batch
    if not os.fspath(path).lower().endswith(SUFFIXES):
        raise DataError(path, f"unsupported file type (expected one of {', '.join(SUFFIXES)})")
    if not Path(path).is_file():
        raise DataError(path, "no such file")
    return os.fspath(path), lambda skip, report: iter_records(path, skip_invalid=skip, report=report)


def _hub_records(task: Task, split: str, options: dict) -> RecordSource:
    config = options.get("language", "python") if task.name == "code_x_glue_ct" else None
    streaming, revision = bool(options.get("streaming", False)), options.get("revision")

    def records(skip: bool, report: SkipReport) -> Iterator[tuple[int, dict]]:
        datasets = require("datasets", "data")

        try:
            ds = datasets.load_dataset(task.hub, config, split=split, streaming=streaming, revision=revision)
        except RuntimeError as e:
            # datasets >= 4 runs no loading scripts; the hub keeps a parquet export of such datasets
            if "scripts are no longer supported" not in str(e) or revision is not None:
                raise
            parquet, name = "refs/convert/parquet", config or "default"
            ds = datasets.load_dataset(task.hub, name, split=split, streaming=streaming, revision=parquet)
        yield from enumerate(ds, start=1)

    return f"hf://datasets/{task.hub}/{split}", records


def _remote_records(url: str) -> RecordSource:
    def records(skip: bool, report: SkipReport) -> Iterator[tuple[int, dict]]:
        datasets = require("datasets", "data")

        builder = "parquet" if ".parquet" in url else "json"
        yield from enumerate(datasets.load_dataset(builder, data_files=url, split="train", streaming=True), start=1)

    return url, records


def _examples(
    sources: list[RecordSource], adapter: Adapter, limit: int | None, skip_invalid: bool, report: SkipReport | None
) -> Iterator[Example]:
    own_report = report is None
    report = SkipReport() if report is None else report
    n = 0
    for label, open_records in sources:
        if limit is not None and n >= limit:
            break
        for line, record in open_records(skip_invalid, report):
            try:
                examples = adapter(record, label, line)
            except DataError as e:
                if not skip_invalid:
                    hint = " (skip_invalid=True skips and counts such records)"
                    raise DataError(e.path, e.message + hint, line=e.line, field=e.field, kind=e.kind) from None
                report.add(e)
                continue
            for example in examples:
                if limit is not None and n >= limit:
                    break
                n += 1
                yield example
            if limit is not None and n >= limit:
                break
    if own_report and report:
        warnings.warn(report.summary(), stacklevel=2)


def _limited(examples: Iterable[Example], limit: int | None) -> Iterator[Example]:
    for i, example in enumerate(examples):
        if limit is not None and i >= limit:
            return
        yield example
