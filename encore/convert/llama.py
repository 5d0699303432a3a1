"""Llama-style decoder-only families: Llama (SmolLM2, Llama 3.2), Qwen2 / Qwen2.5 (q/k/v biases),
Qwen3 (q/k norms). Pre-norm RMSNorm blocks, SwiGLU MLPs, RoPE (Llama 3's scaling too)."""

from __future__ import annotations

from typing import Any

from encore.config import ModelConfig
from encore.convert.adapter import (
    ConversionError,
    Rule,
    StateDictAdapter,
    attention_rules,
    gated_mlp_rules,
    hf_special_tokens,
    layer_kinds,
    need,
    rope_settings,
    rope_to_hf,
    special_tokens,
)


class LlamaAdapter(StateDictAdapter):
    model_types = ("llama",)
    architecture = "LlamaForCausalLM"
    qkv_bias = False
    qk_norm = False

    def config_from_hf(self, hf: dict[str, Any], generation: dict[str, Any]) -> ModelConfig:
        if hf.get("hidden_act", "silu") != "silu":
            raise ConversionError(f"config.json: hidden_act {hf['hidden_act']!r} (encore's Llama blocks use silu)")
        if hf.get("mlp_bias") or (self.architecture == "LlamaForCausalLM" and hf.get("attention_bias")):
            raise ConversionError("config.json: attention_bias / mlp_bias on every projection is not supported")
        d, heads = need(hf, "hidden_size"), need(hf, "num_attention_heads")
        n_layers, vocab = need(hf, "num_hidden_layers"), need(hf, "vocab_size")
        theta, rope_params = rope_settings(hf)
        kinds, window = layer_kinds(hf, n_layers) if hf.get("use_sliding_window", True) else ([], 0)
        return ModelConfig(
            arch="deconly",
            vocab_size=vocab,
            d_model=d,
            n_encoder_layers=0,
            n_decoder_layers=n_layers,
            n_heads=heads,
            n_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or d // heads,
            mlp_dim=need(hf, "intermediate_size"),
            mlp_type="swiglu",
            max_seq_len=hf.get("max_position_embeddings", 4096),
            rope_theta=theta,
            rope_params=rope_params,
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=self.qkv_bias,
            qk_norm=self.qk_norm,
            decoder_layer_types=kinds,
            sliding_window=window,
            source_layout="bos",
            family=self.model_types[0],
            **special_tokens(hf, generation, vocab),
        )

    def why_not(self, config: ModelConfig) -> str | None:
        checks = {
            "it is an encoder-decoder": config.arch != "deconly",
            f"its MLP is {config.mlp_type} (needs swiglu)": config.mlp_type != "swiglu",
            "its blocks are not Llama's (RMSNorm before each sub-block, RoPE, no other biases)": not _llama_blocks(
                config
            ),
            "it has Gemma-style scales or caps": config.embed_scale
            or config.attn_softcap is not None
            or config.final_softcap is not None
            or config.attn_scale is not None,
            "its q/k/v biases do not match this family": config.qkv_bias != self.qkv_bias,
            "its q/k norms do not match this family": config.qk_norm != self.qk_norm,
            "it uses NTK RoPE scaling": config.rope_scaling != 1.0,
            "it has sliding-window layers": "sliding" in config.decoder_layer_types and self.model_types[0] == "llama",
        }
        return next((why for why, bad in checks.items() if bad), None)

    def config_to_hf(self, config: ModelConfig) -> Any:
        import transformers

        kwargs = dict(
            vocab_size=config.vocab_size,
            hidden_size=config.d_model,
            intermediate_size=config.mlp_dim,
            num_hidden_layers=config.n_decoder_layers,
            num_attention_heads=config.n_heads,
            num_key_value_heads=config.n_kv_heads,
            head_dim=config.head_dim,
            hidden_act="silu",
            max_position_embeddings=config.max_seq_len,
            rms_norm_eps=config.norm_eps,
            tie_word_embeddings=config.tie_embeddings,
            rope_parameters=rope_to_hf(config),
            **hf_special_tokens(config),
        )
        if self.model_types[0] != "llama" and config.decoder_layer_types:
            kinds = config.decoder_layer_types
            kwargs.update(use_sliding_window=True, sliding_window=config.sliding_window)
            kwargs["layer_types"] = [f"{k}_attention" for k in kinds]
        return getattr(transformers, self.architecture.replace("ForCausalLM", "Config"))(**kwargs)

    def rules(self, config: ModelConfig) -> list[Rule]:
        rules: list[Rule] = [
            ("embed.weight", ("model.embed_tokens.weight",)),
            ("final_norm.weight", ("model.norm.weight",)),
        ]
        if not config.tie_embeddings:
            rules.append(("lm_head.weight", ("lm_head.weight",)))
        for i in range(config.n_decoder_layers):
            enc, hf = f"decoder.{i}", f"model.layers.{i}"
            rules += [
                (f"{enc}.attn_norm.weight", (f"{hf}.input_layernorm.weight",)),
                (f"{enc}.mlp_norm.weight", (f"{hf}.post_attention_layernorm.weight",)),  # Llama's pre-MLP norm
                *attention_rules(f"{enc}.attn", f"{hf}.self_attn", config),
                *gated_mlp_rules(f"{enc}.mlp", f"{hf}.mlp"),
            ]
        return rules


class Qwen2Adapter(LlamaAdapter):
    model_types = ("qwen2",)
    architecture = "Qwen2ForCausalLM"
    qkv_bias = True

    def config_from_hf(self, hf: dict[str, Any], generation: dict[str, Any]) -> ModelConfig:
        return super().config_from_hf(hf, generation).replace(source_layout="plain")


class Qwen3Adapter(Qwen2Adapter):
    model_types = ("qwen3",)
    architecture = "Qwen3ForCausalLM"
    qkv_bias = False
    qk_norm = True

    def config_from_hf(self, hf: dict[str, Any], generation: dict[str, Any]) -> ModelConfig:
        if hf.get("attention_bias"):
            raise ConversionError("config.json: attention_bias on Qwen3 is not supported")
        return super().config_from_hf(hf, generation)


def _llama_blocks(config: ModelConfig) -> bool:
    plain = (config.norm_kind, config.block_order, config.position_kind) == ("rms", "pre", "rope")
    return plain and not (config.proj_bias or config.embed_norm or config.logits_bias or config.head_scale)
