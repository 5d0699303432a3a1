"""Documents -> one resumable stream of token ids, read out in pieces of any length (packing).

The pretraining streams (`encore.data.span_corruption`) cut their examples from a `TokenStream`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from encore.data.corpora import Corpus
from encore.tokenizer import encode_text


class TokenStream:
    """A corpus as one stream of token ids: each document's tokens, then EOS (the document boundary),
    read out in pieces of any length with `take(n)`. With `repeat=True` the corpus is rewound (next
    epoch) when it ends; otherwise `take` returns None once fewer than n tokens are left.

    The position is the corpus position before the first document not yet fully consumed, plus how many
    of its tokens were consumed: restoring re-reads and re-tokenizes that one document and skips that
    many tokens, so a resumed stream continues on exactly the next token."""

    def __init__(self, corpus: Corpus, tokenizer: Any, *, eos_id: int | None = None, repeat: bool = True) -> None:
        self.corpus, self.tokenizer, self.repeat = corpus, tokenizer, repeat
        self.eos_id = tokenizer.eos_token_id if eos_id is None else eos_id
        if self.eos_id is None:
            raise ValueError("the tokenizer has no EOS token to separate documents; pass eos_id")
        self._encode = lambda text: encode_text(tokenizer, text)
        self.tokens = 0  # consumed so far, over all passes: the token budget spent
        self._reset(0)

    def _reset(self, skip: int) -> None:
        # documents read ahead: (corpus state before the document, its ids); the first is consumed up to _skip
        self._pending: list[tuple[dict[str, Any], list[int]]] = []
        self._skip, self._available = skip, 0
        self._docs: Iterator[str] | None = None
        self._empty_passes = 0

    def _pull(self) -> bool:
        """Tokenize one more document; False when the corpus is exhausted (and not repeating)."""
        if self._docs is None:
            self._docs = iter(self.corpus)
        before = self.corpus.state_dict()
        text = next(self._docs, None)
        if text is None:
            if not self.repeat:
                return False
            self._empty_passes += 1
            if self._empty_passes > 1:  # a whole pass without a document: the corpus (or this shard) is empty
                raise ValueError(
                    f"{self.corpus.name}: no documents for rank {self.corpus.rank} of {self.corpus.world_size}"
                )
            self.corpus.rewind()
            self._docs = iter(self.corpus)
            return True
        self._empty_passes = 0
        ids = [*self._encode(text), self.eos_id]
        if not self._pending:  # only the first pending document is ever part-consumed
            if self._skip > len(ids):
                raise ValueError(
                    f"{self.corpus.name}: the saved position is {self._skip} tokens into a document of {len(ids)}: "
                    "was the tokenizer changed since the state was saved?"
                )
            self._available -= self._skip
        self._pending.append((before, ids))
        self._available += len(ids)
        return True

    def take(self, n: int) -> list[int] | None:
        """The next `n` token ids, or None when the corpus ran out (only without repeat)."""
        while self._available < n:
            if not self._pull():
                return None
        out: list[int] = []
        while len(out) < n:
            ids = self._pending[0][1]
            part = ids[self._skip : self._skip + n - len(out)]
            out.extend(part)
            self._skip += len(part)
            if self._skip == len(ids):
                self._pending.pop(0)
                self._skip = 0
        self._available -= n
        self.tokens += n
        return out

    def state_dict(self) -> dict[str, Any]:
        # nothing read ahead: the corpus's own position (after the last document pulled) is the anchor
        anchor = self._pending[0][0] if self._pending else self.corpus.state_dict()
        return {"corpus": copy.deepcopy(anchor), "skip": self._skip, "tokens": self.tokens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.corpus.load_state_dict(state["corpus"])
        self.tokens = int(state["tokens"])
        self._reset(int(state["skip"]))
