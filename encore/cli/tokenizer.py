"""`encore tokenizer`: train a byte-level BPE (with T5 sentinels) on a corpus and save it."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", default="stdlib", help="stdlib, a file or folder (.txt/.jsonl/.parquet), hf:NAME...")
    p.add_argument("--text-field", default="text", help="the text field of JSONL / Parquet / hub records")
    p.add_argument("--vocab-size", type=int, default=32000, help="ids in all, special tokens included")
    p.add_argument("--max-chars", type=int, default=200_000_000, help="stop reading the corpus after this many")
    p.add_argument("--out", required=True, help="output directory (tokenizer.json, AutoTokenizer-loadable)")


def run(args: argparse.Namespace) -> int:
    from encore.data.corpora import open_corpus
    from encore.tokenizer import train_tokenizer

    corpus = open_corpus(args.corpus, text_field=args.text_field)
    tokenizer = train_tokenizer(corpus, args.vocab_size, max_chars=args.max_chars)
    tokenizer.save_pretrained(args.out)
    print(f"{len(tokenizer)} tokens -> {Path(args.out) / 'tokenizer.json'}")
    return 0
