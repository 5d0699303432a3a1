"""T5 (v1.0, v1.1, Flan-T5, UL2, ByT5) and mT5: RMSNorm before each sub-block, T5's bucketed relative
bias (layer 0 of each stack owns it, every layer adds it; bidirectional in the encoder, causal in the
decoder, none on cross-attention), no attention scale, one embedding table for both stacks, ReLU or a
gated GELU-tanh / SiLU MLP. v1.0 ties the head to the table and scales the decoder's output by
d_model ** -0.5 before it; v1.1 and later keep a head of their own and do not scale."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from encore.config import ModelConfig
from encore.convert.adapter import ConversionError, Rule, StateDictAdapter, need

# T5's `feed_forward_proj` -> encore's mlp_type ("gated-gelu" is GELU-tanh, "gelu" the exact one)
_MLP = {"relu": "relu", "gelu": "gelu_exact", "gelu_new": "gelu", "silu": "silu", "gated-gelu": "geglu",
        "gated-gelu_new": "geglu", "gated-silu": "swiglu"}  # fmt: skip
_MLP_BACK = {"relu": "relu", "gelu_exact": "gelu", "gelu": "gelu_new", "silu": "silu", "geglu": "gated-gelu",
             "swiglu": "gated-silu"}  # fmt: skip
RELATIVE_MAX_SEQ_LEN = 4096  # a relative bias has no table to outgrow: the cache's longest sequence


class T5Adapter(StateDictAdapter):
    model_types = ("t5", "mt5")
    architecture = "T5ForConditionalGeneration"
    aliases = {"shared.weight": ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")}

    def config_from_hf(self, hf: dict[str, Any], generation: dict[str, Any]) -> ModelConfig:
        proj = hf.get("feed_forward_proj", "relu")
        if proj not in _MLP:
            raise ConversionError(f"config.json: feed_forward_proj {proj!r} is not supported ({', '.join(_MLP)})")
        d, vocab = need(hf, "d_model"), need(hf, "vocab_size")
        n_layers = need(hf, "num_layers")
        pick = lambda key, default: generation.get(key, hf.get(key, default))
        eos = pick("eos_token_id", 1)
        eos_ids = [eos] if isinstance(eos, int) else list(eos)
        # T5 (v1.0) scales a tied head's input; T5 v1.1 / Flan-T5 (`tie_word_embeddings: false`) and mT5 do not
        scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
        scale = scale and hf.get("model_type") != "mt5"
        return ModelConfig(
            arch="encdec",
            vocab_size=vocab,
            d_model=d,
            n_encoder_layers=n_layers,
            n_decoder_layers=hf.get("num_decoder_layers") or n_layers,
            n_heads=need(hf, "num_heads"),
            n_kv_heads=need(hf, "num_heads"),
            head_dim=need(hf, "d_kv"),
            mlp_dim=need(hf, "d_ff"),
            mlp_type=_MLP[proj],
            max_seq_len=RELATIVE_MAX_SEQ_LEN,
            norm_eps=hf.get("layer_norm_epsilon", 1e-6),
            position_kind="relative",
            relative_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_max_distance=hf.get("relative_attention_max_distance", 128),
            attn_scale=1.0,
            head_scale=d**-0.5 if scale else None,
            tie_embeddings=True,  # settled by the weights: a head of its own unties it
            pad_token_id=pick("pad_token_id", 0),
            eos_token_id=eos_ids[0],
            extra_eos_token_ids=eos_ids[1:],
            bos_token_id=pick("decoder_start_token_id", 0),
            source_layout="encore",  # text ids + EOS, as T5's tokenizer lays a source out
            family=hf.get("model_type", "t5"),
        )

    def settle(self, config: ModelConfig, names: set[str], get: Callable[[str], Tensor]) -> ModelConfig:
        """Tied exactly when the checkpoint has no head of its own, or one equal to the table."""
        import torch

        tied = "lm_head.weight" not in names or bool(torch.equal(get("lm_head.weight"), get(self._table(names))))
        return config.replace(tie_embeddings=tied)

    def _table(self, names: set[str]) -> str:
        return next(n for n in ("shared.weight", *self.aliases["shared.weight"]) if n in names)

    def why_not(self, config: ModelConfig) -> str | None:
        checks = {
            "it is not an encoder-decoder": config.arch != "encdec",
            "its positions are not T5's relative bias": config.position_kind != "relative",
            "its blocks are not T5's (RMSNorm before each sub-block, no biases)": (config.norm_kind, config.block_order)
            != ("rms", "pre")
            or config.proj_bias
            or config.qkv_bias
            or config.qk_norm,
            "it scales attention (T5 does not)": config.attn_scale != 1.0,
            f"its MLP {config.mlp_type!r} has no T5 name": config.mlp_type not in _MLP_BACK,
            "it has embedding scales, norms, caps or a logits bias T5 lacks": config.embed_scale
            or config.embed_norm
            or config.logits_bias
            or config.attn_softcap is not None
            or config.final_softcap is not None,
            "its encoder has its own widths or table": bool(config.encoder_shape) or not config.tie_encoder_embeddings,
            "its head's scale is not T5's (v1.0: tied and scaled; later: unscaled; mT5: unscaled)": (
                config.head_scale not in (None, config.d_model**-0.5)
                or (config.family == "mt5" and config.head_scale is not None)
                or (not config.tie_embeddings and config.head_scale is not None)
            ),
            "it has grouped K/V heads": config.n_kv_heads != config.n_heads,
        }
        return next((why for why, bad in checks.items() if bad), None)

    def config_to_hf(self, config: ModelConfig) -> Any:
        import transformers

        return getattr(transformers, "MT5Config" if config.family == "mt5" else "T5Config")(
            vocab_size=config.vocab_size,
            d_model=config.d_model,
            d_kv=config.head_dim,
            d_ff=config.mlp_dim,
            num_layers=config.n_encoder_layers,
            num_decoder_layers=config.n_decoder_layers,
            num_heads=config.n_heads,
            relative_attention_num_buckets=config.relative_buckets,
            relative_attention_max_distance=config.relative_max_distance,
            layer_norm_epsilon=config.norm_eps,
            feed_forward_proj=_MLP_BACK[config.mlp_type],
            tie_word_embeddings=config.head_scale is not None,  # T5's name for "scaled" (v1.0); unscaled: a head
            dropout_rate=0.0,
            pad_token_id=config.pad_token_id,
            eos_token_id=config.eos_token_id,
            decoder_start_token_id=config.bos_token_id,
        )

    def to_hf(self, state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
        """The rules' tensors; a tied, unscaled head (as transformers 5 makes them) written as a head of
        its own, which every transformers version reads as unscaled (`tie_word_embeddings` false)."""
        out = super().to_hf(state, config)
        if config.tie_embeddings and config.head_scale is None:
            out["lm_head.weight"] = state["embed.weight"].clone()
        return out

    def rules(self, config: ModelConfig) -> list[Rule]:
        rules: list[Rule] = [
            ("embed.weight", ("shared.weight",)),
            ("encoder_norm.weight", ("encoder.final_layer_norm.weight",)),
            ("final_norm.weight", ("decoder.final_layer_norm.weight",)),
            (
                "encoder_positions.bias.weight",
                ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",),
            ),
            ("positions.bias.weight", ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",)),
        ]
        if not config.tie_embeddings:
            rules.append(("lm_head.weight", ("lm_head.weight",)))
        for part, n in (("encoder", config.n_encoder_layers), ("decoder", config.n_decoder_layers)):
            for i in range(n):
                enc, hf = f"{part}.{i}", f"{part}.block.{i}.layer"
                mlp = f"{hf}.{2 if part == 'decoder' else 1}"
                rules += [
                    (f"{enc}.attn_norm.weight", (f"{hf}.0.layer_norm.weight",)),
                    (f"{enc}.attn.qkv.weight", tuple(f"{hf}.0.SelfAttention.{p}.weight" for p in "qkv")),
                    (f"{enc}.attn.out.weight", (f"{hf}.0.SelfAttention.o.weight",)),
                    (f"{enc}.mlp_norm.weight", (f"{mlp}.layer_norm.weight",)),
                    (f"{enc}.mlp.down.weight", (f"{mlp}.DenseReluDense.wo.weight",)),
                ]
                up = ("wi_0", "wi_1") if config.gated_mlp else ("wi",)
                rules.append((f"{enc}.mlp.up.weight", tuple(f"{mlp}.DenseReluDense.{w}.weight" for w in up)))
                if part == "decoder":
                    rules += [
                        (f"{enc}.cross_norm.weight", (f"{hf}.1.layer_norm.weight",)),
                        (f"{enc}.cross.q.weight", (f"{hf}.1.EncDecAttention.q.weight",)),
                        (f"{enc}.cross.kv.weight", tuple(f"{hf}.1.EncDecAttention.{p}.weight" for p in "kv")),
                        (f"{enc}.cross.out.weight", (f"{hf}.1.EncDecAttention.o.weight",)),
                    ]
        return rules
