"""Log-probabilities in OpenAI's two shapes, from the engine's (token, log-prob, [(token, log-prob)])
entries (`encore.infer.engine.Event.logprob` / `top_logprobs`): the completions route's
`{tokens, token_logprobs, top_logprobs, text_offset}` and the chat route's `{content: [{token, logprob,
bytes, top_logprobs}]}`. A token's text is what the tokenizer decodes for it alone."""

from __future__ import annotations

from typing import Any

Entry = tuple[int, float, list[tuple[int, float]] | None]
FLOOR = -9999.0  # what a log-prob of -inf (a banned token) reads as: JSON has no infinity (OpenAI's and vLLM's)


def _lp(value: float) -> float:
    return value if value >= FLOOR else FLOOR  # (NaN too)


def _text(tokenizer: Any, token: int) -> str:
    return tokenizer.decode([token], skip_special_tokens=False)


def completion_logprobs(tokenizer: Any, entries: list[Entry], offset: int = 0) -> dict[str, Any]:
    """The completions shape; `offset`: characters of the choice's text before these tokens."""
    tokens = [_text(tokenizer, t) for t, _, _ in entries]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    top = [{_text(tokenizer, t): _lp(lp) for t, lp in (alts or [])} for _, _, alts in entries]
    return {
        "tokens": tokens,
        "token_logprobs": [_lp(lp) for _, lp, _ in entries],
        "top_logprobs": top,
        "text_offset": offsets,
    }


def chat_logprobs(tokenizer: Any, entries: list[Entry]) -> dict[str, Any]:
    """The chat shape: each token with its UTF-8 bytes and its likeliest alternatives."""

    def item(token: int, logprob: float) -> dict[str, Any]:
        text = _text(tokenizer, token)
        return {"token": text, "logprob": _lp(logprob), "bytes": list(text.encode("utf-8", "replace"))}

    content = [{**item(t, lp), "top_logprobs": [item(a, alp) for a, alp in (alts or [])]} for t, lp, alts in entries]
    return {"content": content}
