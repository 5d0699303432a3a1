"""The offline teacher: its top-k log-probs per target token, computed once and kept on disk as
safetensors shards (`TopKWriter`, `TopKStore`, `precompute_topk`), so the teacher runs once however
many epochs the student trains."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from encore.distill.align import batch_teacher_logits, right_padded_lengths
from encore.distill.divergence import NEG_INF, SparseLogits, topk_teacher_logits
from encore.distill.errors import DistillError
from encore.files import atomic_write

TOPK_FORMAT = "encore-topk-v1"
TOPK_INDEX = "topk-index.json"


class TopKWriter:
    """Writes `SparseLogits` of many batches to ``directory`` as safetensors shards (no pickle), each
    written atomically; the index file is written last, by `close`, so a store without it is known to
    be incomplete. Per shard, tokens are stored flat: ``values`` [N, k], ``indices`` [N, k] int32,
    ``tail`` [N] fp32, ``targets`` [N] int32, with ``example_ids`` [E] and ``offsets`` [E + 1]."""

    def __init__(
        self, directory: str | Path, *, shard_tokens: int = 1 << 20, values_dtype: torch.dtype = torch.float16
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if (self.directory / TOPK_INDEX).exists():
            raise DistillError(f"{self.directory / TOPK_INDEX}: a top-k store is already here; remove it first")
        self.shard_tokens, self.values_dtype = shard_tokens, values_dtype
        self.meta: dict[str, Any] | None = None
        self.shards: list[dict[str, Any]] = []
        self._pending: list[tuple[int, Tensor, Tensor, Tensor, Tensor]] = []
        self._pending_tokens = 0
        self._seen: set[int] = set()

    def add(self, sparse: SparseLogits, mask: Tensor, example_ids: Sequence[int] | Tensor) -> None:
        """Store each row's masked (right-padded) positions under its example id."""
        ids = [int(i) for i in example_ids]
        lengths = right_padded_lengths(sparse.tail_logmass, mask, "target")
        if len(ids) != sparse.values.shape[0]:
            raise DistillError(f"{len(ids)} example ids for a batch of {sparse.values.shape[0]}")
        meta = {"k": sparse.k, "temperature": sparse.temperature}
        if self.meta is None:
            self.meta = {**meta, "vocab_limit": sparse.vocab_limit}
        elif {k: self.meta[k] for k in meta} != meta:
            raise DistillError(f"this store holds k/temperature {self.meta}, the new batch has {meta}")
        # a batch whose targets never reach the last shared ids may see a smaller limit: keep the largest
        self.meta["vocab_limit"] = max(self.meta["vocab_limit"], sparse.vocab_limit)
        targets = sparse.targets if sparse.targets is not None else torch.full(sparse.tail_logmass.shape, -1)
        for b, (i, n) in enumerate(zip(ids, lengths.tolist())):
            if i in self._seen:
                raise DistillError(f"example id {i} was already stored")
            self._seen.add(i)
            self._pending.append(
                (
                    i,
                    sparse.values[b, :n].to("cpu", self.values_dtype),
                    sparse.indices[b, :n].to("cpu", torch.int32),
                    sparse.tail_logmass[b, :n].to("cpu", torch.float32),
                    targets[b, :n].to("cpu", torch.int32),
                )
            )
            self._pending_tokens += n
        if self._pending_tokens >= self.shard_tokens:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        from safetensors.torch import save_file

        ids, values, indices, tails, targets = zip(*self._pending)
        offsets = torch.tensor([0] + [v.shape[0] for v in values]).cumsum(0)
        state = {
            "example_ids": torch.tensor(ids, dtype=torch.int64),
            "offsets": offsets.to(torch.int64),
            "values": torch.cat(values).contiguous(),
            "indices": torch.cat(indices).contiguous(),
            "tail": torch.cat(tails).contiguous(),
            "targets": torch.cat(targets).contiguous(),
        }
        name = f"topk-{len(self.shards):05d}.safetensors"
        atomic_write(self.directory / name, lambda p: save_file(state, p, metadata={"format": TOPK_FORMAT}))
        self.shards.append({"file": name, "examples": len(ids), "tokens": int(offsets[-1])})
        self._pending, self._pending_tokens = [], 0

    def close(self) -> Path:
        self._flush()
        if self.meta is None:
            raise DistillError(f"{self.directory}: nothing was added to the top-k store")
        index = {
            "format": TOPK_FORMAT,
            **self.meta,
            "values_dtype": str(self.values_dtype).removeprefix("torch."),
            "shards": self.shards,
        }
        text = json.dumps(index, indent=2) + "\n"
        atomic_write(self.directory / TOPK_INDEX, lambda p: Path(p).write_text(text))
        return self.directory

    def __enter__(self) -> TopKWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()


class TopKStore:
    """Reads a store written by `TopKWriter`; shards are memory-mapped, rows read on demand."""

    def __init__(self, directory: str | Path):
        from safetensors import safe_open

        self.directory = Path(directory)
        index_file = self.directory / TOPK_INDEX
        if not index_file.exists():
            raise DistillError(f"{index_file}: missing; no finished top-k store here (was the precompute completed?)")
        index = json.loads(index_file.read_text())
        if index.get("format") != TOPK_FORMAT:
            raise DistillError(f"{index_file}: format {index.get('format')!r}, expected {TOPK_FORMAT!r}")
        self.k, self.temperature, self.vocab_limit = (
            int(index["k"]),
            float(index["temperature"]),
            int(index["vocab_limit"]),
        )
        self._files = []
        self._where: dict[int, tuple[int, int, int]] = {}
        for s, shard in enumerate(index["shards"]):
            path = self.directory / shard["file"]
            if not path.exists():
                raise DistillError(f"{path}: shard listed in {index_file} is missing")
            f = safe_open(str(path), framework="pt")
            self._files.append(f)
            offsets = f.get_tensor("offsets").tolist()
            for e, i in enumerate(f.get_tensor("example_ids").tolist()):
                self._where[i] = (s, offsets[e], offsets[e + 1])

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, example_id: int) -> bool:
        return int(example_id) in self._where

    def __getitem__(self, example_id: int) -> dict[str, Tensor]:
        if int(example_id) not in self._where:
            raise KeyError(f"example id {example_id} is not in the top-k store {self.directory}")
        s, a, b = self._where[int(example_id)]
        f = self._files[s]
        return {name: f.get_slice(name)[a:b] for name in ("values", "indices", "tail", "targets")}

    def batch(
        self, example_ids: Sequence[int] | Tensor, length: int, device: torch.device | str = "cpu"
    ) -> SparseLogits:
        """`SparseLogits` [B, length, k] for these examples, right-padded (targets −100 at padding)."""
        ids = [int(i) for i in example_ids]
        B = len(ids)
        values = torch.zeros(B, length, self.k)
        indices = torch.zeros(B, length, self.k, dtype=torch.int32)
        tail = torch.full((B, length), NEG_INF)
        targets = torch.full((B, length), -100, dtype=torch.long)
        for b, i in enumerate(ids):
            row = self[i]
            n = row["tail"].shape[0]
            if n > length:
                raise DistillError(f"example {i} has {n} stored target tokens, the batch only {length} positions")
            values[b, :n], indices[b, :n], tail[b, :n] = row["values"].float(), row["indices"], row["tail"]
            targets[b, :n] = row["targets"].long()
        return SparseLogits(values, indices, tail, self.temperature, self.vocab_limit, targets).to(device)


def check_sparse_targets(sparse: SparseLogits, target_ids: Tensor, target_mask: Tensor) -> None:
    """Refuse stored top-k logits computed for other targets (different data, order or tokenization).
    ``sparse.targets``: −100 where nothing is stored, −1 where the token was not recorded."""
    if sparse.targets is None:
        return
    m = target_mask.bool()
    stored = sparse.targets.to(target_ids.device)
    covered = stored != -100
    if not torch.equal(covered, m):
        row = int((covered != m).any(1).nonzero()[0])
        raise DistillError(
            f"row {row}: the stored teacher top-k covers {int(covered[row].sum())} target tokens, the batch has "
            f"{int(m[row].sum())}: the store belongs to other data or tokenization"
        )
    bad = (stored != target_ids) & m & (stored >= 0)
    if bool(bad.any()):
        b, j = bad.nonzero()[0].tolist()
        raise DistillError(
            f"row {b}, target {j}: the stored teacher top-k was computed for token {int(stored[b, j])}, the batch "
            f"has {int(target_ids[b, j])}: the store belongs to other data or tokenization"
        )


def precompute_topk(
    teacher: nn.Module,
    batches: Iterable[dict[str, Tensor]],
    directory: str | Path,
    *,
    k: int,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    valid_vocab: int | None = None,
    teacher_bos_id: int | None | Literal["auto"] = "auto",
    values_dtype: torch.dtype = torch.float16,
    shard_tokens: int = 1 << 20,
    targets: Callable[[dict[str, Tensor]], tuple[Tensor, Tensor, Tensor]] | None = None,
) -> TopKStore:
    """Run the teacher once over ``batches`` (dicts with ``input_ids``, ``attention_mask``, ``labels``
    (−100 at padding) and ``example_ids``) and store its top-k per target token under ``directory``.
    ``targets(batch) -> (teacher logits [B, T, V], labels [B, T], mask)``: where a student's targets are
    not an encoder-decoder batch's ``labels`` (a decoder-only student: `CausalDistillLoss.teacher_targets`)."""
    with TopKWriter(directory, shard_tokens=shard_tokens, values_dtype=values_dtype) as writer:
        for batch in batches:
            if targets is not None:
                logits, labels, mask = targets(batch)
            else:
                labels = batch["labels"]
                mask = labels != -100
                logits = batch_teacher_logits(
                    teacher,
                    batch,
                    labels,
                    mask,
                    vocab_size=vocab_size,
                    valid_vocab=valid_vocab,
                    teacher_bos_id=teacher_bos_id,
                )
            sparse = topk_teacher_logits(
                logits, mask, k, temperature=temperature, targets=labels.masked_fill(~mask, -1)
            )
            writer.add(sparse, mask, batch["example_ids"])
    return TopKStore(directory)
