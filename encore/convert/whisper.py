"""Whisper (`model_type` whisper: openai/whisper-*, distil-whisper, large-v3-turbo): an audio encoder-
decoder. Its blocks are pre-norm LayerNorm with biases on every projection but the keys (k_proj has
none: a bias on the keys shifts every score of a query alike, so encore's fused q/k/v carries zeros
there), a GELU MLP and a tied head. The encoder reads log-mel frames through a two-convolution stem
(`ModelConfig.encoder_input = "audio"`) with fixed sinusoidal positions (M2M100's formula, 1,500 of
them); the decoder learns 448 positions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from encore.config import ModelConfig
from encore.convert.adapter import ConversionError, Getter, Rule, need
from encore.convert.bart import BartAdapter, _linear, _norm

MAX_SOURCE_POSITIONS, MAX_TARGET_POSITIONS = 1500, 448


class WhisperAdapter(BartAdapter):
    model_types = ("whisper",)
    architecture = "WhisperForConditionalGeneration"
    config_class = "WhisperConfig"
    block_order = "pre"
    position_kind, position_offset = "learned", 0
    embed_norm = False
    aliases = {}

    def config_from_hf(self, hf: dict[str, Any], generation: dict[str, Any]) -> ModelConfig:
        if hf.get("activation_function", "gelu") != "gelu":
            raise ConversionError(f"config.json: activation_function {hf['activation_function']!r} (Whisper's is gelu)")
        heads = need(hf, "decoder_attention_heads")
        d, vocab = need(hf, "d_model"), need(hf, "vocab_size")
        enc_heads, enc_mlp = need(hf, "encoder_attention_heads"), need(hf, "encoder_ffn_dim")
        dec_mlp = need(hf, "decoder_ffn_dim")
        pick = lambda key, default=None: generation.get(key, hf.get(key, default))
        eos = pick("eos_token_id", 50257)
        eos_ids = [eos] if isinstance(eos, int) else list(eos)
        encoder = {"max_seq_len": hf.get("max_source_positions", MAX_SOURCE_POSITIONS)}
        encoder["position_kind"] = "sinusoidal_fairseq"
        if enc_heads != heads:
            encoder.update(n_heads=enc_heads, n_kv_heads=enc_heads)
        if enc_mlp != dec_mlp:
            encoder["mlp_dim"] = enc_mlp
        return ModelConfig(
            arch="encdec",
            vocab_size=vocab,
            d_model=d,
            n_encoder_layers=need(hf, "encoder_layers"),
            n_decoder_layers=need(hf, "decoder_layers"),
            n_heads=heads,
            n_kv_heads=heads,
            head_dim=d // heads,
            mlp_dim=dec_mlp,
            encoder_shape=encoder,
            encoder_input="audio",
            audio_mels=hf.get("num_mel_bins", 80),
            mlp_type="gelu_exact",
            max_seq_len=hf.get("max_target_positions", MAX_TARGET_POSITIONS),
            norm_eps=1e-5,
            norm_kind="layernorm",
            block_order="pre",
            position_kind="learned",
            proj_bias=True,
            embed_scale=bool(hf.get("scale_embedding", False)),
            tie_embeddings=True,
            tie_encoder_embeddings=False,
            pad_token_id=pick("pad_token_id", eos_ids[0]),
            eos_token_id=eos_ids[0],
            extra_eos_token_ids=eos_ids[1:],
            bos_token_id=pick("decoder_start_token_id", 50258),
            source_layout="plain",
            family="whisper",
        )

    def settle(self, config: ModelConfig, names: set[str], get: Getter) -> ModelConfig:
        tied = "proj_out.weight" not in names or bool(
            torch.equal(get("proj_out.weight"), get("model.decoder.embed_tokens.weight"))
        )
        return config.replace(tie_embeddings=tied)

    def why_not(self, config: ModelConfig) -> str | None:
        enc = config.encoder_config()
        checks = {
            "its encoder does not read audio": config.encoder_input != "audio",
            "its blocks are not Whisper's (pre-norm LayerNorm, biases, GELU)": (
                config.norm_kind,
                config.block_order,
                config.proj_bias,
                config.mlp_type,
            )
            != ("layernorm", "pre", True, "gelu_exact"),
            "its positions are not Whisper's": (config.position_kind, config.position_offset, enc.position_kind)
            != ("learned", 0, "sinusoidal_fairseq"),
            "it has grouped K/V heads, norms, caps or scales of other families": config.n_kv_heads != config.n_heads
            or config.qk_norm
            or config.embed_norm
            or config.logits_bias
            or config.head_scale is not None
            or config.attn_softcap is not None
            or config.final_softcap is not None,
            "its encoder is not as wide as its decoder": enc.d_model != config.d_model,
        }
        return next((why for why, bad in checks.items() if bad), None)

    def config_to_hf(self, config: ModelConfig) -> Any:
        import transformers

        enc = config.encoder_config()
        eos = list(config.eos_token_ids)
        return transformers.WhisperConfig(
            vocab_size=config.vocab_size,
            num_mel_bins=config.audio_mels,
            d_model=config.d_model,
            encoder_layers=config.n_encoder_layers,
            decoder_layers=config.n_decoder_layers,
            encoder_attention_heads=enc.n_heads,
            decoder_attention_heads=config.n_heads,
            encoder_ffn_dim=enc.mlp_dim,
            decoder_ffn_dim=config.mlp_dim,
            max_source_positions=enc.max_seq_len,
            max_target_positions=config.max_seq_len,
            scale_embedding=config.embed_scale,
            tie_word_embeddings=config.tie_embeddings,
            pad_token_id=config.pad_token_id,
            eos_token_id=eos[0],
            bos_token_id=eos[0],
            decoder_start_token_id=config.bos_token_id,
            dropout=0.0,
        )

    def rules(self, config: ModelConfig) -> list[Rule]:
        rules: list[Rule] = [
            ("embed.weight", ("model.decoder.embed_tokens.weight",)),
            ("positions.weight", ("model.decoder.embed_positions.weight",)),
            *_linear("encoder_embed.conv1", "model.encoder.conv1"),
            *_linear("encoder_embed.conv2", "model.encoder.conv2"),
            *_norm("encoder_norm", "model.encoder.layer_norm"),
            *_norm("final_norm", "model.decoder.layer_norm"),
        ]
        if not config.tie_embeddings:
            rules.append(("lm_head.weight", ("proj_out.weight",)))
        for i in range(config.n_encoder_layers):
            rules += self._layer_rules(f"encoder.{i}", f"model.encoder.layers.{i}", cross=False)
        for i in range(config.n_decoder_layers):
            rules += self._layer_rules(f"decoder.{i}", f"model.decoder.layers.{i}", cross=True)
        return rules

    def from_hf(self, get: Getter, config: ModelConfig) -> Iterator[tuple[str, Tensor]]:
        """The rules' tensors, with zeros for the key biases Whisper does not have."""

        def with_zero_key_bias(name: str) -> Tensor:
            if name.endswith("k_proj.bias"):
                weight = get(name.removesuffix("bias") + "weight")
                return torch.zeros(weight.shape[0], dtype=weight.dtype)
            return get(name)

        return super().from_hf(with_zero_key_bias, config)

    def to_hf(self, state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
        """The rules' tensors without the key biases, and the encoder's sinusoids as the files hold them."""
        out = {k: v for k, v in super().to_hf(state, config).items() if not k.endswith("k_proj.bias")}
        out["model.encoder.embed_positions.weight"] = sinusoids(config.encoder_config().max_seq_len, config.d_model)
        return out


def sinusoids(length: int, dim: int) -> Tensor:
    """Whisper's encoder positions [length, dim]: sin | cos at frequencies 10000 ** (-i / (dim / 2 - 1))."""
    from encore.model.positions import SinusoidalPositions

    return SinusoidalPositions(length, dim, offset=0, fairseq=True).table.clone()
