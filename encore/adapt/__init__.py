"""`encore.adapt`: a pretrained decoder-only model -> an encoder-decoder (T5Gemma's recipe); an
encoder-decoder -> the same with a shallower decoder (distil-whisper's recipe).

    model = encore.adapt("SmolLM2-135M-Instruct.Q4_1.gguf")                    # 30 + 30 (balanced)
    model = encore.adapt("hf:Qwen/Qwen3-0.6B", encoder_layers="all", decoder_layers=10)  # the paper's 2/3 : 1/3
    model.save_pretrained("runs/smollm2-ed")   # then: encore pretrain --objective prefix_lm --teacher SRC
    model = encore.adapt("hf:openai/whisper-large-v3", decoder_layers=2)    # 32 + 2: decoder layers 0 and 31

Both stacks start from the source's layers: the encoder's attend both ways, the decoder's stay causal
and gain a cross-attention that starts as the same layer's self-attention (`cross_init="self"`) or
fresh (`"random"`). Embeddings, final norm, tokenizer, chat template and generation settings come
along. What to do next (PrefixLM with distillation from the source, or UL2) is in docs/adapt.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from encore.adapt.layers import CROSS_INITS, AdaptError, copy_weights, pick_layers
from encore.adapt.tokens import UL2_MODE_TOKENS, add_sentinels, add_tokens
from encore.config import ModelConfig
from encore.model.base import LanguageModel
from encore.model.io import build

__all__ = ["AdaptError", "UL2_MODE_TOKENS", "adapt", "adapted_config", "add_sentinels", "add_tokens", "pick_layers"]


def adapted_config(source: ModelConfig, encoder: list[int], decoder: list[int]) -> ModelConfig:
    """The encoder-decoder config of `source` with the chosen layers: every block variant (norms,
    q/k norms, biases, MLP, RoPE, windows, soft-caps) is the source's; the encoder shares the
    embedding table."""
    types = source.layer_types("decoder")
    return source.replace(
        arch="encdec",
        n_encoder_layers=len(encoder),
        n_decoder_layers=len(decoder),
        encoder_layer_types=[types[i] for i in encoder] if "sliding" in types else [],
        decoder_layer_types=[types[i] for i in decoder] if "sliding" in types else [],
        tie_encoder_embeddings=True,
        merged_attention=False,
        family="encore",  # no transformers class holds an adapted Llama / Qwen / Gemma 3: saved natively
    )


def adapt(
    source: str | Path | LanguageModel,
    *,
    encoder_layers: str | int | list[int] = "all",
    decoder_layers: str | int | list[int] = "all",
    cross_init: str = "self",
    sentinels: int = 0,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> LanguageModel:
    """The encoder-decoder adapted from `source` (anything `encore.load` reads, or a loaded model).

    `encoder_layers` / `decoder_layers`: "all", a count (the ends of the stack, the middle dropped:
    `pick_layers`) or explicit indices. An encoder-decoder source keeps its family and its layers'
    cross-attention (`shallower`): the chosen layers of each stack, every other weight as it is
    (`cross_init` and `sentinels` are a decoder-only source's). `cross_init`: "self", "zero" (the copy,
    silent) or "random" (seeded by `seed`). `sentinels` > 0 adds that many T5 sentinels and UL2's mode
    tokens (span corruption / UL2 need them)."""
    if cross_init not in CROSS_INITS:
        raise AdaptError(f"--cross-init {cross_init!r}: choose one of {', '.join(CROSS_INITS)}")
    if isinstance(source, LanguageModel):
        model_in, label = source, "the source model"
    else:
        from encore.convert import load, resolve_model

        label = str(source)
        if resolve_model(source, "--from")[1] is None:
            raise AdaptError(f"--from {label}: a preset or config file has no weights to adapt; give a checkpoint")
        model_in = load(source, dtype=dtype)
    if model_in.config.arch == "encdec" and type(model_in).__name__ == "EncoderDecoder":
        return shallower(model_in, label, encoder_layers, decoder_layers)
    if model_in.config.arch != "deconly":
        raise AdaptError(
            f"--from {label}: adapt reads a decoder-only model or a text / speech encoder-decoder; "
            f"this one is {type(model_in).__name__}"
        )
    n = model_in.config.n_decoder_layers
    encoder = pick_layers(encoder_layers, n, "--encoder-layers")
    decoder = pick_layers(decoder_layers, n, "--decoder-layers")
    config = adapted_config(model_in.config, encoder, decoder)
    model = build(config, seed=seed, device=model_in.embed.weight.device).to(model_in.embed.weight.dtype)
    copy_weights(model, model_in, encoder, decoder, cross_init)
    model.tokenizer = getattr(model_in, "tokenizer", None)
    model.generation_config = dict(getattr(model_in, "generation_config", None) or {})
    model.adapted_from = _provenance(label, encoder, decoder, cross_init)
    if sentinels:
        if model.tokenizer is None:
            raise AdaptError(f"--sentinels {sentinels}: the source has no tokenizer to add them to")
        add_sentinels(model, sentinels)
    return model.eval()


def shallower(
    source: LanguageModel, label: str, encoder_layers: str | int | list[int], decoder_layers: str | int | list[int]
) -> LanguageModel:
    """An encoder-decoder with the chosen layers of `source`'s stacks (distil-whisper keeps the encoder
    and decoder layers 0 and 31 of 32: `decoder_layers=2`), every other weight (embeddings, positions,
    norms, the audio stem, the head) as it is; the same family, so it saves back as one."""
    c = source.config
    encoder = pick_layers(encoder_layers, c.n_encoder_layers, "--encoder-layers")
    decoder = pick_layers(decoder_layers, c.n_decoder_layers, "--decoder-layers")
    pick = lambda types, chosen: [types[i] for i in chosen] if types else []
    config = c.replace(
        n_encoder_layers=len(encoder),
        n_decoder_layers=len(decoder),
        encoder_layer_types=pick(c.encoder_layer_types, encoder),
        decoder_layer_types=pick(c.decoder_layer_types, decoder),
    )
    model = build(config, seed=0, device=source.embed.weight.device).to(source.embed.weight.dtype)
    renamed = {f"{stack}.{i}.": f"{stack}.{j}." for stack, chosen in (("encoder", encoder), ("decoder", decoder))
               for i, j in enumerate(chosen)}  # fmt: skip
    state = source.state_dict()

    def origin(name: str) -> str:
        stack, _, rest = name.partition(".")
        index, _, tail = rest.partition(".")
        key = f"{stack}.{index}."
        return renamed[key] + tail if stack in ("encoder", "decoder") and index.isdigit() else name

    model.load_state_dict({name: state[origin(name)] for name in model.state_dict()})
    model.tokenizer = getattr(source, "tokenizer", None)
    model.generation_config = dict(getattr(source, "generation_config", None) or {})
    if model.generation_config.get("alignment_heads"):  # Whisper's (layer, head) pairs: those of kept layers
        new = {i: j for j, i in enumerate(decoder)}
        heads = [[new[layer], head] for layer, head in model.generation_config["alignment_heads"] if layer in new]
        model.generation_config["alignment_heads"] = heads  # none kept: the decoder's last half (the default)
    model.adapted_from = _provenance(label, encoder, decoder, "kept")
    return model.eval()


def _provenance(label: str, encoder: list[int], decoder: list[int], cross_init: str) -> dict[str, Any]:
    return {"source": label, "encoder_layers": encoder, "decoder_layers": decoder, "cross_init": cross_init}
