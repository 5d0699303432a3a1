"""Batch sources for the training loop: where each global batch of examples comes from.

`TaskSource` serves tokenized (source, target) pairs, reshuffled each epoch with a seeded
permutation; `StreamSource` serves a resumable stream of packed pretraining examples. Both report
their position (`state_dict`) so a resumed run continues on exactly the data it would have seen.
Distillation's source, whose targets may come from the teacher or the student, is
`encore.distill.targets.DistillSource`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from encore.data.collate import Batch


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
