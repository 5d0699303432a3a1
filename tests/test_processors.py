"""transformers' logits processors, from a checkpoint's generation config, with transformers' tokens:
repetition penalty, n-gram blocking, bad words, minimum length, forced first and last tokens, suppressed
tokens; in `generate` and in the engine."""

from __future__ import annotations

import pytest
import torch

import encore
from encore.convert import load
from encore.infer.processors import Processors

transformers = pytest.importorskip("transformers")

VOCAB = 96
STEPS = 24
SETTINGS = dict(  # what bart-large-cnn, Marian and NLLB ship, and the rest of the list
    repetition_penalty=1.4,
    no_repeat_ngram_size=2,
    bad_words_ids=[[7], [8, 9]],
    min_length=6,
    forced_bos_token_id=5,
    forced_eos_token_id=1,
    suppress_tokens=[10, 11],
)


def _bart():
    config = transformers.BartConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, init_std=0.3,
        dropout=0.0, pad_token_id=0, eos_token_id=1, bos_token_id=2, decoder_start_token_id=2,
    )  # fmt: skip
    return transformers.BartForConditionalGeneration(config)


def _llama():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3, pad_token_id=0, eos_token_id=1,
        bos_token_id=2,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


@pytest.fixture(scope="module", params=["bart", "llama"])
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    hf = (_bart if request.param == "bart" else _llama)().eval()
    settings = dict(SETTINGS)
    if request.param == "llama":  # forced BOS is an encoder-decoder's; a prompt counts toward min_length
        settings.pop("forced_bos_token_id")
        settings["min_length"] = 6 + 5
    for key, value in settings.items():
        setattr(hf.generation_config, key, value)
    hf.generation_config.eos_token_id = 1
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    return request.param, hf, load(directory)


def _theirs(hf, ids, **kwargs):
    with torch.no_grad():
        out = hf.generate(input_ids=ids, max_new_tokens=STEPS, do_sample=False, pad_token_id=0, **kwargs)
    out = out[:, 1:] if hf.config.is_encoder_decoder else out[:, ids.shape[1] :]
    return [row[: row.index(1) + 1] if 1 in row else row for row in out.tolist()]


def _ours(tokens):
    return [row[: row.index(1) + 1] if 1 in row else row for row in tokens.tolist()]


def test_the_generation_config_applies_by_default(pair):
    family, hf, model = pair
    ids = torch.randint(3, VOCAB, (3, 5), generator=torch.Generator().manual_seed(1))
    assert _ours(model.generate(ids, max_new_tokens=STEPS)) == _theirs(hf, ids)
    if family == "bart":
        ours = _ours(model.generate(ids, max_new_tokens=STEPS))
        assert all(row[0] == 5 for row in ours) and all(len(row) >= 6 for row in ours)


@pytest.mark.parametrize(
    "given",
    [dict(repetition_penalty=1.0, no_repeat_ngram_size=3), dict(no_repeat_ngram_size=0, min_new_tokens=12)],
)
def test_given_settings_override_the_config(pair, given):
    family, hf, model = pair
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))
    assert _ours(model.generate(ids, max_new_tokens=STEPS, **given)) == _theirs(hf, ids, **given)


def test_the_engine_applies_them_too(pair):
    _, _, model = pair
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(3))
    engine = encore.Engine(model, max_batch=2, max_input_len=8, max_new_tokens=STEPS)
    engine.add(ids[0].tolist())
    engine.add(ids[0].tolist(), no_repeat_ngram_size=0, repetition_penalty=1.0)
    tokens: dict[int, list[int]] = {0: [], 1: []}
    while engine.has_work():
        for event in engine.step():
            tokens[event.request_id].append(event.token)
    assert tokens[0] == _ours(model.generate(ids, max_new_tokens=STEPS))[0]
    plain = model.generate(ids, max_new_tokens=STEPS, no_repeat_ngram_size=0, repetition_penalty=1.0)
    assert tokens[1] == _ours(plain)[0]


@pytest.mark.parametrize(
    "given,message",
    [
        (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size must be a non-negative integer"),
        (dict(suppress_tokens=[VOCAB]), f"token id {VOCAB} .* is not in"),
        (dict(bad_words_ids=[[]]), "bad_words_ids: each entry"),
    ],
)
def test_bad_settings_are_named(pair, given, message):
    _, _, model = pair
    with pytest.raises(ValueError, match=message):
        model.generate(torch.tensor([[3, 4]]), max_new_tokens=2, **given)


def test_no_settings_cost_nothing():
    assert not Processors().active
    assert not Processors.from_generation({}, "encdec").active


def test_frequency_and_presence_penalties_count_the_generated_tokens_only():
    """OpenAI's rule: logits - frequency x count - presence x [count > 0], over the tokens generated so
    far (not the prompt); the settings are checked where they enter."""
    logits = torch.zeros(2, 6)
    history = [[5, 5, 1, 1, 2], [3, 4, 4, 0]]  # a prompt ([5, 5]; [3]), then 3 generated tokens each
    out = Processors(frequency_penalty=0.5, presence_penalty=0.25)(logits, history, 3, False, ())
    want = torch.zeros(2, 6)
    want[0, 1] = want[1, 4] = -(2 * 0.5 + 0.25)  # generated twice
    want[0, 2] = want[1, 0] = -(0.5 + 0.25)  # once; the prompts' 5 and 3 are not counted
    assert torch.equal(out, want)
    assert Processors(frequency_penalty=1.0)(logits, history, 0, False, ()).abs().sum() == 0  # nothing generated
    with pytest.raises(ValueError, match="frequency_penalty must be a number in"):
        Processors(frequency_penalty=3.0).check(6)


def test_sampling_survives_extreme_settings():
    """Found by the HTTP property test: a temperature or top_p that rounds to 0 in float32, or a logit a
    tiny repetition penalty overflowed, gave NaN probabilities (a 500); now the limits hold."""
    from encore.infer.sampling import sample_next

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    best = logits.argmax(-1)
    assert torch.equal(sample_next(logits, True, 5e-324, None, None, None), best)  # temperature -> 0: greedy
    assert torch.equal(sample_next(logits, True, 1.0, None, 5e-324, None), best)  # top_p -> 0: the likeliest
    overflowed = logits.clone()
    overflowed[:, 7] = float("inf")
    assert (sample_next(overflowed, True, 1.0, None, None, None) == 7).all()
