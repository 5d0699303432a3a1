"""The decoder-only baseline, built from the same blocks and given the same care: one-pass prefill
of the prompt into a preallocated KV cache over prompt + output, then one token per step."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from encore.config import ModelConfig
from encore.model.base import LanguageModel
from encore.model.cache import GenerationCache
from encore.model.inputs import as_bool_mask, causal_masks, padding_mask, positions_from_mask, right_pad_order
from encore.model.layers import DecoderLayer


class DecoderOnly(LanguageModel):
    arch = "deconly"

    def __init__(self, config: ModelConfig):
        if config.arch != "deconly":
            raise ValueError(f"DecoderOnly needs a 'deconly' config, got arch={config.arch!r}")
        super().__init__(config)
        self.decoder = nn.ModuleList(
            DecoderLayer(config, cross_attention=False, kind=kind) for kind in config.layer_types("decoder")
        )
        self._init_weights()

    def blocks(self) -> list[nn.Module]:
        return list(self.decoder)

    def input_embeddings(self) -> nn.Embedding:
        """The table that embeds the prompt."""
        return self.embed

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        logits_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        logits_to_keep: int = 0,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        """Logits [B, T, V] for every position. With `logits_mask` [B, T] (bool), only at the marked
        positions, [N, V] in row-major order (training on a target after a long prompt then skips the
        head and the softmax over the prompt); with `logits_to_keep` k > 0, only the last k columns
        [B, k, V] (Hugging Face's name). `position_ids` default to the real tokens' count
        (cumsum(mask) - 1), which is what padding-aware callers pass. Token ids are not checked here:
        collators and `generate` check them where they enter. `inputs_embeds` [B, T, D] replace
        `embed(input_ids)` (a vision-language model's prompt, image tokens in place)."""
        mask = as_bool_mask(attention_mask)
        hidden = self._run(input_ids, mask, positions=position_ids, inputs_embeds=inputs_embeds)
        if logits_mask is not None:
            if logits_mask.shape != input_ids.shape:
                raise ValueError(
                    f"logits_mask has shape {tuple(logits_mask.shape)}, input_ids {tuple(input_ids.shape)}"
                )
            hidden = hidden[logits_mask.bool()]
        elif logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return self.head(hidden)

    def _run(
        self,
        input_ids: Tensor,
        mask: Tensor | None,
        cache: GenerationCache | None = None,
        positions: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        past: int = 0,
    ) -> Tensor:
        """Hidden states [B, T, D] (before the final norm); stores every layer's K/V in `cache` when given.
        `past` P > 0: the tokens come after P positions whose K/V `cache` holds (one unpadded row)."""
        B, T = input_ids.shape
        self._check_length(past + T, "input")
        if positions is None:
            positions = positions_from_mask(mask, B, T, input_ids.device) + past
        ropes = self.rotary(positions)
        masks = causal_masks(mask, T, input_ids.device, self.config.sliding_window, past)
        keys = torch.arange(past + T, device=input_ids.device)[None]  # (a relative bias's key positions)
        masks = self.positions.scores(masks, positions, keys)
        x = self.embed_tokens(input_ids, positions, inputs_embeds)  # [B, T, D]
        for i, layer in enumerate(self.decoder):
            x = layer(x, ropes[layer.kind], masks[layer.kind], causal=True, cache=cache, layer=i)
        return x

    # --- generation ------------------------------------------------------------------------------

    def prefill(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        max_new_tokens: int,
        inputs_embeds: Tensor | None = None,
    ) -> tuple[Tensor, GenerationCache]:
        """Prompt -> each row's last-position logits [B, V] and the cache. Prompts are laid out
        right-padded (each row's real tokens at positions 0 .. n_b - 1, whatever its padding was): a
        causal prompt never sees the padding after it, so the prefill needs no mask, and each row's
        new tokens go to its own next position. `inputs_embeds` [B, S, D] (image tokens in a
        vision-language prompt) are laid out the same way and stay in the cache, every step."""
        B, S = input_ids.shape
        if S + max_new_tokens > self.config.max_seq_len:
            raise ValueError(
                f"input length {S} + max_new_tokens {max_new_tokens} exceeds max_seq_len={self.config.max_seq_len}"
            )
        order, lengths = right_pad_order(padding_mask(attention_mask), B, S, input_ids.device)
        if order is not None:
            input_ids = input_ids.gather(1, order)
            if inputs_embeds is not None:
                inputs_embeds = inputs_embeds.gather(1, order[..., None].expand_as(inputs_embeds))
        cache = self.new_cache(B, S, max_new_tokens)
        return self.prefill_rows(input_ids, lengths, cache, inputs_embeds), cache

    def prefill_after(
        self, input_ids: Tensor, past_k: Tensor, past_v: Tensor, max_new_tokens: int
    ) -> tuple[Tensor, GenerationCache]:
        """One prompt's tokens after P positions whose K/V are known (`past_k` / `past_v` [L, K, P, Dh]:
        a reused prefix) -> its last-position logits [1, V] and a cache of P + T + `max_new_tokens`
        positions. The same logits and cache as prefilling the whole prompt, at the cost of T tokens."""
        _, T = input_ids.shape
        P = past_k.shape[2]
        if P + T + max_new_tokens > self.config.max_seq_len:
            raise ValueError(
                f"{P} cached + {T} new positions + max_new_tokens {max_new_tokens} exceed max_seq_len="
                f"{self.config.max_seq_len}"
            )
        cache = self.new_cache(1, P + T, max_new_tokens)
        cache.k[:, 0, :, :P], cache.v[:, 0, :, :P] = past_k, past_v
        return self.prefill_into(input_ids, cache, P), cache

    def prefill_into(self, input_ids: Tensor, cache: GenerationCache, past: int) -> Tensor:
        """One prompt's tokens [1, T] after the first P = `past` positions, whose K/V `cache` (one row)
        already holds: their K/V written in place at P .. P + T - 1, `length` set to P + T; the last
        position's logits [1, V]. `prefill_after` and the engine's chunked prefill (a slot's row of its
        cache, a piece of the prompt per step) continue a prompt with it."""
        T = input_ids.shape[1]
        cache.prefilling, cache.prefill_start = True, past
        try:
            hidden = self._run(input_ids, None, cache, past=past)  # [1, T, D]
        finally:
            cache.prefilling, cache.prefill_start = False, 0
        cache.length.fill_(past + T)
        return self.head(hidden[:, -1])

    def prefill_rows(
        self, input_ids: Tensor, lengths: Tensor, cache: GenerationCache, inputs_embeds: Tensor | None = None
    ) -> Tensor:
        """Right-padded prompts [B, S] with their lengths [B] -> last-position logits [B, V]; their K/V
        fill the cache's first S positions and `length` becomes `lengths`. No host read (the prefill
        graph an export runs)."""
        B = input_ids.shape[0]
        cache.prefilling = True
        try:
            hidden = self._run(input_ids, None, cache, inputs_embeds=inputs_embeds)
        finally:
            cache.prefilling = False
        cache.length.copy_(lengths)
        last = hidden[torch.arange(B, device=hidden.device), lengths - 1]  # [B, D]
        return self.head(last)
