"""Data: tokenized corpora for pretraining, span corruption, fine-tuning tasks, batches.

    from encore.data import open_corpus, pretraining_stream, pretraining_collator   # pretraining
    from encore.data import load_task, tokenize_pairs, finetune_collator             # fine-tuning
    from encore.data import span_corrupt                                            # T5 span corruption

Names are imported on first use (`__getattr__`), so `import encore.data` stays cheap and a module
needs only its own dependencies (corpora: none; collate: torch; tasks: the hub loaders).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "encore.data.tasks": ("load_task", "task_names", "TASKS"),
    "encore.data.records": ("DataError", "SkipReport", "iter_records"),
    "encore.data.corpora": ("Corpus", "FileCorpus", "StdlibCorpus", "HFCorpus", "open_corpus", "parse_hf_spec"),
    "encore.data.packing": ("TokenStream",),
    "encore.data.sources": ("TaskSource", "StreamSource", "WithExampleIds"),
    "encore.data.vocab": ("default_tokenizer",),
    "encore.tokenizer": ("special_ids",),
    "encore.data.span_corruption": (
        "span_corrupt",
        "random_spans_noise_mask",
        "random_spans_helper",
        "reconstruct",
        "SpanCorruptionStream",
        "CausalLMStream",
        "pretraining_stream",
    ),
    "encore.data.collate": (
        "Batch",
        "Seq2SeqCollator",
        "CausalLMCollator",
        "TruncationError",
        "TruncationStats",
        "finetune_collator",
        "pretraining_collator",
        "prompt_ids",
        "tokenize_pairs",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'encore.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
