"""Batch sources for the training loop: where each global batch of examples comes from.

`TaskSource` serves tokenized (source, target) pairs, reshuffled each epoch with a seeded
permutation; `StreamSource` serves a resumable stream of packed pretraining examples. Both report
their position (`state_dict`) so a resumed run continues on exactly the data it would have seen.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encore.train import Batch


class TaskSource:
    """Tokenized examples, in a seeded order that is reshuffled at every epoch (or kept in file
    order with `shuffle=False`, e.g. for validation, where the stream ends after one pass)."""

    def __init__(
        self,
        examples: list[dict[str, Any]],
        collate: Callable[[list[Any]], Batch],
        seed: int = 0,
        shuffle: bool = True,
        repeat: bool = True,
    ):
        if not examples:
            raise ValueError("the task has no examples")
        self.examples, self.collate_fn = examples, collate
        self.seed, self.shuffle, self.repeat = seed, shuffle, repeat
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.examples))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def next_batch(self, size: int) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        while len(batch) < size:
            if self.index == len(self.examples):
                if not self.repeat:
                    break
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            batch.append(self.examples[self._order[self.index]])
            self.index += 1
        return batch

    def collate(self, examples: list[Any]) -> Batch:
        return self.collate_fn(examples)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation(self.epoch)


class StreamSource:
    """A resumable stream of ready examples (e.g. packed span-corruption pairs). `stream` must
    offer `state_dict()` / `load_state_dict()`; iteration continues from the restored position."""

    def __init__(self, stream: Iterable[Any], collate: Callable[[list[Any]], Batch]):
        self.stream, self.collate_fn = stream, collate
        self._iter = iter(stream)

    def next_batch(self, size: int) -> list[Any]:
        batch = []
        for example in self._iter:
            batch.append(example)
            if len(batch) == size:
                break
        return batch

    def collate(self, examples: list[Any]) -> Batch:
        return self.collate_fn(examples)

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)
        self._iter = iter(self.stream)


class WithExampleIds:
    """A collator whose batches also carry `example_ids` (the offline teacher store is keyed by them)."""

    def __init__(self, collator: Callable[[list[Any]], Batch]):
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> Batch:
        batch = self.collator(examples)
        batch["example_ids"] = torch.tensor([e["example_id"] for e in examples])
        return batch


# --- distillation: gold, teacher-generated and on-policy targets ---------------------------------------

TARGET_SOURCES = ("gold", "teacher", "student")


def _is_main_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def parse_target_mix(spec: str) -> dict[str, float]:
    """ "gold" | "teacher" | "student" | "gold=0.5,student=0.5" -> probabilities that sum to 1."""
    mix: dict[str, float] = {}
    for part in spec.split(","):
        name, _, weight = part.strip().partition("=")
        if name not in TARGET_SOURCES:
            raise ValueError(
                f"--targets {spec!r}: unknown target source {name!r} (choose from {', '.join(TARGET_SOURCES)})"
            )
        try:
            mix[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--targets {spec!r}: {weight!r} is not a probability") from None
        if mix[name] < 0:
            raise ValueError(f"--targets {spec!r}: negative weight for {name}")
    total = sum(mix.values())
    if total <= 0:
        raise ValueError(f"--targets {spec!r}: the weights sum to 0")
    return {k: v / total for k, v in mix.items()}


class DistillSource:
    """A `TaskSource` of {"source_ids", "target_ids", "example_id"} whose targets are drawn per example
    from `mix`: the gold target, the teacher's own greedy continuation (generated once in batches,
    cached on disk under `cache_dir`, reused across epochs and resumes) or the student's current
    greedy output (on-policy: generated in one batch per global batch with the cached `generate`).
    The draws are seeded by (seed, draw counter), so a resumed run draws the same targets."""

    def __init__(
        self,
        inner: TaskSource,
        mix: dict[str, float],
        *,
        teacher: Any = None,
        student: Any = None,
        max_new_tokens: int = 64,
        cache_dir: str | Path | None = None,
        seed: int = 0,
    ):
        if mix.get("teacher") and teacher is None:
            raise ValueError("teacher-generated targets need the teacher")
        if mix.get("student") and student is None:
            raise ValueError("on-policy targets need the student")
        self.inner, self.teacher, self.student = inner, teacher, student
        self.names, self.probs = list(mix), np.array(list(mix.values()))
        self.max_new_tokens, self.seed, self.draws = max_new_tokens, seed, 0
        self.cache_file = Path(cache_dir) / "targets.jsonl" if cache_dir is not None else None
        self.teacher_targets: dict[int, list[int]] = self._read_cache()

    def _read_cache(self) -> dict[int, list[int]]:
        if self.cache_file is None or not self.cache_file.exists():
            return {}
        cached = {}
        for line in self.cache_file.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut short by a crash: regenerated (greedy decoding gives the same again)
            cached[int(record["example_id"])] = record["target_ids"]
        return cached

    def _choose(self, n: int) -> list[str]:
        if len(self.names) == 1:
            return self.names * n
        rng = np.random.default_rng([self.seed, self.draws])
        return [self.names[i] for i in rng.choice(len(self.names), size=n, p=self.probs)]

    def next_batch(self, size: int) -> list[dict[str, Any]]:
        examples = self.inner.next_batch(size)
        choices = self._choose(len(examples))
        self.draws += 1
        return self.apply_targets(examples, choices)

    def apply_targets(self, examples: list[dict[str, Any]], choices: list[str]) -> list[dict[str, Any]]:
        out = [dict(e) for e in examples]
        want_teacher = [e for e, c in zip(out, choices) if c == "teacher"]
        self._fill_teacher_cache([e for e in want_teacher if e["example_id"] not in self.teacher_targets])
        for e in want_teacher:
            e["target_ids"] = self.teacher_targets[e["example_id"]]
        want_student = [e for e, c in zip(out, choices) if c == "student"]
        if want_student:
            for e, ids in zip(want_student, self._generate(self.student, want_student, teacher=False)):
                e["target_ids"] = ids
        return out

    def _fill_teacher_cache(self, examples: list[dict[str, Any]]) -> None:
        if not examples:
            return
        new = self._generate(self.teacher, examples, teacher=True)
        lines = []
        for e, ids in zip(examples, new):
            self.teacher_targets[e["example_id"]] = ids
            lines.append(json.dumps({"example_id": e["example_id"], "target_ids": ids}))
        if self.cache_file is not None and _is_main_process():  # every rank generates the same; one writes
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.cache_file, "a") as f:
                f.write("\n".join(lines) + "\n")
                f.flush()
                os.fsync(f.fileno())

    @torch.no_grad()
    def _generate(self, model: Any, examples: list[dict[str, Any]], teacher: bool) -> list[list[int]]:
        """Greedy targets (without EOS; the collator appends it) for the examples' sources, laid out as
        the student's encoder reads them (x + [EOS])."""
        collator = getattr(self.inner.collate_fn, "collator", self.inner.collate_fn)
        batch = collator([{"source_ids": e["source_ids"], "target_ids": []} for e in examples])
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if teacher:
            from encore.distill import generate_teacher_targets

            device = next(self.teacher.parameters()).device
            new, new_mask = generate_teacher_targets(
                self.teacher, ids.to(device), mask.to(device), max_new_tokens=self.max_new_tokens
            )
            new, new_mask = new.cpu(), new_mask.cpu()
            eos = getattr(self.teacher.tokenizer, "eos_token_id", None)
            if eos is None and self.teacher.is_encore:
                eos = self.teacher.model.config.eos_token_id
        else:
            was_training = model.training
            model.eval()
            device = next(model.parameters()).device
            new = model.generate(ids.to(device), mask.to(device), max_new_tokens=self.max_new_tokens).cpu()
            model.train(was_training)
            new_mask = torch.ones_like(new)
            eos = model.config.eos_token_id
        targets = []
        for row, row_mask in zip(new.tolist(), new_mask.tolist()):
            row = [t for t, m in zip(row, row_mask) if m]
            targets.append(row[: row.index(eos)] if eos in row else row)
        return targets

    def all_batches(self, micro: int, device: str | torch.device = "cpu") -> Iterator[Batch]:
        """Every training example once, in file order, with its fixed target (gold or teacher's): what
        the offline teacher store is computed over."""
        if "student" in self.names:
            raise ValueError("on-policy targets change as the student learns: no fixed set to precompute")
        examples = self.inner.examples
        for start in range(0, len(examples), micro):
            chunk = examples[start : start + micro]
            choices = ["teacher" if "teacher" in self.names else "gold"] * len(chunk)
            batch = self.inner.collate(self.apply_targets(chunk, choices))
            yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def collate(self, examples: list[Any]) -> Batch:
        return self.inner.collate(examples)

    def state_dict(self) -> dict[str, Any]:
        return {**self.inner.state_dict(), "draws": self.draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
        self.draws = int(state["draws"])
