"""Where a distillation run's targets come from: gold, the teacher's own continuation (sequence-level
KD, generated once and cached on disk; also the labels of unlabeled sources) or the student's current
sampled output (on-policy, GKD: KD on the sample, CE on gold), mixed per example with seeded draws so a
resumed run draws the same targets."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from encore.data.collate import Batch, pad_rows, rows_mask
from encore.data.sources import TaskSource
from encore.distill.align import teacher_layout, teacher_sources
from encore.distill.causal_loss import seq2seq_sources
from encore.distill.errors import DistillError
from encore.distill.seq2seq_teacher import Seq2SeqTeacher
from encore.distill.teacher import Teacher
from encore.train.dist import is_main_process
from encore.train.losses import IGNORE

Collator = Callable[[list[dict[str, Any]]], Batch]


@torch.no_grad()
def generate_teacher_targets(
    teacher: Teacher | Seq2SeqTeacher,
    source_ids: Tensor,
    source_mask: Tensor | None,
    *,
    max_new_tokens: int,
    eos_id: int | None = None,
    teacher_bos_id: int | None | Literal["auto"] = "auto",
    **generate_kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """The teacher's own continuation of each source: ``(target_ids, target_mask)`` [B, ≤ max_new_tokens],
    right-padded, each row ending with its first EOS (kept) or cut at ``max_new_tokens``. Uses the
    teacher's KV-cached ``generate``; ids outside the shared vocabulary are suppressed (or, for a
    teacher that cannot suppress them, refused). Extra keyword arguments go to ``generate`` (e.g.
    ``do_sample``, ``temperature``)."""
    eos = eos_id if eos_id is not None else teacher.eos_id
    if isinstance(teacher, Seq2SeqTeacher):  # reads the source as the student does; new tokens only
        new = teacher.model.generate(
            source_ids, source_mask, max_new_tokens=max_new_tokens, eos_token_id=eos, **generate_kwargs
        )
    elif isinstance(teacher, Teacher):
        bos = teacher.bos_id if teacher_bos_id == "auto" else teacher_bos_id
        source_ids, source_mask = teacher_sources(teacher, source_ids, source_mask)
        empty = source_ids[:, :0]
        ids, mask, _, start = teacher_layout(source_ids, source_mask, empty, None, bos_id=bos, pad_id=teacher.pad_id)
        if teacher.valid_vocab < teacher.vocab_size:
            generate_kwargs.setdefault("suppress_tokens", list(range(teacher.valid_vocab, teacher.vocab_size)))
        out = teacher.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=teacher.pad_id,
            eos_token_id=eos,
            **generate_kwargs,
        )
        new = out[:, start:]
    else:
        raise DistillError("generate_teacher_targets needs a Teacher (see load_teacher / Teacher(model))")
    eos_ids = torch.as_tensor(eos if isinstance(eos, (list, tuple)) else [eos], device=new.device)
    is_eos = torch.isin(new, eos_ids) if eos is not None else torch.zeros_like(new, dtype=torch.bool)
    target_mask = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # up to and including the first EOS
    if bool((new[target_mask] >= teacher.valid_vocab).any()):
        raise DistillError(f"the teacher generated ids outside the shared vocabulary [0, {teacher.valid_vocab})")
    keep = int(target_mask.sum(1).max()) if new.numel() else 0
    return new[:, :keep].masked_fill(~target_mask[:, :keep], teacher.pad_id), target_mask[:, :keep].long()


TARGET_SOURCES = ("gold", "teacher", "student")


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
    from `mix`:

    - ``gold``: the example's target;
    - ``teacher``: the teacher's own greedy continuation (sequence-level KD), generated once in
      batches, cached on disk under `cache_dir`, reused across epochs and resumes;
    - ``student`` (on-policy, GKD): the student's current output, *sampled* at `sample_temperature`
      (0: greedy) in one batch per global batch. It goes to ``kd_target_ids``: the divergence is taken
      on it (`DistillLoss`) while ``target_ids`` keeps the gold target for cross-entropy.

    Examples marked ``"unlabeled": True`` (sources without a target, `--unlabeled`) take the teacher's
    continuation as their gold target: the teacher labels them (`prepare` labels them all up front).
    The draws (and the samples' seeds) follow (seed, draw counter), so a resumed run draws the same.
    """

    def __init__(
        self,
        inner: TaskSource,
        mix: dict[str, float],
        *,
        collator: Collator,
        teacher: Teacher | None = None,
        student: Any = None,
        max_new_tokens: int = 64,
        cache_dir: str | Path | None = None,
        seed: int = 0,
        sample_temperature: float = 1.0,
    ):
        unlabeled = any(e.get("unlabeled") for e in inner.examples)
        if (mix.get("teacher") or unlabeled) and teacher is None:
            raise ValueError("teacher-generated targets (and unlabeled sources) need the teacher")
        if mix.get("student") and student is None:
            raise ValueError("on-policy targets need the student")
        if sample_temperature < 0:
            raise ValueError(f"the on-policy sampling temperature must be >= 0, got {sample_temperature}")
        self.inner, self.collator, self.teacher, self.student = inner, collator, teacher, student
        self.names, self.probs = list(mix), np.array(list(mix.values()))
        self.max_new_tokens, self.seed, self.draws = max_new_tokens, seed, 0
        self.sample_temperature = sample_temperature
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

    def prepare(self, batch_size: int = 64) -> int:
        """Label every unlabeled example with the teacher now (in batches; cached): returns how many
        were generated (0 when the cache already held them all)."""
        todo = [e for e in self.inner.examples if e.get("unlabeled") and e["example_id"] not in self.teacher_targets]
        for start in range(0, len(todo), batch_size):
            self._fill_teacher_cache(todo[start : start + batch_size])
        return len(todo)

    def _choose(self, n: int) -> list[str]:
        if len(self.names) == 1:
            return self.names * n
        rng = np.random.default_rng([self.seed, self.draws])
        return [self.names[i] for i in rng.choice(len(self.names), size=n, p=self.probs)]

    def next_batch(self, size: int) -> list[dict[str, Any]]:
        examples = self.inner.next_batch(size)
        choices = self._choose(len(examples))
        out = self.apply_targets(examples, choices)
        self.draws += 1
        return out

    def apply_targets(self, examples: list[dict[str, Any]], choices: list[str]) -> list[dict[str, Any]]:
        out = [dict(e) for e in examples]
        unlabeled = [e for e in out if e.get("unlabeled")]
        want_teacher = [e for e, c in zip(out, choices) if c == "teacher" and not e.get("unlabeled")]
        self._fill_teacher_cache([e for e in unlabeled + want_teacher if e["example_id"] not in self.teacher_targets])
        for e in unlabeled + want_teacher:
            e["target_ids"] = self.teacher_targets[e["example_id"]]
        want_student = [e for e, c in zip(out, choices) if c == "student"]
        if want_student:
            for e, ids in zip(want_student, self._generate(self.student, want_student, teacher=False)):
                e["kd_target_ids"] = ids
        return out

    def _fill_teacher_cache(self, examples: list[dict[str, Any]]) -> None:
        if not examples:
            return
        new = self._generate(self.teacher, examples, teacher=True)
        lines = []
        for e, ids in zip(examples, new):
            self.teacher_targets[e["example_id"]] = ids
            lines.append(json.dumps({"example_id": e["example_id"], "target_ids": ids}))
        if self.cache_file is not None and is_main_process():  # every rank generates the same; one writes
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.cache_file, "a") as f:
                f.write("\n".join(lines) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def _prompts(self, examples: list[dict[str, Any]]) -> tuple[Tensor, Tensor]:
        """The examples' sources as the student reads them, right-padded ``(ids, mask)`` [B, S]: an
        encoder-decoder's encoder input, or a decoder-only prompt (``[BOS] x [EOS]``, before its target)."""
        batch = self.collator([{"source_ids": e["source_ids"], "target_ids": []} for e in examples])
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if "decoder_input_ids" not in batch:  # decoder-only rows end with the empty target's EOS: cut it
            mask = mask * (batch["labels"] == IGNORE)
            ids = ids.masked_fill(mask == 0, self.collator.pad_id)
        return ids, mask

    def _teacher_prompts(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """An encoder-decoder teacher of a decoder-only student reads each prompt's source in its own layout."""
        if not isinstance(self.teacher, Seq2SeqTeacher) or getattr(self.collator, "arch", "encdec") == "encdec":
            return ids, mask
        prompts = [row[: int(n)] for row, n in zip(ids.tolist(), mask.sum(1).tolist())]
        sources = seq2seq_sources(self.teacher.model.config, prompts, self.collator.source_layout)
        return pad_rows(sources, self.teacher.model.config.pad_token_id), rows_mask(sources)

    @torch.no_grad()
    def _generate(self, model: Any, examples: list[dict[str, Any]], teacher: bool) -> list[list[int]]:
        """Targets (without EOS; the collator appends it) for the examples' sources, as the student
        reads them: the teacher's greedy, the student's sampled."""
        ids, mask = self._prompts(examples)
        if teacher:
            device = next(self.teacher.parameters()).device
            ids, mask = self._teacher_prompts(ids, mask)
            new, new_mask = generate_teacher_targets(
                self.teacher, ids.to(device), mask.to(device), max_new_tokens=self.max_new_tokens
            )
            new, new_mask, eos = new.cpu(), new_mask.cpu(), self.teacher.eos_id
        else:
            device = next(model.parameters()).device
            sampling = (
                {"do_sample": True, "temperature": self.sample_temperature, "seed": self.seed * 1_000_003 + self.draws}
                if self.sample_temperature > 0
                else {}
            )
            new = model.generate(ids.to(device), mask.to(device), max_new_tokens=self.max_new_tokens, **sampling)
            new, new_mask, eos = new.cpu(), torch.ones_like(new, device="cpu"), model.config.eos_token_id
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
        """The inner collator's batch; with on-policy samples among the examples, also the KD
        sequences (``kd_decoder_input_ids``, ``kd_decoder_attention_mask``, ``kd_labels``: the sample,
        or the example's own target where it has none) for `DistillLoss`; a decoder-only student's
        whole rows (``kd_input_ids``, ``kd_attention_mask``, ``kd_labels``) for `CausalDistillLoss`."""
        batch = self.inner.collate(examples)
        if any("kd_target_ids" in e for e in examples):
            kd = self.inner.collate([{**e, "target_ids": e.get("kd_target_ids", e["target_ids"])} for e in examples])
            causal = "decoder_input_ids" not in kd  # a decoder-only student's KD rows are whole rows
            rows = ("input_ids", "attention_mask") if causal else ("decoder_input_ids", "decoder_attention_mask")
            for key in (*rows, "labels"):
                batch["kd_" + key] = kd[key]
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {**self.inner.state_dict(), "draws": self.draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
        self.draws = int(state["draws"])
