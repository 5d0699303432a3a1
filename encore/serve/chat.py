"""`POST /v1/chat/completions`: OpenAI's chat shape on the same scheduler as the completions route.

    messages [{role, content}], max_tokens | max_completion_tokens, temperature, top_p, top_k, seed,
    stop, n, stream (+ stream_options.include_usage) -> choices[i].message {role: assistant, content},
    finish_reason, usage; stream: `chat.completion.chunk`s, the first delta carrying the role.

The conversation becomes the prompt through the checkpoint's chat template, applied as transformers
applies it (`apply_chat_template(..., add_generation_prompt=True)`, then tokenized without adding
special tokens: the template writes them). For an encoder-decoder the templated conversation is the
encoder's input and the reply is the decoder's output; for a decoder-only model it is the prompt the
reply continues. `--chat-template FILE` replaces the checkpoint's; a model without one answers 400.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from encore.serve.completions import MAX_LOGPROBS, APIError, Completions, GenerationRequest, encodable
from encore.serve.logprobs import chat_logprobs
from encore.tokenizer import chat_ids


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(GenerationRequest):
    messages: list[ChatMessage]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    def top_logprobs_asked(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


def _text(message: ChatMessage, index: int) -> str:
    """A message's content as text: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return encodable(content, f"messages[{index}].content")
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise APIError(400, f"messages[{index}].content: only text parts are supported", "messages")
        parts.append(encodable(part["text"], f"messages[{index}].content"))
    return "".join(parts)


class ChatCompletions(Completions):
    """`POST /v1/chat/completions`: the conversation through the chat template, then as a completion."""

    kind, chunk_kind, prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def __init__(
        self,
        scheduler: Any,
        model_name: str,
        max_input_len: int,
        max_tokens: int,
        timeout_s: float | None = None,
        template: str | None = None,
    ):
        super().__init__(scheduler, model_name, max_input_len, max_tokens, timeout_s)
        self.template = template or getattr(self.model.tokenizer, "chat_template", None)

    def prompts(self, body: ChatRequest) -> list[tuple[str, list[int]]]:
        if self.template is None:
            raise APIError(
                400, f"model {self.name!r} has no chat template; start the server with --chat-template FILE", "messages"
            )
        if not body.messages:
            raise APIError(400, "messages is empty", "messages")
        messages = [{"role": m.role, "content": _text(m, i)} for i, m in enumerate(body.messages)]
        try:
            ids = chat_ids(self.model.tokenizer, messages, self.template)
        except Exception as e:  # a template's own raise_exception (e.g. roles that must alternate)
            raise APIError(400, f"the chat template refused the messages: {e}", "messages") from None
        return [("messages", ids)]

    def max_new(self, body: ChatRequest) -> tuple[int, str]:
        if body.max_completion_tokens is not None:
            return body.max_completion_tokens, "max_completion_tokens"
        if body.max_tokens is not None:
            return body.max_tokens, "max_tokens"
        return self.max_tokens, "max_completion_tokens"  # OpenAI's default: as long as the server allows

    def choice(self, index: int, text: str, reason: str | None, logprobs: Any = None) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": reason}

    def chunks(
        self, index: int, delta: str, reason: str | None, first: bool, logprobs: Any = None
    ) -> list[dict[str, Any]]:
        out = []
        if first:
            out.append({"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        if delta or (logprobs and logprobs["content"]):
            out.append({"index": index, "delta": {"content": delta}, "logprobs": logprobs, "finish_reason": None})
        if reason is not None:
            out.append({"index": index, "delta": {}, "finish_reason": reason})
        return out

    def logprobs(self, entries: list, offset: int) -> dict[str, Any]:
        return chat_logprobs(self.model.tokenizer, entries)
