"""The encoder-decoder: a bidirectional encoder reads the input once; a small causal decoder
generates while cross-attending to the fixed encoder states."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from encore.config import ModelConfig
from encore.model.base import LanguageModel
from encore.model.cache import GenerationCache
from encore.model.inputs import (
    as_bool_mask,
    bidirectional_mask,
    causal_masks,
    padding_mask,
    positions_from_mask,
)
from encore.model.layers import DecoderLayer, EncoderLayer, MergedDecoderLayer, make_norm, stack_norm
from encore.model.positions import make_positions
from encore.model.stems import check_encoder_input, make_encoder_input


class EncoderDecoder(LanguageModel):
    arch = "encdec"

    def __init__(self, config: ModelConfig):
        if config.arch != "encdec":
            raise ValueError(f"EncoderDecoder needs an 'encdec' config, got arch={config.arch!r}")
        super().__init__(config)
        enc = config.encoder_config()  # the encoder's widths (T5Gemma 9B-2B: its own; usually the decoder's)
        # the encoder's own input, when the family keeps one (T5Gemma's table, Whisper's audio stem);
        # else the shared `embed`
        self.encoder_embed = None if config.tie_encoder_embeddings else make_encoder_input(enc)
        self.encoder_max_len = enc.max_seq_len
        self.encoder_positions = make_positions(enc, "encoder")
        self.encoder_embed_norm = make_norm(enc) if enc.embed_norm else nn.Identity()
        self.encoder = nn.ModuleList(EncoderLayer(enc, kind) for kind in config.layer_types("encoder"))
        self.encoder_norm = stack_norm(enc)
        if config.merged_attention:  # T5Gemma 2: self- and cross-attention as one softmax
            layers = (MergedDecoderLayer(config, kind) for kind in config.layer_types("decoder"))
        else:
            layers = (DecoderLayer(config, cross_attention=True, kind=kind) for kind in config.layer_types("decoder"))
        self.decoder = nn.ModuleList(layers)
        self._init_weights()
        for layer in self.decoder if config.merged_attention else ():
            layer.attn.copy_kv_to_cross()

    def blocks(self) -> list[nn.Module]:
        return [*self.encoder, *self.decoder]

    def input_embeddings(self) -> nn.Module:
        """What embeds the encoder's input (a token table; Whisper's audio stem)."""
        return self.embed if self.encoder_embed is None else self.encoder_embed

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids [B, S] (an audio encoder: log-mel features [B, M, 2S]) -> encoder states [B, S, D]."""
        check_encoder_input(self.config, input_ids, attention_mask)
        return self._encode(input_ids, padding_mask(attention_mask))

    def _encode(self, input_ids: Tensor, mask: Tensor | None, inputs_embeds: Tensor | None = None) -> Tensor:
        """`inputs_embeds` [B, S, D] replace the token embeddings (a vision-language model's, with image
        tokens at its placeholder positions)."""
        x = self.encoder_inputs(input_ids, mask, inputs_embeds)
        return self.encoder_norm(self.encoder_layers(x, mask))

    def encoder_inputs(self, input_ids: Tensor, mask: Tensor | None, inputs_embeds: Tensor | None = None) -> Tensor:
        """What the first encoder layer reads [B, S, D]: the embedded input (or `inputs_embeds`) with its
        positions."""
        x = self.input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds  # [B, S, D]
        B, S = x.shape[:2]
        self._check_length(S, "input", self.encoder_max_len)
        positions = positions_from_mask(mask, B, S, x.device)  # [B, S]
        return self.encoder_embed_norm(self.encoder_positions.embed(x, positions))

    def encoder_layers(self, x: Tensor, mask: Tensor | None, start: int = 0, stop: int | None = None) -> Tensor:
        """Encoder layers `start` .. `stop` - 1 over hidden states x [B, S, D] (all by default; the final
        norm is the caller's). The engine's chunked prefill runs a few of them per step."""
        B, S = x.shape[:2]
        positions = positions_from_mask(mask, B, S, x.device)  # [B, S]
        ropes = self.rotary(positions)
        span = self.config.encoder_span()
        masks = {  # [B, 1, 1, S] (or None), and [B|1, 1, S, S] for sliding layers; [B, H, S, S] with a bias
            "full": bidirectional_mask(mask, S, x.device),
            "sliding": bidirectional_mask(mask, S, x.device, span) if span else None,
        }
        masks = self.encoder_positions.scores(masks, positions, positions)
        for layer in self.encoder[start:stop]:
            x = layer(x, ropes[layer.kind], masks[layer.kind])
        return x

    def forward(
        self,
        input_ids: Tensor,
        decoder_input_ids: Tensor,
        attention_mask: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced logits [B, T_dec, V]. Token ids are not checked here (that would read them on
        the host at every training step): collators and `generate` check them where they enter.
        `inputs_embeds` [B, S, D]: the encoder's input embeddings in place of `embed(input_ids)`."""
        if decoder_input_ids.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"decoder_input_ids has batch size {decoder_input_ids.shape[0]} but input_ids has {input_ids.shape[0]}"
            )
        enc_mask = as_bool_mask(attention_mask)
        memory = self._encode(input_ids, enc_mask, inputs_embeds)
        cross_mask = None if enc_mask is None else enc_mask[:, None, None, :]

        B, T = decoder_input_ids.shape
        self._check_length(T, "decoder input")
        dec_mask = as_bool_mask(decoder_attention_mask)
        positions = positions_from_mask(dec_mask, B, T, decoder_input_ids.device)  # [B, T]
        ropes = self.rotary(positions)
        masks = causal_masks(dec_mask, T, decoder_input_ids.device, self.config.sliding_window)
        masks = self.positions.scores(masks, positions, positions)
        x = self.embed_tokens(decoder_input_ids, positions)  # [B, T, D]
        for layer in self.decoder:
            kv = layer.project_cross(memory)
            x = layer(x, ropes[layer.kind], masks[layer.kind], causal=True, cross_kv=kv, cross_mask=cross_mask)
        return self.head(x)

    def transcribe(self, audio, **options):
        """Speech -> {"text", "segments", "language"} (a Whisper model): see `encore.audio.transcribe`."""
        from encore.audio.transcribe import transcribe

        return transcribe(self, audio, **options)

    # --- generation: encode once, project cross K/V once, then one token at a time ---------------

    def cross_kv(
        self, input_ids: Tensor, mask: Tensor | None, inputs_embeds: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Encode and project every decoder layer's cross-attention K/V: [L, B, K, S, Dh] each. What
        a request computes once; `mask` [B, S] bool or None (nothing padded)."""
        return self.memory_kv(self._encode(input_ids, mask, inputs_embeds))

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder states [B, S, D] (after the final norm) -> every decoder layer's cross K/V [L, B, K, S, Dh]."""
        k, v = zip(*(layer.project_cross(memory) for layer in self.decoder))
        return torch.stack(k), torch.stack(v)

    def prefill(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        max_new_tokens: int,
        inputs_embeds: Tensor | None = None,
        decoder_prompt: Tensor | None = None,
        logits_at: list[int] | Tensor | None = None,
        memory: Tensor | None = None,
    ) -> tuple[Tensor, GenerationCache]:
        """Encode, fill the cross K/V, run the decoder on its start: first-token logits [B, V] and a
        cache for `max_new_tokens` outputs per row. Image tokens in `inputs_embeds` enter the cross K/V
        here, once, and never the decoder's self-attention cache. `decoder_prompt` [B, P]: the decoder's
        first tokens in place of BOS (Whisper's task tokens and previous text), one length for all rows;
        `logits_at`: the prompt positions whose logits to return ([B, n, V], `decode_prompt`): a list
        for every row, or a [B, n] tensor of each row's own (right-padded prompts). `memory` [B, S, D]: the
        encoder's states when the caller ran the encoder (the engine's chunked prefill, `encoder_layers`)."""
        B = input_ids.shape[0]
        prompt = decoder_prompt
        if prompt is None:
            prompt = torch.full((B, 1), self.config.bos_token_id, dtype=torch.long, device=input_ids.device)
        what = "max_new_tokens" if decoder_prompt is None else "decoder prompt + max_new_tokens"
        self._check_length(prompt.shape[1] - 1 + max_new_tokens, what)
        mask = padding_mask(attention_mask)
        cache = self.new_cache(B, 0, prompt.shape[1] - 1 + max_new_tokens)
        cross = self.cross_kv(input_ids, mask, inputs_embeds) if memory is None else self.memory_kv(memory)
        cache.cross_k, cache.cross_v = (t.to(cache.k.dtype) for t in cross)
        cache.cross_mask = mask
        return self.decode_prompt(prompt, cache, logits_at), cache

    def decode_prompt(
        self, tokens: Tensor, cache: GenerationCache, logits_at: list[int] | Tensor | None = None
    ) -> Tensor:
        """The decoder's first tokens [B, P] into a fresh cache at positions 0 .. P - 1, in one pass:
        the last one's next-token logits [B, V], or [B, n, V] at the prompt's positions `logits_at`
        (Whisper reads its no-speech probability at the start token)."""
        if tokens.shape[1] == 1 and logits_at is None:
            return self.decode_step(tokens[:, 0], cache)
        B, P = tokens.shape
        positions = torch.arange(P, device=tokens.device).expand(B, P)
        ropes = self.rotary(positions)
        masks = self.positions.scores(
            causal_masks(None, P, tokens.device, self.config.sliding_window), positions, positions
        )
        cross = self.cross_inputs(cache)
        x = self.embed_tokens(tokens, positions)  # [B, P, D]
        cache.prefilling = True
        try:
            for i, layer in enumerate(self.decoder):
                x = layer(x, ropes[layer.kind], masks[layer.kind], causal=True, cache=cache, layer=i, **cross(i))
        finally:
            cache.prefilling = False
        cache.length += P
        if isinstance(logits_at, Tensor):  # [B, n]: each row's own positions
            return self.head(x[torch.arange(B, device=x.device)[:, None], logits_at])
        return self.head(x[:, -1] if logits_at is None else x[:, logits_at])

    def cross_inputs(self, cache: GenerationCache) -> Callable[[int], dict]:
        """Layer i's encoder inputs for the shared decode step: its cross K/V and the input's mask."""
        mask = None if cache.cross_mask is None else cache.cross_mask[:, None, None, :]  # [B, 1, 1, S]
        return lambda i: {"cross_kv": (cache.cross_k[i], cache.cross_v[i]), "cross_mask": mask}
