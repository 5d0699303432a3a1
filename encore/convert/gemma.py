"""Gemma blocks: Gemma 3 text models (decoder-only: gemma-3-270m, 1b, ...) and T5Gemma (an
encoder-decoder of Gemma 2 blocks). Both: RMSNorm scaled by `1 + w`, sandwich norms, GeGLU (tanh),
embeddings times sqrt(d), a query scale of `query_pre_attn_scalar ** -0.5`, alternating sliding and
full layers. Gemma 3 adds q/k norms and a separate RoPE base for its sliding layers; T5Gemma (Gemma 2)
soft-caps attention and output logits, and keeps an embedding table for its encoder."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor

from encore.config import ModelConfig
from encore.convert.adapter import (
    ConversionError,
    Getter,
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
from encore.vision.config import VisionConfig

_GEMMA_BLOCKS = dict(mlp_type="geglu", norm_kind="rms_offset", block_order="sandwich", embed_scale=True)


def _gemma_fields(hf: dict[str, Any]) -> dict[str, Any]:
    """The block fields a Gemma module config sets (shared by Gemma 3 and T5Gemma's halves)."""
    if hf.get("hidden_activation", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ConversionError(f"config.json: hidden_activation {hf['hidden_activation']!r} (Gemma uses gelu tanh)")
    if hf.get("attention_bias"):
        raise ConversionError("config.json: attention_bias on Gemma blocks is not supported")
    d, heads = need(hf, "hidden_size"), need(hf, "num_attention_heads")
    head_dim = hf.get("head_dim") or d // heads
    return dict(
        _GEMMA_BLOCKS,
        vocab_size=need(hf, "vocab_size"),
        d_model=d,
        n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        mlp_dim=need(hf, "intermediate_size"),
        max_seq_len=hf.get("max_position_embeddings", 8192),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        attn_scale=float(hf.get("query_pre_attn_scalar") or head_dim) ** -0.5,
        attn_softcap=hf.get("attn_logit_softcapping"),
        final_softcap=hf.get("final_logit_softcapping"),
    )


def _gemma_why_not(config: ModelConfig) -> str | None:
    if any(getattr(config, k) != v for k, v in _GEMMA_BLOCKS.items()):
        return "its blocks are not Gemma's (geglu MLP, 1 + w sandwich norms, scaled embeddings)"
    if config.qkv_bias or config.rope_scaling != 1.0:
        return "it has q/k/v biases or NTK RoPE scaling"
    if config.position_kind != "rope" or config.proj_bias or config.embed_norm or config.logits_bias:
        return "its positions or biases are not Gemma's"
    return None


def _gemma_to_hf(config: ModelConfig, part: str) -> dict[str, Any]:
    kinds = config.layer_types(part)
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.mlp_dim,
        num_hidden_layers=len(kinds),
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        query_pre_attn_scalar=_scalar((config.attn_scale or config.head_dim**-0.5) ** -2),
        attn_logit_softcapping=config.attn_softcap,
        final_logit_softcapping=config.final_softcap,
        sliding_window=config.sliding_window or None,
        layer_types=[f"{k}_attention" for k in kinds],
        tie_word_embeddings=config.tie_embeddings,
        **hf_special_tokens(config),
    )


T5GEMMA_NORMS = {
    "attn_norm": "pre_self_attn_layernorm",
    "post_attn_norm": "post_self_attn_layernorm",
    "mlp_norm": "pre_feedforward_layernorm",
    "post_mlp_norm": "post_feedforward_layernorm",
}
GEMMA3_NORMS = {**T5GEMMA_NORMS, "attn_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm"}
CROSS_NORMS = {"cross_norm": "pre_cross_attn_layernorm", "post_cross_norm": "post_cross_attn_layernorm"}


def _scalar(x: float) -> int | float:
    """query_pre_attn_scalar as the configs spell it: an integer when it is one."""
    return round(x) if abs(x - round(x)) < 1e-6 * x else x


def _sandwich_rules(enc: str, hf: str, config: ModelConfig, norms: dict[str, str]) -> list[Rule]:
    """One Gemma layer: its norms (`norms`: encore name -> the family's), self-attention and MLP."""
    return [
        *((f"{enc}.{ours}.weight", (f"{hf}.{theirs}.weight",)) for ours, theirs in norms.items()),
        *attention_rules(f"{enc}.attn", f"{hf}.self_attn", config),
        *gated_mlp_rules(f"{enc}.mlp", f"{hf}.mlp"),
    ]


class Gemma3TextAdapter(StateDictAdapter):
    model_types = ("gemma3_text",)
    architecture = "Gemma3ForCausalLM"

    def config_from_hf(self, hf: dict[str, Any], generation: dict[str, Any]) -> ModelConfig:
        n_layers = need(hf, "num_hidden_layers")
        kinds, window = layer_kinds(hf, n_layers)
        theta, rope_params = rope_settings(hf, "full_attention")
        local = hf.get("rope_local_base_freq") or rope_settings(hf, "sliding_attention")[0]
        return ModelConfig(
            **_gemma_fields(hf),
            arch="deconly",
            n_encoder_layers=0,
            n_decoder_layers=n_layers,
            qk_norm=True,
            rope_theta=theta,
            rope_params=rope_params,
            rope_local_theta=float(local) if kinds else None,
            decoder_layer_types=kinds,
            sliding_window=window,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            source_layout="bos",
            family="gemma3_text",
            **special_tokens(hf, generation, need(hf, "vocab_size")),
        )

    def why_not(self, config: ModelConfig) -> str | None:
        if config.arch != "deconly" or not config.qk_norm:
            return "it is not a decoder-only model with q/k norms"
        return _gemma_why_not(config)

    def config_to_hf(self, config: ModelConfig) -> Any:
        from transformers import Gemma3TextConfig

        kwargs = _gemma_to_hf(config, "decoder")
        full = rope_to_hf(config)
        local = {"rope_type": "default", "rope_theta": config.rope_local_theta or config.rope_theta}
        kwargs["rope_parameters"] = {"full_attention": full, "sliding_attention": local}
        return Gemma3TextConfig(**kwargs)

    def rules(self, config: ModelConfig) -> list[Rule]:
        rules: list[Rule] = [
            ("embed.weight", ("model.embed_tokens.weight",)),
            ("final_norm.weight", ("model.norm.weight",)),
        ]
        if not config.tie_embeddings:
            rules.append(("lm_head.weight", ("lm_head.weight",)))
        for i in range(config.n_decoder_layers):
            rules += _sandwich_rules(f"decoder.{i}", f"model.layers.{i}", config, GEMMA3_NORMS)
        return rules


# the widths a T5Gemma encoder may have of its own (9B-2B), by their config.json and ModelConfig names
WIDTHS = {
    "hidden_size": "d_model",
    "intermediate_size": "mlp_dim",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
}


def _encoder_decoder(
    enc: dict[str, Any], dec: dict[str, Any], hf: dict[str, Any], generation: dict[str, Any], same: tuple[str, ...]
) -> tuple[dict[str, Any], int]:
    """The fields both T5Gemma generations read the same way from their encoder and decoder configs
    (which must agree on `same`), and the sliding window. The decoder's widths are the model's; an
    encoder of other widths (T5Gemma 9B-2B) gets them as `encoder_shape`."""
    for key in same:
        if enc.get(key) != dec.get(key):
            raise ConversionError(
                f"config.json: encoder and decoder differ in {key} ({enc.get(key)} vs {dec.get(key)}); "
                f"encore's encoder and decoder may differ only in {', '.join(WIDTHS)}"
            )
    enc_kinds, window = layer_kinds(enc, need(enc, "num_hidden_layers", "config.json encoder"))
    dec_kinds, dec_window = layer_kinds(dec, need(dec, "num_hidden_layers", "config.json decoder"))
    ids = {k: hf[k] for k in ("eos_token_id", "bos_token_id", "pad_token_id") if k in hf}
    tokens = special_tokens({**dec, **ids}, generation, need(dec, "vocab_size"))
    start = generation.get("decoder_start_token_id", hf.get("decoder_start_token_id"))
    if isinstance(start, int):
        tokens["bos_token_id"] = start
    fields = dict(
        _gemma_fields(dec),
        arch="encdec",
        n_encoder_layers=enc["num_hidden_layers"],
        n_decoder_layers=dec["num_hidden_layers"],
        encoder_layer_types=enc_kinds,
        decoder_layer_types=dec_kinds,
        sliding_window=window or dec_window,
        source_layout="bos",
        encoder_shape={ours: enc[key] for key, ours in WIDTHS.items() if key in enc and enc[key] != dec.get(key)},
        **tokens,
    )
    return fields, window or dec_window


class T5GemmaAdapter(StateDictAdapter):
    model_types = ("t5gemma",)
    architecture = "T5GemmaForConditionalGeneration"
    _same = (
        "vocab_size",
        "head_dim",
        "query_pre_attn_scalar",
        "attn_logit_softcapping",
        "rms_norm_eps",
        "sliding_window",
        "hidden_activation",
    )

    def config_from_hf(self, hf: dict[str, Any], generation: dict[str, Any]) -> ModelConfig:
        enc, dec = need(hf, "encoder"), need(hf, "decoder")
        fields, _ = _encoder_decoder(enc, dec, hf, generation, self._same)
        theta, rope_params = rope_settings(dec)
        return ModelConfig(
            **fields,
            rope_theta=theta,
            rope_params=rope_params,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            tie_encoder_embeddings=False,  # the loader ties them when the two tables are equal
            family="t5gemma",
        )

    def why_not(self, config: ModelConfig) -> str | None:
        if config.arch != "encdec":
            return "it is not an encoder-decoder"
        if config.qk_norm or config.rope_local_theta is not None:
            return "it has q/k norms or a local RoPE base (Gemma 3 blocks, not T5Gemma's Gemma 2 blocks)"
        return _gemma_why_not(config)

    def config_to_hf(self, config: ModelConfig) -> Any:
        from transformers import T5GemmaConfig, T5GemmaModuleConfig

        parts = {}
        for part in ("encoder", "decoder"):
            kwargs = _gemma_to_hf(config.encoder_config() if part == "encoder" else config, part)
            kwargs["rope_parameters"] = rope_to_hf(config)
            parts[part] = T5GemmaModuleConfig(**kwargs)
        hf = T5GemmaConfig(
            encoder=parts["encoder"].to_dict(),
            decoder=parts["decoder"].to_dict(),
            vocab_size=config.vocab_size,
            tie_word_embeddings=config.tie_embeddings,
            **hf_special_tokens(config),
        )
        hf.decoder_start_token_id = config.bos_token_id
        return hf

    def rules(self, config: ModelConfig) -> list[Rule]:
        enc_embed = "embed.weight" if config.tie_encoder_embeddings else "encoder_embed.weight"
        rules: list[Rule] = [
            ("embed.weight", ("model.decoder.embed_tokens.weight",)),
            (enc_embed, ("model.encoder.embed_tokens.weight",)),
            ("encoder_norm.weight", ("model.encoder.norm.weight",)),
            ("final_norm.weight", ("model.decoder.norm.weight",)),
        ]
        if not config.tie_embeddings:
            rules.append(("lm_head.weight", ("lm_head.out_proj.weight",)))
        for i in range(config.n_encoder_layers):
            rules += _sandwich_rules(f"encoder.{i}", f"model.encoder.layers.{i}", config, T5GEMMA_NORMS)
        for i in range(config.n_decoder_layers):
            enc, hf = f"decoder.{i}", f"model.decoder.layers.{i}"
            rules += _sandwich_rules(enc, hf, config, {**T5GEMMA_NORMS, **CROSS_NORMS})
            rules += [
                (f"{enc}.cross.q.weight", (f"{hf}.cross_attn.q_proj.weight",)),
                (f"{enc}.cross.kv.weight", (f"{hf}.cross_attn.k_proj.weight", f"{hf}.cross_attn.v_proj.weight")),
                (f"{enc}.cross.out.weight", (f"{hf}.cross_attn.o_proj.weight",)),
            ]
        return rules


class T5Gemma2Adapter(StateDictAdapter):
    """T5Gemma 2: Gemma 3 blocks (q/k norms, local and global RoPE bases), one embedding table for the
    encoder, the decoder and the head (with T5Gemma 2's <eoi> vector), a window split around the
    encoder's queries, and a decoder whose self- and cross-attention are one softmax. The SigLIP
    tower and Gemma 3's pooling projector load when asked (`encore.load(path, vision=True)`: a
    `VisionLanguageModel`); the text model alone otherwise (docs/convert.md)."""

    model_types = ("t5gemma2",)
    architecture = "T5Gemma2ForConditionalGeneration"
    memory_names = {"model.encoder.text_model.": "model.encoder."}
    vision_prefix = "model.encoder.vision_tower."
    projector_prefix = "model.encoder.multi_modal_projector."

    def vision_from_hf(self, hf: dict[str, Any], tokenizer: Any = None) -> tuple[VisionConfig, dict[str, Any]]:
        encoder = need(hf, "encoder")
        vc = need(encoder, "vision_config")
        if vc.get("model_type", "siglip_vision_model") != "siglip_vision_model":
            raise ConversionError(f"config.json: encoder.vision_config is {vc['model_type']!r}, not a SigLIP tower")
        options = {k: vc[k] for k in ("hidden_act", "layer_norm_eps", "vision_use_head", "num_channels") if k in vc}
        vision = VisionConfig(
            kind="siglip",
            hidden_size=need(vc, "hidden_size"),
            intermediate_size=need(vc, "intermediate_size"),
            num_layers=need(vc, "num_hidden_layers"),
            num_heads=need(vc, "num_attention_heads"),
            image_size=need(vc, "image_size"),
            patch_size=need(vc, "patch_size"),
            projector="pool",
            pooled_tokens=encoder.get("mm_tokens_per_image", 256),
            norm_eps=vc.get("layer_norm_eps", 1e-6),
            resample="bilinear",  # Gemma 3's image processor
            tower_options=options,
        )
        # as Gemma 3's processor lays an image out: "\n\n" <start_of_image> k x <image> <end_of_image> "\n\n"
        gap = tokenizer.encode("\n\n", add_special_tokens=False) if tokenizer is not None else []
        gap = gap if len(gap) == 1 else []  # (a tokenizer without the one-token "\n\n": none)
        ids = {
            "image_token_id": hf.get("image_token_index", encoder.get("image_token_index")),
            "image_start_ids": [*gap, encoder.get("boi_token_index", 255_999)],
            "image_end_ids": [hf.get("eoi_token_index") or encoder.get("eoi_token_index", 256_000), *gap],
        }
        return vision.validate(), ids

    def vision_tensors(self, get: Getter, names: list[str]) -> Iterator[tuple[str, Tensor]]:
        """(name in `ImageEncoder`, tensor): the tower as it is, the projector's norm, and its
        [vision, text] matrix transposed into a linear layer's weight."""
        for name in names:
            if name.startswith(self.vision_prefix):
                yield "tower." + name[len(self.vision_prefix) :], get(name)
        yield "projector.norm.weight", get(self.projector_prefix + "mm_soft_emb_norm.weight")
        yield "projector.proj.weight", get(self.projector_prefix + "mm_input_projection_weight").t().contiguous()

    def vision_to_hf(self, config: ModelConfig, vlm: Any) -> tuple[Any, dict[str, Tensor], Any]:
        """The inverse of `vision_from_hf` + `vision_tensors`: SigLIP's config and tensors as they were,
        Gemma 3's projector (its matrix [vision, text] again), the image tokens' ids, and Gemma 3's image
        processor with the tower's size, resampling and normalisation (`encore.vision.preprocess`'s)."""
        from transformers import Gemma3ImageProcessorPil

        vc, tower = vlm.vision_config, vlm.vision
        if vc.kind != "siglip" or vc.projector != "pool" or tower.scorer is not None:
            raise ConversionError(
                f"T5Gemma 2's files hold a SigLIP tower and Gemma 3's pooling projector; this model has a "
                f"{vc.kind} tower and a{' learned-selection' if tower.scorer is not None else ''} {vc.projector} "
                "projector (save it in encore's format)"
            )
        start, end = vlm.image_start_ids, vlm.image_end_ids
        if not start or not end:
            raise ConversionError("T5Gemma 2 puts <start_of_image> / <end_of_image> around images; this has none")
        siglip = dict(
            model_type="siglip_vision_model",
            hidden_size=vc.hidden_size,
            intermediate_size=vc.intermediate_size,
            num_hidden_layers=vc.num_layers,
            num_attention_heads=vc.num_heads,
            image_size=vc.image_size,
            patch_size=vc.patch_size,
            layer_norm_eps=vc.norm_eps,
            **{k: v for k, v in vc.tower_options.items() if k != "layer_norm_eps"},
        )
        ids = {"boi_token_index": start[-1], "eoi_token_index": end[0], "image_token_index": vlm.image_token_id}
        encoder = {"vision_config": siglip, "mm_tokens_per_image": vc.pooled_tokens, **ids}
        hf = self._config(config, encoder, {"image_token_index": vlm.image_token_id})
        state = {k: v.detach().cpu() for k, v in tower.state_dict().items()}
        out = {self.vision_prefix + k.removeprefix("tower."): v for k, v in state.items() if k.startswith("tower.")}
        out[self.projector_prefix + "mm_soft_emb_norm.weight"] = state["projector.norm.weight"]
        out[self.projector_prefix + "mm_input_projection_weight"] = state["projector.proj.weight"].t().contiguous()
        mean, std = vc.mean_std
        processor = Gemma3ImageProcessorPil(
            size={"height": vc.image_size, "width": vc.image_size},
            image_mean=list(mean),
            image_std=list(std),
            resample={"bilinear": 2, "bicubic": 3}[vc.resample],  # PIL's codes
        )
        return hf, out, processor

    def config_from_hf(self, hf: dict[str, Any], generation: dict[str, Any]) -> ModelConfig:
        encoder, dec = need(hf, "encoder"), need(hf, "decoder")
        same = (*T5GemmaAdapter._same, *WIDTHS, "final_logit_softcapping")  # merged attention: one width
        fields, w = _encoder_decoder(encoder.get("text_config") or encoder, dec, hf, generation, same)
        theta, rope_params = rope_settings(dec, "full_attention")
        eoi = hf.get("eoi_token_index") or encoder.get("eoi_token_index")
        sliding = fields["encoder_layer_types"] or fields["decoder_layer_types"]
        return ModelConfig(
            **fields,
            qk_norm=True,
            merged_attention=True,
            rope_theta=theta,
            rope_params=rope_params,
            rope_local_theta=rope_settings(dec, "sliding_attention")[0] if sliding else None,
            encoder_window=[(w + 1) // 2 - 1, w // 2] if fields["encoder_layer_types"] else [],
            eoi_token_id=eoi if isinstance(eoi, int) and eoi < fields["vocab_size"] else None,
            tie_embeddings=True,
            tie_encoder_embeddings=True,
            family="t5gemma2",
        )

    def why_not(self, config: ModelConfig) -> str | None:
        return (
            "this is T5Gemma 2's text model only, and the family's files need its image tower (load the "
            "checkpoint with vision=True: that model saves as T5Gemma 2)"
        )

    def config_to_hf(self, config: ModelConfig) -> Any:
        """The family's config, with transformers' default vision tower (the bench's random models)."""
        return self._config(config, {}, {})

    def _config(self, config: ModelConfig, encoder: dict[str, Any], top: dict[str, Any]) -> Any:
        """T5Gemma2Config of the text model, with more fields of the encoder's config (its tower and
        image-token ids) and of the top level (the image placeholder's id)."""
        from transformers import T5Gemma2Config

        rope = {
            "full_attention": rope_to_hf(config),
            "sliding_attention": {"rope_type": "default", "rope_theta": config.rope_local_theta or config.rope_theta},
        }
        parts = {part: {**_gemma_to_hf(config, part), "rope_parameters": rope} for part in ("encoder", "decoder")}
        eoi = {} if config.eoi_token_id is None else {"eoi_token_index": config.eoi_token_id}
        encoder = {"text_config": parts["encoder"], **eoi, **encoder}
        hf = T5Gemma2Config(encoder=encoder, decoder=parts["decoder"], **eoi, **top)
        hf.decoder_start_token_id = config.bos_token_id
        return hf

    def rules(self, config: ModelConfig) -> list[Rule]:
        enc_hf = "model.encoder"  # as saved (in memory, transformers names it model.encoder.text_model)
        rules: list[Rule] = [
            ("embed.weight", (f"{enc_hf}.embed_tokens.weight",)),
            ("encoder_norm.weight", (f"{enc_hf}.norm.weight",)),
            ("final_norm.weight", ("model.decoder.norm.weight",)),
        ]
        if config.eoi_token_id is not None:
            rules.append(("embed.eoi_embedding", (f"{enc_hf}.embed_tokens.eoi_embedding",)))
        for i in range(config.n_encoder_layers):
            rules += _sandwich_rules(f"encoder.{i}", f"{enc_hf}.layers.{i}", config, T5GEMMA_NORMS)
        for i in range(config.n_decoder_layers):
            enc, hf = f"decoder.{i}", f"model.decoder.layers.{i}"
            rules += _sandwich_rules(enc, hf, config, T5GEMMA_NORMS)
            rules.append(
                (f"{enc}.attn.cross_kv.weight", (f"{hf}.self_attn.k_proj.weight", f"{hf}.self_attn.v_proj.weight"))
            )
        return rules
