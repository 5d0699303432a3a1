"""A multilingual encoder-decoder (NLLB's layout: `lang x </s>`, the target language forced first) and
the source layouts read from a checkpoint's tokenizer."""

from __future__ import annotations

import pytest
import torch

from encore.convert import load
from encore.infer.pipeline import GenerationOptions, apply_languages, encode_sources, generate_ids

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["<s>", "<pad>", "</s>", "<unk>", "eng_Latn", "fra_Latn", "deu_Latn", "hello", "world", "bonjour"]
LANGS = {w: i for i, w in enumerate(WORDS) if w.endswith("_Latn")}
VOCAB = 64


def _nllb_tokenizer():
    vocab = {t: i for i, t in enumerate(WORDS)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.NllbTokenizer(
        tokenizer_object=tok, src_lang="eng_Latn", tgt_lang="fra_Latn", extra_special_tokens=list(LANGS),
        bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
    )  # fmt: skip


@pytest.fixture(scope="module")
def nllb(tmp_path_factory):
    """A tiny M2M100 (NLLB's architecture) with an NLLB tokenizer beside it, loaded by encore."""
    torch.manual_seed(0)
    config = transformers.M2M100Config(
        vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64, dropout=0.0,
        encoder_layerdrop=0.0, decoder_layerdrop=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=2,
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("nllb")
    transformers.M2M100ForConditionalGeneration(config).save_pretrained(directory)
    _nllb_tokenizer().save_pretrained(directory)
    return load(directory)


def test_the_tokenizer_lays_the_source_out(nllb):
    config = nllb.config
    assert config.source_layout == "template"
    assert (config.source_prefix, config.source_suffix, config.source_lang_id) == ([LANGS["eng_Latn"]], [2], 4)
    assert config.source_ids([7, 8]) == [LANGS["eng_Latn"], 7, 8, 2]
    assert config.source_ids([7, 8], lang=LANGS["fra_Latn"]) == [LANGS["fra_Latn"], 7, 8, 2]


def test_src_and_tgt_lang_lay_out_and_force(nllb):
    options = GenerationOptions(max_new_tokens=4, src_lang="deu_Latn", tgt_lang="fra_Latn")
    (ids,), _ = encode_sources(nllb, ["hello world"], 32, options.source_config(nllb))
    assert ids[0] == LANGS["deu_Latn"] and ids[-1] == 2
    tokens = generate_ids(nllb, [ids], options)[0]
    assert tokens[0] == LANGS["fra_Latn"]  # the target language, forced as the first new token


def test_a_server_default_language_applies_to_every_request(nllb):
    model = nllb
    config, generation = model.config, model.generation_config
    try:
        apply_languages(model, "fra_Latn", "deu_Latn")
        assert model.config.source_ids([7]) == [LANGS["fra_Latn"], 7, 2]
        assert model.generation_config["forced_bos_token_id"] == LANGS["deu_Latn"]
    finally:
        model.config, model.generation_config = config, generation


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(src_lang="xx_Yyyy"), r"--src-lang 'xx_Yyyy': not a language code of this model's tokenizer; it knows"),
        (dict(tgt_lang="klingon"), r"--tgt-lang 'klingon': not a language code"),
    ],
)
def test_unknown_language_codes_are_named(nllb, options, message):
    options = GenerationOptions(**options)
    with pytest.raises(ValueError, match=message):
        options.source_config(nllb)
        options.processing(nllb)
