"""Image + text tasks for vision-language models: each example is {"image": PIL image, "source",
"target"} (+ "question_type" where the task has one).

    load_vqa("shapesvqa", split="train", size=2000)     # embedded, offline (encore.data.shapesvqa)
    load_vqa("vqa.jsonl")                               # any VQA / captioning set as JSON Lines

A JSONL record is {"image": path, "question" | "source": text, "answer" | "target": text}; a relative
image path is relative to the JSONL file's folder. A bad record or an image Pillow cannot read is a
`DataError` naming the file, the line and the field. Images are read when the example is, and
converted to RGB; the tower's preprocessing (`encore.vision.preprocess`) runs in the collator.

`VisionCollator` wraps a text collator: it puts the model's `k` `<image>` placeholders in front of
each source and adds the batch's `pixel_values` [B, 3, S, S].
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from encore.data.records import DataError, SkipReport, iter_records, require_field

VISION_TASKS = ("shapesvqa",)
VQA_OPTIONS = ("limit", "skip_invalid", "report", "size", "seed", "image_size")


def is_vision_task(name: str | os.PathLike) -> bool:
    """A built-in image task (a file may be one too: `load_vqa` reads it as such when asked)."""
    return os.fspath(name) in VISION_TASKS


def _field(record: dict, names: tuple[str, str], path: Path, line: int) -> str:
    name = names[0] if names[0] in record else names[1]
    value = require_field(record, name, path, line, str)
    if not value.strip():
        raise DataError(path, "is empty", line=line, field=name)
    return value


def read_image(image_path: Path, path: str | os.PathLike, line: int | None = None) -> Any:
    """An RGB PIL image, or a DataError naming the record (`path`, `line`) or flag (`path` alone)
    that points at it."""
    from PIL import Image, UnidentifiedImageError

    field = None if line is None else "image"
    try:
        with Image.open(image_path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(path, f"no such image file {str(image_path)!r}", line=line, field=field) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(path, f"cannot read image {str(image_path)!r} ({e})", line=line, field=field) from None


def read_vqa_file(
    path: str | os.PathLike, skip_invalid: bool = False, report: SkipReport | None = None
) -> Iterator[dict[str, Any]]:
    """{"image", "source", "target"} examples of a .jsonl / .json / .parquet file of image records."""
    path = Path(path)
    own = report is None
    report = SkipReport() if report is None else report
    for line, record in iter_records(path, skip_invalid=skip_invalid, report=report):
        try:
            image_field = require_field(record, "image", path, line, str)
            source = _field(record, ("question", "source"), path, line)
            target = _field(record, ("answer", "target"), path, line)
            image_path = Path(image_field).expanduser()
            image = read_image(image_path if image_path.is_absolute() else path.parent / image_path, path, line)
        except DataError as e:
            if not skip_invalid:
                raise
            report.add(e)
            continue
        yield {"image": image, "source": source, "target": target}
    if own and report:
        import warnings

        warnings.warn(f"{path}: {report.summary()}", stacklevel=2)


def load_vqa(name_or_path: str | os.PathLike, split: str = "train", **options: Any) -> Iterator[dict[str, Any]]:
    """Examples of an image task: "shapesvqa" (options `size`, `seed`, `image_size`) or a file of
    image records (the file is its one split). Options are checked now, records read lazily."""
    name = os.fspath(name_or_path)
    unknown = sorted(set(options) - set(VQA_OPTIONS))
    if unknown:
        raise ValueError(f"task {name!r}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(VQA_OPTIONS)}")
    limit = options.pop("limit", None)
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
    if name == "shapesvqa":
        from encore.data import shapesvqa

        generated = {k: v for k, v in options.items() if k in ("size", "seed", "image_size") and v is not None}
        if limit is not None:
            generated["size"] = min(limit, generated.get("size", shapesvqa.SPLITS.get(split, limit)))
        return shapesvqa.load(split, **generated)
    if not Path(name).is_file():
        raise ValueError(f"unknown image task {name!r}: the built-in one is shapesvqa, or give a .jsonl file")
    examples = read_vqa_file(name, bool(options.get("skip_invalid")), options.get("report"))
    return examples if limit is None else (e for i, e in zip(range(limit), examples))


class VisionCollator:
    """A text collator's batch + `pixel_values`, with an image's block of ids (`VisionLanguageModel.
    image_block`: its placeholders, between start / end tokens where the model has them) before each
    source. Examples: {"source_ids", "target_ids", "image"} (images as PIL)."""

    def __init__(self, text_collator: Callable, preprocess: Callable[[list], Any], image_block: list[int]):
        self.text, self.preprocess = text_collator, preprocess
        self.placeholders = list(image_block)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        for i, e in enumerate(examples):
            if "image" not in e:
                raise ValueError(f"example #{i} of the batch has no 'image' (it has {sorted(e)})")
        batch = self.text([{**e, "source_ids": [*self.placeholders, *e["source_ids"]]} for e in examples])
        batch["pixel_values"] = self.preprocess([e["image"] for e in examples])
        return batch
