"""New special tokens for an imported vocabulary: T5's sentinels and UL2's mode tokens.

A decoder-only tokenizer (SmolLM2's, Llama's) has neither; span corruption and UL2 need both. They are
appended after the tokenizer's last id, and the embedding (and an untied head) grows to hold them,
rounded up to a multiple of 64 rows. New rows start at the mean of the old ones (what transformers'
`resize_token_embeddings` does by default), so a new token starts as an "average" token rather than
as noise. Ids that exist keep their rows: a teacher with the source's vocabulary still lines up.
"""

from __future__ import annotations

import torch
from torch import nn

from encore.model.base import LanguageModel
from encore.tokenizer import SENTINELS, UL2_MODE_TOKENS, _add_special_tokens


def _grown(table: torch.Tensor, rows: int) -> torch.Tensor:
    mean = table.mean(0, keepdim=True)
    return torch.cat([table, mean.expand(rows - table.shape[0], -1)]).contiguous()


@torch.no_grad()
def add_tokens(model: LanguageModel, tokens: list[str]) -> int:
    """Add the `tokens` missing from `model.tokenizer` as special tokens, growing the model's tables
    when the new ids do not fit; the number added."""
    vocab = model.tokenizer.get_vocab()
    added = _add_special_tokens(model.tokenizer, [t for t in tokens if t not in vocab])
    size = len(model.tokenizer)
    if size <= model.config.vocab_size:
        return added
    rows = (size + 63) // 64 * 64
    tables = [model.embed] + ([] if model.lm_head is None else [model.lm_head])
    if getattr(model, "encoder_embed", None) is not None:
        tables.append(model.encoder_embed)
    for module in tables:
        module.weight = nn.Parameter(_grown(module.weight, rows))
        if isinstance(module, nn.Embedding):
            module.num_embeddings = rows
        else:
            module.out_features = rows
    model.config = model.config.replace(vocab_size=rows)
    return added


def add_sentinels(model: LanguageModel, n: int) -> int:
    """`<extra_id_0>` .. `<extra_id_{n-1}>` and UL2's mode tokens, as `encore adapt --sentinels N` adds."""
    if not 0 <= n <= len(SENTINELS):
        raise ValueError(f"--sentinels {n}: choose 0 to {len(SENTINELS)}")
    return add_tokens(model, [*SENTINELS[:n], *UL2_MODE_TOKENS]) if n else 0
