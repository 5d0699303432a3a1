"""Model configuration: one dataclass for both architectures, plus the named presets.

An encoder-decoder has ``n_encoder_layers > 0``; a decoder-only model has ``n_encoder_layers == 0``
and its decoder layers have no cross-attention. Everything else (widths, heads, RoPE, vocabulary,
special tokens) means the same thing for both, so a matched pair differs only in its layer counts.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from encore.presets import PRESETS

Arch = Literal["encdec", "deconly"]


@dataclass
class ModelConfig:
    arch: Arch = "encdec"
    vocab_size: int = 32128
    d_model: int = 1024
    n_encoder_layers: int = 20
    n_decoder_layers: int = 10
    n_heads: int = 6
    n_kv_heads: int = 3
    head_dim: int = 64
    mlp_dim: int = 4096
    # the MLP's activation: "gelu" (tanh approximation, encore), "gelu_exact" (erf: BART), "relu" (T5 v1.0,
    # M2M100), "silu" (Marian); gated act(gate) * up: "swiglu" (SiLU: Llama, UL2), "geglu" (GELU-tanh: Gemma,
    # Flan-T5)
    mlp_type: Literal["gelu", "gelu_exact", "relu", "silu", "swiglu", "geglu"] = "gelu"
    max_seq_len: int = 4096
    rope_theta: float = 10000.0
    # NTK-aware RoPE scaling: a factor s > 1 stretches the usable context by ~s without training,
    # by raising the base to theta * s^(d/(d-2)) (low frequencies stretch, high ones barely move).
    rope_scaling: float = 1.0
    dropout: float = 0.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    pad_token_id: int = 0
    bos_token_id: int = 1  # the decoder's start token
    eos_token_id: int = 2
    # --- block variants: the defaults are encore's own blocks; imported families (encore.convert) set
    # what their checkpoints need. Each picks modules when the model is built (model/layers.py).
    extra_eos_token_ids: list[int] = dataclasses.field(default_factory=list)  # more ids that end a reply
    # the norm: "rms" (x / rms(x) * w: Llama, T5, encore), "rms_offset" ((1 + w), in fp32: Gemma),
    # "layernorm" (mean and variance, a weight and a bias: BART, Marian, M2M100)
    norm_kind: Literal["rms", "rms_offset", "layernorm"] = "rms"
    # where norms sit around each sub-block: "pre" (x + f(norm(x)), a final norm after each stack),
    # "post" (norm(x + f(x)), no final norm: BART, Marian), "sandwich" (x + norm(f(norm(x))): Gemma)
    block_order: Literal["pre", "post", "sandwich"] = "pre"
    # how positions enter: "rope" (in the attention), "relative" (T5's bucketed bias on the scores of
    # every layer), "learned" (a table added to the embeddings, from `position_offset`: BART),
    # "sinusoidal" (fixed sin / cos vectors: Marian, Pegasus), "sinusoidal_fairseq" (M2M100 / NLLB's)
    position_kind: Literal["rope", "relative", "learned", "sinusoidal", "sinusoidal_fairseq"] = "rope"
    position_offset: int = 0  # the table row of position 0 ("learned", "sinusoidal_fairseq": 2)
    relative_buckets: int = 32  # T5's relative bias: buckets, and the distance where the last one starts
    relative_max_distance: int = 128
    proj_bias: bool = False  # biases on every projection: attention, cross-attention, MLP (BART, Marian)
    embed_norm: bool = False  # a norm right after the embeddings (and positions) of each stack (BART's)
    logits_bias: bool = False  # a bias on the output logits (BART's and Marian's `final_logits_bias`)
    head_scale: float | None = None  # hidden states scaled before the head (T5 v1.0: d_model ** -0.5)
    qk_norm: bool = False  # RMSNorm over each head's q and k before RoPE (Qwen3, Gemma 3)
    qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2)
    attn_scale: float | None = None  # the query scale (None: head_dim ** -0.5; Gemma: query_pre_attn_scalar ** -0.5)
    attn_softcap: float | None = None  # attention logits -> c * tanh(logits / c) (Gemma 2)
    final_softcap: float | None = None  # output logits -> c * tanh(logits / c) (Gemma 2)
    embed_scale: bool = False  # embeddings multiplied by sqrt(d_model) (Gemma)
    tie_encoder_embeddings: bool = True  # False: the encoder has its own embedding table (T5Gemma)
    # attention pattern per layer, "full" or "sliding" (a window of `sliding_window` positions: causal
    # in the decoder, |i - j| <= window in the encoder); empty: every layer full
    encoder_layer_types: list[str] = dataclasses.field(default_factory=list)
    decoder_layer_types: list[str] = dataclasses.field(default_factory=list)
    sliding_window: int = 0
    # an encoder sliding layer sees keys i - back .. i + ahead: [back, ahead] (empty: [window, window],
    # T5Gemma's |i - j| <= window; T5Gemma 2 splits its window around the query)
    encoder_window: list[int] = dataclasses.field(default_factory=list)
    # the encoder's own shape where it differs from the decoder's: any of ENCODER_SHAPE_FIELDS (T5Gemma
    # 9B-2B's widths; Whisper's 1,500 sinusoidal positions beside the decoder's 448 learned ones); {} for
    # the decoder's. Cross-attention projects its K/V from the encoder's width.
    encoder_shape: dict[str, Any] = dataclasses.field(default_factory=dict)
    # what the encoder reads: "tokens" (an embedding table) or "audio" (log-mel frames [B, audio_mels,
    # 2 S] through Whisper's two-convolution stem)
    encoder_input: Literal["tokens", "audio"] = "tokens"
    audio_mels: int = 80
    merged_attention: bool = False  # the decoder's self- and cross-attention are one softmax (T5Gemma 2)
    eoi_token_id: int | None = None  # a token whose input embedding is a vector of its own (T5Gemma 2's <eoi>)
    rope_local_theta: float | None = None  # RoPE base of the sliding layers (None: rope_theta)
    # RoPE scaling of the full layers as the checkpoint's family ships it: {"rope_type": "linear",
    # "factor": f} or {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}; None for none (`rope_scaling` is encore's NTK factor)
    rope_params: dict[str, Any] | None = None
    # how a source / prompt is laid out around its text ids: "encore" (encoder-decoder: ids + EOS;
    # decoder-only: BOS + ids + EOS), "bos" (BOS + ids, as Llama's and Gemma's tokenizers do), "plain", or
    # "template": source_prefix + ids + source_suffix, the checkpoint tokenizer's own special tokens
    # (T5: ids </s>; BART: <s> ids </s>; NLLB: lang ids </s>)
    source_layout: Literal["encore", "bos", "plain", "template"] = "encore"
    source_prefix: list[int] = dataclasses.field(default_factory=list)
    source_suffix: list[int] = dataclasses.field(default_factory=list)
    # the language token inside the template (NLLB, mBART-50, M2M100), which a request's source
    # language replaces (`source_ids(ids, lang)`); None for a model without languages
    source_lang_id: int | None = None
    family: str = "encore"  # the checkpoint family it came from (encore.convert), for save_pretrained(format="hf")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def fail(field: str, why: str) -> None:
            raise ValueError(f"ModelConfig.{field}: {why} (got {getattr(self, field)!r})")

        if self.arch not in ("encdec", "deconly"):
            fail("arch", "must be 'encdec' or 'deconly'")
        if self.source_layout not in SOURCE_LAYOUTS:
            fail("source_layout", f"must be one of {', '.join(map(repr, SOURCE_LAYOUTS))}")
        template = [*self.source_prefix, *self.source_suffix]
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size for i in template):
            fail("source_prefix", f"source_prefix / source_suffix must be token ids in [0, {self.vocab_size})")
        if self.source_lang_id is not None and self.source_lang_id not in template:
            fail("source_lang_id", "must be one of the template's tokens (source_prefix / source_suffix)")
        for name, kinds in KINDS.items():
            if getattr(self, name) not in kinds:
                fail(name, f"must be one of {', '.join(map(repr, kinds))}")
        if self.position_kind == "relative" and self.n_kv_heads != self.n_heads:
            fail("n_kv_heads", "T5's relative bias is per head: it needs n_kv_heads == n_heads")
        if self.position_offset < 0 or self.relative_buckets < 2 or self.relative_max_distance < 1:
            fail("position_offset", "position_offset must be >= 0, relative_buckets >= 2, relative_max_distance >= 1")
        for name in (
            "vocab_size",
            "d_model",
            "n_decoder_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "mlp_dim",
            "max_seq_len",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                fail(name, "must be a positive integer")
        if self.arch == "encdec" and self.n_encoder_layers <= 0:
            fail("n_encoder_layers", "an encoder-decoder needs at least one encoder layer")
        if self.arch == "deconly" and self.n_encoder_layers != 0:
            fail("n_encoder_layers", "a decoder-only model has no encoder layers")
        if self.n_heads % self.n_kv_heads:
            fail("n_kv_heads", f"must divide n_heads={self.n_heads}")
        if self.head_dim % 2 and self.position_kind == "rope":
            fail("head_dim", "RoPE needs an even head dimension")
        if self.rope_theta <= 0:
            fail("rope_theta", "must be positive")
        if self.rope_scaling < 1.0:
            fail("rope_scaling", "must be >= 1 (1 disables NTK scaling)")
        if not 0.0 <= self.dropout < 1.0:
            fail("dropout", "must be in [0, 1)")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                fail(name, f"must be a token id in [0, vocab_size={self.vocab_size})")
        if any(not isinstance(i, int) or not 0 <= i < self.vocab_size for i in self.extra_eos_token_ids):
            fail("extra_eos_token_ids", f"must be token ids in [0, vocab_size={self.vocab_size})")
        for name, n in (("encoder_layer_types", self.n_encoder_layers), ("decoder_layer_types", self.n_decoder_layers)):
            types = getattr(self, name)
            if types and (len(types) != n or set(types) - {"full", "sliding"}):
                fail(name, f"must be empty or {n} entries of 'full' / 'sliding'")
            if "sliding" in types and self.sliding_window <= 0:
                fail("sliding_window", f"{name} has sliding layers: the window must be a positive integer")
        if self.encoder_window and (len(self.encoder_window) != 2 or min(self.encoder_window) < 0):
            fail("encoder_window", "must be empty or [back, ahead], two non-negative integers")
        if self.merged_attention and (self.arch != "encdec" or not self.qk_norm or self.position_kind != "rope"):
            fail("merged_attention", "needs an encoder-decoder with q/k norms (T5Gemma 2's blocks)")
        if self.eoi_token_id is not None and not (self.embed_scale and 0 <= self.eoi_token_id < self.vocab_size):
            fail("eoi_token_id", "must be a token id of a model with scaled embeddings (or None)")
        for name in ("attn_softcap", "final_softcap", "attn_scale", "rope_local_theta", "head_scale"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                fail(name, "must be positive (or None)")
        if self.rope_params is not None and self.rope_params.get("rope_type") not in ("linear", "llama3"):
            fail("rope_params", "rope_type must be 'linear' or 'llama3' (the RoPE scalings encore implements)")
        if self.encoder_shape:
            self._validate_encoder_shape(fail)
        if self.encoder_input == "audio" and (self.arch != "encdec" or self.tie_encoder_embeddings):
            fail(
                "encoder_input",
                "audio needs an encoder-decoder whose encoder has its own input (tie_encoder_embeddings)",
            )
        if not isinstance(self.audio_mels, int) or self.audio_mels <= 0:
            fail("audio_mels", "must be a positive integer")

    def _validate_encoder_shape(self, fail) -> None:
        if self.arch != "encdec" or set(self.encoder_shape) - set(ENCODER_SHAPE_FIELDS):
            fail("encoder_shape", f"an encoder-decoder's encoder widths: keys among {', '.join(ENCODER_SHAPE_FIELDS)}")
        if self.encoder_width != self.d_model and self.tie_encoder_embeddings:
            fail("encoder_shape", "an encoder of its own width needs its own embedding table (tie_encoder_embeddings)")
        if self.merged_attention:
            fail("encoder_shape", "T5Gemma 2's merged attention reads encoder states of the decoder's width")
        try:
            self.encoder_config()
        except ValueError as e:
            fail("encoder_shape", f"the encoder's config is invalid: {e}")

    # --- derived --------------------------------------------------------------------------------

    def encoder_config(self) -> ModelConfig:
        """The config the encoder's blocks, norm and own embedding table are built from: this one with
        `encoder_shape`'s widths (itself when the encoder has the decoder's)."""
        return self.replace(**self.encoder_shape, encoder_shape={}) if self.encoder_shape else self

    @property
    def encoder_width(self) -> int:
        """The width of the encoder's states (what cross-attention projects K/V from)."""
        return self.encoder_shape.get("d_model", self.d_model)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends a reply: `eos_token_id` first."""
        return (self.eos_token_id, *(i for i in self.extra_eos_token_ids if i != self.eos_token_id))

    def source_ids(self, ids: list[int], lang: int | None = None) -> list[int]:
        """A source's text ids laid out as the model reads them (`source_layout`); `lang`: the source
        language's token, in place of the template's (`source_lang_id`)."""
        if lang is not None and self.source_lang_id is None:
            raise ValueError("this model's tokenizer lays out no source language (it is not multilingual)")
        return lay_out_source(
            ids, self.source_layout, self.arch, self.bos_token_id, self.eos_token_id, self.template(lang)
        )

    def with_source_lang(self, lang: int) -> ModelConfig:
        """This config with `lang` as the template's source language."""
        prefix, suffix = self.template(lang)
        return self.replace(source_prefix=prefix, source_suffix=suffix, source_lang_id=lang)

    def template(self, lang: int | None = None) -> tuple[list[int], list[int]]:
        """(prefix, suffix) of a "template" layout, with `lang` in place of `source_lang_id`."""
        swap = lambda ids: [lang if lang is not None and i == self.source_lang_id else i for i in ids]
        return swap(self.source_prefix), swap(self.source_suffix)

    @property
    def source_ends_in_eos(self) -> bool:
        """Whether the layout ends a source with EOS (encore's: `x [EOS]`; an imported family's: no)."""
        return self.source_ids([])[-1:] == [self.eos_token_id]

    def cache_positions(self, input_len: int, new_tokens: int) -> tuple[int, int]:
        """(self, cross): the K/V positions a request of `input_len` input tokens and `new_tokens` new
        ones holds. Encoder-decoder: the outputs (the start token first; at least one) and the input;
        decoder-only: prompt + outputs, no cross-attention. After a prefill (`new_tokens` 0) a row has
        written the self positions of (input_len, 0)."""
        if self.arch == "encdec":
            return max(new_tokens, 1), input_len
        return input_len + new_tokens, 0

    def positions_needed(self, input_len: int, new_tokens: int) -> int:
        """The RoPE positions such a request reaches: its longest sequence (encoder input or decoder)."""
        return max(self.cache_positions(input_len, new_tokens)[0], input_len)

    def max_input_len(self, new_tokens: int) -> int:
        """The longest input that still leaves room for `new_tokens` within `max_seq_len`."""
        return self.max_seq_len - (self.positions_needed(0, new_tokens) if self.arch == "deconly" else 0)

    @property
    def gated_mlp(self) -> bool:
        return self.mlp_type in ("swiglu", "geglu")

    def encoder_span(self) -> tuple[int, int] | None:
        """(back, ahead): the keys an encoder sliding layer sees around its query; None without one."""
        if "sliding" not in self.encoder_layer_types:
            return None
        back, ahead = self.encoder_window or (self.sliding_window, self.sliding_window)
        return back, ahead

    def layer_types(self, part: str) -> list[str]:
        """ "full" / "sliding" for each layer of `part` ("encoder" or "decoder")."""
        types = self.encoder_layer_types if part == "encoder" else self.decoder_layer_types
        n = self.n_encoder_layers if part == "encoder" else self.n_decoder_layers
        return list(types) or ["full"] * n

    # --- parameter accounting -------------------------------------------------------------------

    def matrix_params(self) -> dict[str, int]:
        """Parameters of the weight matrices, grouped by when generation uses them (the cost model
        prices these): per layer `self_attn` (fused QKV + output), `mlp`; per decoder layer of an
        encoder-decoder `cross_q_out` (query + output, every step) and `cross_kv` (once per request);
        `head` (vocab x d_model)."""
        d, hd = self.d_model, self.head_dim
        encdec = self.arch == "encdec"
        return {
            "self_attn": d * (self.n_heads + 2 * self.n_kv_heads) * hd + self.n_heads * hd * d,
            "cross_q_out": 2 * d * self.n_heads * hd if encdec and not self.merged_attention else 0,
            "cross_kv": self.encoder_width * 2 * self.n_kv_heads * hd if encdec else 0,
            "mlp": (3 if self.gated_mlp else 2) * d * self.mlp_dim,
            "head": self.vocab_size * d,
        }

    def _attention_extra(self) -> int:
        """Parameters of one attention beside its matrices: q/k norms, q/k/v (and output) biases."""
        norms = 2 * self.head_dim if self.qk_norm else 0
        qkv = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim if self.qkv_bias or self.proj_bias else 0
        return norms + qkv + (self.d_model if self.proj_bias else 0)

    def _norm_params(self) -> int:
        return self.d_model * (2 if self.norm_kind == "layernorm" else 1)

    def _stack_extra(self) -> int:
        """Parameters a stack has besides its layers: its final norm, embedding norm and positions."""
        final = self._norm_params() if self.block_order != "post" else 0
        embed_norm = self._norm_params() if self.embed_norm else 0
        positions = {
            "learned": (self.max_seq_len + self.position_offset) * self.d_model,
            "relative": self.relative_buckets * self.n_heads,
        }.get(self.position_kind, 0)
        return final + embed_norm + positions

    def _encoder_input_params(self) -> int:
        """The encoder's own input: an embedding table, or Whisper's stem (two width-3 convolutions)."""
        d = self.encoder_width
        if self.encoder_input == "audio":
            return 3 * self.audio_mels * d + d + 3 * d * d + d
        return self.vocab_size * d

    def param_counts(self) -> dict[str, int]:
        """Parameters split into embedding / encoder / decoder / total (tied head counted once)."""
        m = self.matrix_params()
        per_norm = 2 if self.block_order == "sandwich" else 1  # a norm beside each sub-block; two when sandwiched
        attn_extra = self._attention_extra()
        mlp_bias = ((2 if self.gated_mlp else 1) * self.mlp_dim + self.d_model) if self.proj_bias else 0
        enc = self.encoder_config()  # the encoder's own widths
        enc_m = enc.matrix_params()
        enc_mlp_bias = ((2 if enc.gated_mlp else 1) * enc.mlp_dim + enc.d_model) if enc.proj_bias else 0
        enc_layer = enc_m["self_attn"] + enc_m["mlp"] + 2 * per_norm * enc._norm_params() + enc._attention_extra()
        enc_layer += enc_mlp_bias
        # cross-attention: q, k/v and output, with the same norms and biases as the self-attention's
        cross = m["cross_q_out"] + m["cross_kv"] + per_norm * self._norm_params() + attn_extra
        if self.arch != "encdec":
            cross = 0
        if self.merged_attention:  # no cross-attention block: a copy of the K/V projection reads the encoder
            cross = m["cross_kv"]
        dec_layer = m["self_attn"] + m["mlp"] + 2 * per_norm * self._norm_params() + cross + attn_extra + mlp_bias
        tables = 1 + (not self.tie_embeddings)
        embedding = self.vocab_size * self.d_model * tables + (self.d_model if self.eoi_token_id is not None else 0)
        if self.arch == "encdec" and not self.tie_encoder_embeddings:
            embedding += self._encoder_input_params()
        encoder = self.n_encoder_layers * enc_layer + (enc._stack_extra() if self.n_encoder_layers else 0)
        decoder = self.n_decoder_layers * dec_layer + self._stack_extra()
        return {"embedding": embedding, "encoder": encoder, "decoder": decoder, "total": embedding + encoder + decoder}

    # --- JSON round trip ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_dict(self) -> dict[str, Any]:
        """What config.json holds. `rope_scaling` is written as `rope_ntk_factor`: transformers parses a
        `rope_scaling` key in any config.json (AutoTokenizer reads it too) as a dict and fails on a float."""
        data = self.to_dict()
        data["rope_ntk_factor"] = data.pop("rope_scaling")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        data = {**data}
        if "rope_ntk_factor" in data:
            data["rope_scaling"] = data.pop("rope_ntk_factor")
        if data.pop("norm_plus_one", False):  # configs written before the kinds (2026-12-05)
            data.setdefault("norm_kind", "rms_offset")
        if data.pop("sandwich_norm", False):
            data.setdefault("block_order", "sandwich")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"model_type", "encore_version"})
        if unknown:
            raise ValueError(f"{source}: unknown ModelConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no model config here") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data, source=str(path))

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # --- presets --------------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**copy.deepcopy(PRESETS[name]), **overrides})  # (no list or dict shared between configs)

    @staticmethod
    def preset_names() -> list[str]:
        return sorted(PRESETS)


SOURCE_LAYOUTS = ("encore", "bos", "plain", "template")
KINDS = {  # the enumerated block variants: each picks modules when the model is built (model/layers.py)
    "mlp_type": ("gelu", "gelu_exact", "relu", "silu", "swiglu", "geglu"),
    "norm_kind": ("rms", "rms_offset", "layernorm"),
    "block_order": ("pre", "post", "sandwich"),
    "position_kind": ("rope", "relative", "learned", "sinusoidal", "sinusoidal_fairseq"),
    "encoder_input": ("tokens", "audio"),
}
ENCODER_SHAPE_FIELDS = ("d_model", "n_heads", "n_kv_heads", "mlp_dim", "max_seq_len", "position_kind")


def lay_out_source(
    ids: list[int], layout: str, arch: str, bos: int, eos: int, template: tuple[list[int], list[int]] = ([], [])
) -> list[int]:
    """The ids a model reads for a source's text ids: "bos" -> BOS + ids, "plain" -> ids, "encore" ->
    ids + EOS (encoder-decoder) or BOS + ids + EOS (decoder-only), "template" -> prefix + ids + suffix.
    The one place the layouts live (`ModelConfig.source_ids`, the fine-tuning collators, the ONNX
    runtime)."""
    if layout == "template":
        return [*template[0], *ids, *template[1]]
    if layout == "bos":
        return [bos, *ids]
    if layout == "plain":
        return list(ids)
    return [*ids, eos] if arch == "encdec" else [bos, *ids, eos]
