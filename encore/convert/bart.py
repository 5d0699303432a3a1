"""BART's kin, the fairseq-style encoder-decoders: BART and mBART, Marian (OPUS-MT), Pegasus, M2M100
and NLLB-200 (`m2m100`). All: LayerNorm with a bias, biases on every projection, embeddings times
sqrt(d_model) where `scale_embedding`, absolute positions added to them. They differ in three kinds:

| family  | block order | positions                          | embedding norm | logits bias |
|---------|-------------|------------------------------------|----------------|-------------|
| bart    | post        | learned, from row 2                | yes            | yes         |
| mbart   | pre         | learned, from row 2                | yes            | yes         |
| marian  | post        | sinusoidal                         | no             | yes         |
| pegasus | pre         | sinusoidal                         | no             | yes         |
| m2m100  | pre         | fairseq sinusoid, from row 2       | no             | no          |

A pre-norm family ends each stack with a LayerNorm (`encoder.layer_norm`); a post-norm one does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from encore.config import ModelConfig
from encore.convert.adapter import ConversionError, Rule, StateDictAdapter, need

_ACT = {"gelu": "gelu_exact", "relu": "relu", "swish": "silu", "silu": "silu", "gelu_new": "gelu",
        "gelu_pytorch_tanh": "gelu"}  # fmt: skip
_ACT_BACK = {"gelu_exact": "gelu", "relu": "relu", "silu": "swish", "gelu": "gelu_new"}


class BartAdapter(StateDictAdapter):
    model_types = ("bart",)
    architecture = "BartForConditionalGeneration"
    config_class = "BartConfig"
    block_order = "post"
    position_kind, position_offset = "learned", 2
    embed_norm = True
    aliases = {"model.shared.weight": ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")}

    def config_from_hf(self, hf: dict[str, Any], generation: dict[str, Any]) -> ModelConfig:
        act = hf.get("activation_function", "gelu")
        if act not in _ACT:
            raise ConversionError(f"config.json: activation_function {act!r} is not supported ({', '.join(_ACT)})")
        for key in ("attention_heads", "layers"):
            need(hf, f"encoder_{key}")
        if hf["encoder_attention_heads"] != hf.get("decoder_attention_heads", hf["encoder_attention_heads"]):
            raise ConversionError("config.json: encoder_attention_heads != decoder_attention_heads (encore needs one)")
        if hf.get("decoder_vocab_size") not in (None, hf.get("vocab_size")):
            raise ConversionError("config.json: decoder_vocab_size differs from vocab_size (encore has one vocabulary)")
        d, heads, vocab = need(hf, "d_model"), hf["encoder_attention_heads"], need(hf, "vocab_size")
        enc_mlp, dec_mlp = need(hf, "encoder_ffn_dim"), need(hf, "decoder_ffn_dim")
        pick = lambda key, default=None: generation.get(key, hf.get(key, default))
        eos = pick("eos_token_id", 2)
        eos_ids = [eos] if isinstance(eos, int) else list(eos)
        pad = pick("pad_token_id", 1)
        start = pick("decoder_start_token_id")
        start = start if isinstance(start, int) else pick("bos_token_id", eos_ids[0])
        return ModelConfig(
            arch="encdec",
            vocab_size=vocab,
            d_model=d,
            n_encoder_layers=hf["encoder_layers"],
            n_decoder_layers=need(hf, "decoder_layers"),
            n_heads=heads,
            n_kv_heads=heads,
            head_dim=d // heads,
            mlp_dim=dec_mlp,
            encoder_shape={"mlp_dim": enc_mlp} if enc_mlp != dec_mlp else {},
            mlp_type=_ACT[act],
            max_seq_len=hf.get("max_position_embeddings", 1024),
            norm_eps=1e-5,
            norm_kind="layernorm",
            block_order=self.block_order,
            position_kind=self.position_kind,
            position_offset=pad + 1 if self.position_kind == "sinusoidal_fairseq" else self.position_offset,
            proj_bias=True,
            embed_norm=self.embed_norm,
            logits_bias=self.position_kind != "sinusoidal_fairseq",  # settled by the weights
            embed_scale=bool(hf.get("scale_embedding", False)),
            tie_embeddings=True,
            tie_encoder_embeddings=bool(hf.get("share_encoder_decoder_embeddings", True)),
            pad_token_id=pad,
            eos_token_id=eos_ids[0],
            extra_eos_token_ids=eos_ids[1:],
            bos_token_id=start,
            source_layout="encore",  # the tokenizer's own layout replaces it (`set_tokenizer`)
            family=self.model_types[0],
        )

    def settle(self, config: ModelConfig, names: set[str], get: Callable[[str], Tensor]) -> ModelConfig:
        """A logits bias when the checkpoint has one; a head of its own when it has one that differs."""
        bias = "final_logits_bias" in names and config.logits_bias
        tied = "lm_head.weight" not in names or bool(torch.equal(get("lm_head.weight"), get(self._table(config))))
        return config.replace(logits_bias=bias, tie_embeddings=tied)

    def _table(self, config: ModelConfig) -> str:
        return "model.shared.weight" if config.tie_encoder_embeddings else "model.decoder.embed_tokens.weight"

    def why_not(self, config: ModelConfig) -> str | None:
        checks = {
            "it is not an encoder-decoder": config.arch != "encdec",
            f"its blocks are not {self.model_types[0]}'s ({self.block_order}-norm LayerNorm, biases)": (
                config.norm_kind,
                config.block_order,
                config.proj_bias,
            )
            != ("layernorm", self.block_order, True),
            f"its positions are not {self.model_types[0]}'s": config.position_kind != self.position_kind
            or (config.position_kind == "learned" and config.position_offset != 2),
            "its embedding norm does not match": config.embed_norm != self.embed_norm,
            f"its MLP {config.mlp_type!r} has no name here": config.mlp_type not in _ACT_BACK,
            "it has grouped K/V heads, q/k norms, caps or a scale": config.n_kv_heads != config.n_heads
            or config.qk_norm
            or config.attn_softcap is not None
            or config.final_softcap is not None
            or config.head_scale is not None
            or config.attn_scale not in (None, config.head_dim**-0.5),
            "its heads are not d_model / n_heads wide": config.head_dim * config.n_heads != config.d_model,
            "its encoder has widths of its own beyond the MLP": bool(set(config.encoder_shape) - {"mlp_dim"}),
            "m2m100 has no logits bias": config.logits_bias and self.position_kind == "sinusoidal_fairseq",
        }
        return next((why for why, bad in checks.items() if bad), None)

    def config_to_hf(self, config: ModelConfig) -> Any:
        import transformers

        kwargs = dict(
            vocab_size=config.vocab_size,
            d_model=config.d_model,
            encoder_layers=config.n_encoder_layers,
            decoder_layers=config.n_decoder_layers,
            encoder_attention_heads=config.n_heads,
            decoder_attention_heads=config.n_heads,
            encoder_ffn_dim=config.encoder_config().mlp_dim,
            decoder_ffn_dim=config.mlp_dim,
            activation_function=_ACT_BACK[config.mlp_type],
            max_position_embeddings=config.max_seq_len,
            scale_embedding=config.embed_scale,
            dropout=0.0,
            pad_token_id=config.pad_token_id,
            eos_token_id=config.eos_token_id,
            bos_token_id=0 if config.family in ("bart", "mbart", "m2m_100") else None,
            decoder_start_token_id=config.bos_token_id,
            forced_eos_token_id=None,
        )
        if self.model_types[0] in ("bart", "mbart"):  # as the hub's configs say (CTranslate2's converter reads it)
            kwargs["normalize_before"] = self.block_order == "pre"
        if self.model_types[0] == "marian":
            kwargs["share_encoder_decoder_embeddings"] = config.tie_encoder_embeddings
        if self.model_types[0] == "m2m_100":
            kwargs.update(encoder_layerdrop=0.0, decoder_layerdrop=0.0, attention_dropout=0.0)
        return getattr(transformers, self.config_class)(**kwargs)

    def rules(self, config: ModelConfig) -> list[Rule]:
        table = self._table(config)
        rules: list[Rule] = [("embed.weight", (table,))]
        if not config.tie_encoder_embeddings:
            rules.append(("encoder_embed.weight", ("model.encoder.embed_tokens.weight",)))
        if not config.tie_embeddings:
            rules.append(("lm_head.weight", ("lm_head.weight",)))
        if config.logits_bias:
            rules.append(("logits_bias.bias", ("final_logits_bias",)))
        for stack, ours, positions in (("encoder", "encoder_", "encoder_positions"), ("decoder", "", "positions")):
            hf = f"model.{stack}"
            if self.position_kind == "learned":
                rules.append((f"{positions}.weight", (f"{hf}.embed_positions.weight",)))
            if self.embed_norm:
                rules += _norm(f"{ours}embed_norm", f"{hf}.layernorm_embedding")
            if self.block_order == "pre":
                rules += _norm("encoder_norm" if stack == "encoder" else "final_norm", f"{hf}.layer_norm")
            n = config.n_encoder_layers if stack == "encoder" else config.n_decoder_layers
            for i in range(n):
                rules += self._layer_rules(f"{stack}.{i}", f"{hf}.layers.{i}", cross=stack == "decoder")
        return rules

    def _layer_rules(self, enc: str, hf: str, cross: bool) -> list[Rule]:
        where = "post" if self.block_order == "post" else "pre"
        norm = lambda name: f"{enc}.{name}_norm" if where == "pre" else f"{enc}.post_{name}_norm"
        rules = [
            *_attention(f"{enc}.attn", f"{hf}.self_attn", "qkv"),
            *_norm(norm("attn"), f"{hf}.self_attn_layer_norm"),
            *_linear(f"{enc}.mlp.up", f"{hf}.fc1"),
            *_linear(f"{enc}.mlp.down", f"{hf}.fc2"),
            *_norm(norm("mlp"), f"{hf}.final_layer_norm"),
        ]
        if cross:
            rules += [
                *_linear(f"{enc}.cross.q", f"{hf}.encoder_attn.q_proj"),
                *_attention(f"{enc}.cross", f"{hf}.encoder_attn", "kv"),
                *_norm(norm("cross"), f"{hf}.encoder_attn_layer_norm"),
            ]
        return rules


def _linear(enc: str, hf: str) -> list[Rule]:
    return [(f"{enc}.weight", (f"{hf}.weight",)), (f"{enc}.bias", (f"{hf}.bias",))]


def _norm(enc: str, hf: str) -> list[Rule]:
    return _linear(enc, hf)


def _attention(enc: str, hf: str, fused: str) -> list[Rule]:
    """The fused projection (`qkv`, or a cross-attention's `kv`) and the output, with biases."""
    parts = lambda kind: tuple(f"{hf}.{p}_proj.{kind}" for p in fused)
    return [
        (f"{enc}.{fused}.weight", parts("weight")),
        (f"{enc}.{fused}.bias", parts("bias")),
        *_linear(f"{enc}.out", f"{hf}.out_proj"),
    ]


class MBartAdapter(BartAdapter):
    model_types = ("mbart",)
    architecture = "MBartForConditionalGeneration"
    config_class = "MBartConfig"
    block_order = "pre"


class MarianAdapter(BartAdapter):
    model_types = ("marian",)
    architecture = "MarianMTModel"
    config_class = "MarianConfig"
    position_kind, position_offset = "sinusoidal", 0
    embed_norm = False


class PegasusAdapter(MarianAdapter):
    model_types = ("pegasus",)
    architecture = "PegasusForConditionalGeneration"
    config_class = "PegasusConfig"
    block_order = "pre"


class M2M100Adapter(BartAdapter):
    """M2M100 and NLLB-200 (`model_type` m2m_100; `m2m100` read too)."""

    model_types = ("m2m_100", "m2m100")
    architecture = "M2M100ForConditionalGeneration"
    config_class = "M2M100Config"
    block_order = "pre"
    position_kind, position_offset = "sinusoidal_fairseq", 2
    embed_norm = False
