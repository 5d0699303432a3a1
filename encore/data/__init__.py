"""Data: tokenized corpora for pretraining, span corruption, fine-tuning tasks, batches.

    from encore.data import open_corpus, pretraining_stream, pretraining_collator   # pretraining
    from encore.data import load_task, tokenize_pairs, finetune_collator             # fine-tuning
    from encore.data import span_corrupt                                            # T5 span corruption

Names are imported on first use (`__getattr__`), so `import encore.data` stays cheap and a module
needs only its own dependencies (corpora: none; collate: torch; tasks: the hub loaders).
"""

from __future__ import annotations

from encore.lazy import lazy_exports

_EXPORTS = {
    "encore.data.tasks": ("load_task", "load_sources", "task_names", "TASKS"),
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
    ),
    "encore.data.objectives": ("PrefixLMStream", "UL2Stream", "OBJECTIVES", "pretraining_stream"),
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


__getattr__, __dir__ = lazy_exports(__name__, globals(), _WHERE)
